"""Model FLOPs of a T5.1.1 / FLAN-MoE train step, counted from the config (useful work only).

The MFU numerator of the benchmarks and of `moe_flan.aot`'s pod plans.
Counts matmul FLOPs (2 per multiply-add) of the forward pass and multiplies by 3 for a train
step (backward = 2x forward). MoE blocks count the *active* expert FLOPs (k experts per token for
tokens-choose; for experts-choose the slots the experts fill: capacity-factor * k under our
capacity convention, capacity-factor under flaxformer's), not capacity padding or one-hot dispatch
work, so a faster dispatcher shows up as a higher utilisation. Elementwise work, softmaxes,
norms and the optimizer update are left out, as usual for MFU.
"""
from __future__ import annotations

from moe_flan.config import T5Config


def _mlp_macs(d: int, f: int, num_activations: int) -> int:
  return d * f * num_activations + f * d


def _ffn_macs(cfg: T5Config, sparse: bool, router_type: str, k: int) -> float:
  """Multiply-adds per token of one feed-forward sublayer (dense MLP or MoE)."""
  if not sparse:
    return _mlp_macs(cfg.emb_dim, cfg.mlp_dim, len(cfg.mlp_activations))
  moe = cfg.moe
  expert = _mlp_macs(cfg.emb_dim, moe.expert_mlp_dim, len(moe.expert_activations))
  if router_type == 'experts_choose':
    # Each expert fills its C slots: E * C / T token-slots per token, i.e. cf * k under our
    # capacity convention and cf under flaxformer's (which has no factor k).
    active = moe.train_capacity_factor * (k if moe.capacity_convention == 'ours' else 1)
  else:
    active = k
  extra = _mlp_macs(cfg.emb_dim, cfg.mlp_dim, len(cfg.mlp_activations)) if moe.extra_dense_mlp else 0
  return cfg.emb_dim * moe.num_experts + active * expert + extra


def forward_flops(cfg: T5Config, batch: int, inputs_len: int, targets_len: int) -> float:
  """Matmul FLOPs of one forward pass on a [batch, inputs_len] -> [batch, targets_len] batch."""
  d, hk = cfg.emb_dim, cfg.num_heads * cfg.head_dim
  li, lt = inputs_len, targets_len
  enc_sparse, dec_sparse = set(cfg.encoder_sparse_blocks()), set(cfg.decoder_sparse_blocks())
  moe = cfg.moe
  enc_router = moe.router_type if moe else 'tokens_choose'
  enc_k = moe.num_selected_experts if moe else 1
  dec_router = moe.decoder_effective_router_type if moe else 'tokens_choose'
  dec_k = moe.decoder_effective_num_selected_experts if moe else 1
  macs = 0.0
  for i in range(cfg.num_encoder_layers):        # per encoder token
    attn = 4 * d * hk + 2 * li * hk              # q, k, v, o projections + scores and values
    macs += li * (attn + _ffn_macs(cfg, i in enc_sparse, enc_router, enc_k))
  for i in range(cfg.num_decoder_layers):        # per decoder token (+ cross k, v per input)
    self_attn = 4 * d * hk + 2 * lt * hk
    cross = 2 * d * hk + 2 * li * hk
    macs += lt * (self_attn + cross + _ffn_macs(cfg, i in dec_sparse, dec_router, dec_k))
    macs += li * 2 * d * hk
  macs += lt * d * cfg.vocab_size                 # logits
  return 2.0 * batch * macs


def train_step_flops(cfg: T5Config, batch: int, inputs_len: int, targets_len: int) -> float:
  return 3.0 * forward_flops(cfg, batch, inputs_len, targets_len)
