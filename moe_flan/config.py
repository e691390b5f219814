"""Model configuration: one frozen dataclass for the T5.1.1 network, one for its MoE layers.

Gin binds the fields of these two classes (see gin/models/*.gin); nothing else in the model
is gin-configurable, so a model file is a short list of sizes and choices.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import gin

# Router and dispatcher names are checked where they are defined (moe_flan.moe.routing.ROUTERS,
# moe_flan.moe.dispatch.DISPATCHERS, plus users' registered ones) when the model is built.
# How 'dropless' and 'segmented' run their grouped matmuls (moe_flan/kernels/grouped_matmul.py):
# 'auto' and 'expert_loop' are XLA on every backend; 'cpu_ffi' (C++, x86-64 with AVX-512) and
# 'mosaic_gpu' (Hopper) are platform kernels, used only when named.
GROUPED_MATMULS = ('auto', 'expert_loop', 'ragged_dot', 'cpu_ffi', 'mosaic_gpu')
# How tokens form routing groups (moe_flan/moe/capacity.py): groups of `group_size` tokens of
# the flattened batch (flaxformer/t5x), or one group per sequence (HF SwitchTransformers).
ROUTING_GROUPS = ('group_size', 'sequence')
# Capacity per expert (moe_flan/moe/capacity.py): 'ours' ceil(cf * k * T / E); 'flaxformer'
# round(cf * T / E) (Python round, no factor k), as the paper's stack.
CAPACITY_CONVENTIONS = ('ours', 'flaxformer')
# Load-balancing loss: 'ours' counts each token's top-1 expert (GShard / Mesh-TF: 1 when
# balanced); 'flaxformer' counts all k chosen experts (k when balanced) and reports 0 for
# experts-choose layers, as the paper's stack does (moe/losses.py).
LOAD_BALANCING_CONVENTIONS = ('ours', 'flaxformer')
SPARSE_LAYOUTS = ('every', 'hf_every', 'top', 'bottom', 'all', 'none')
# What a scanned block keeps for the backward pass (MaxText's names): 'none' everything (no
# recomputation), 'minimal' the matmuls without batch dimensions (the weight projections),
# 'full' nothing but the block's input (the whole block is recomputed, MoE all-to-alls too);
# 'save_moe_exchanges' as 'full' but keeping the token buffers the expert_parallel dispatch
# exchanged, so the backward pass does not exchange them again.
REMAT_POLICIES = ('none', 'minimal', 'full', 'save_moe_exchanges')


def _fail(setting: str, value, why: str):
  raise ValueError(f'Bad config: {setting}={value!r}: {why}')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MoeConfig:
  """How the sparse (MoE) feed-forward blocks route, dispatch and compute.

  Capacity per expert and group is
  `max(ceil(capacity_factor * num_selected_experts * group_size / num_experts), min_capacity)`.
  """
  num_experts: int = 8
  num_selected_experts: int = 1            # k in top-k; for experts_choose, scales capacity
  router_type: str = 'tokens_choose'       # a name in moe_flan.moe.ROUTERS (or registered)
  dispatch: str = 'einsum'                 # a name in moe_flan.moe.DISPATCHERS (or registered)
  grouped_matmul: str = 'auto'             # one of GROUPED_MATMULS (opt-in: 'cpu_ffi', 'mosaic_gpu')
  group_size: int = 4096                   # tokens per routing group (T)
  routing_groups: str = 'group_size'       # one of ROUTING_GROUPS ('sequence': T = length)
  train_capacity_factor: float = 1.25
  eval_capacity_factor: float = 2.0
  min_capacity: int = 4
  capacity_convention: str = 'ours'        # one of CAPACITY_CONVENTIONS
  load_balancing_convention: str = 'ours'  # one of LOAD_BALANCING_CONVENTIONS
  batch_prioritized_routing: bool = False
  jitter_noise: float = 0.0                # multiplicative router-input noise, training only
  router_init_std: float = 2e-2
  load_balancing_loss_weight: float = 1e-2
  router_z_loss_weight: float = 0.0
  expert_mlp_dim: int = 1024               # F of each expert
  expert_activations: Sequence[str] = ('gelu', 'linear')  # ('relu',) for Switch classic
  expert_dropout_rate: float = 0.0         # dropout inside experts (hidden activations)
  extra_dense_mlp: bool = False            # ST-MoE: a dense MLP beside the experts in sparse blocks
  # Which blocks are sparse, per stack: 'every' (every Nth, counting from the last block of
  # each run of N, as t5x/flaxformer), 'top'/'bottom' (the top/bottom N blocks), 'all', 'none'.
  encoder_sparse_layout: str = 'every'
  encoder_sparse_every: int = 2
  decoder_sparse_layout: str = 'every'
  decoder_sparse_every: int = 2
  # Decoder routing may differ from the encoder's (EC encoder + top-2 decoder); None = same.
  decoder_router_type: Optional[str] = None
  decoder_num_selected_experts: Optional[int] = None

  def __post_init__(self):
    if self.num_experts < 1:
      _fail('MoeConfig.num_experts', self.num_experts, 'must be >= 1')
    if self.grouped_matmul not in GROUPED_MATMULS:
      _fail('MoeConfig.grouped_matmul', self.grouped_matmul,
            f'unknown grouped matmul; choose one of {GROUPED_MATMULS}')
    for name in ('num_selected_experts', 'decoder_num_selected_experts'):
      k = getattr(self, name)
      if k is not None and not 1 <= k <= self.num_experts:
        _fail(f'MoeConfig.{name}', k,
              f'must be between 1 and num_experts={self.num_experts}')
    if (self.decoder_effective_router_type == 'experts_choose'
        and self.decoder_sparse_layout != 'none'):
      _fail('MoeConfig.decoder_router_type', 'experts_choose',
            'experts choose tokens by looking at all positions, which breaks causal decoding; '
            "use 'tokens_choose' in the decoder")
    for name in ('encoder_sparse_layout', 'decoder_sparse_layout'):
      if getattr(self, name) not in SPARSE_LAYOUTS:
        _fail(f'MoeConfig.{name}', getattr(self, name), f'choose one of {SPARSE_LAYOUTS}')
    if self.group_size < 1:
      _fail('MoeConfig.group_size', self.group_size, 'must be >= 1')
    if self.routing_groups not in ROUTING_GROUPS:
      _fail('MoeConfig.routing_groups', self.routing_groups, f'choose one of {ROUTING_GROUPS}')
    if self.capacity_convention not in CAPACITY_CONVENTIONS:
      _fail('MoeConfig.capacity_convention', self.capacity_convention,
            f'choose one of {CAPACITY_CONVENTIONS}')
    if self.load_balancing_convention not in LOAD_BALANCING_CONVENTIONS:
      _fail('MoeConfig.load_balancing_convention', self.load_balancing_convention,
            f'choose one of {LOAD_BALANCING_CONVENTIONS}')

  @property
  def decoder_effective_router_type(self) -> str:
    return self.decoder_router_type or self.router_type

  @property
  def decoder_effective_num_selected_experts(self) -> int:
    return self.decoder_num_selected_experts or self.num_selected_experts

  def capacity_factor(self, training: bool) -> float:
    return self.train_capacity_factor if training else self.eval_capacity_factor


def sparse_block_indices(layout: str, every: int, num_layers: int) -> tuple[int, ...]:
  """Indices of the sparse blocks of a stack of `num_layers` blocks.

  'every' N marks blocks N-1, 2N-1, ... (t5x/flaxformer's `sparse_layout`-MIXED convention);
  'hf_every' N marks blocks with i % N == 1 (HF SwitchTransformers' `*_sparse_step`);
  'top' N / 'bottom' N mark the last / first N blocks.
  """
  if layout == 'none':
    return ()
  if layout == 'all':
    return tuple(range(num_layers))
  if every < 1:
    _fail('MoeConfig.*_sparse_every', every, 'must be >= 1')
  if layout == 'every':
    return tuple(i for i in range(num_layers) if (i + 1) % every == 0)
  if layout == 'hf_every':  # Hugging Face SwitchTransformers: i % N == 1 (every block if N == 1)
    return tuple(i for i in range(num_layers) if every == 1 or i % every == 1)
  if layout == 'top':
    return tuple(range(max(num_layers - every, 0), num_layers))
  if layout == 'bottom':
    return tuple(range(min(every, num_layers)))
  _fail('sparse layout', layout, f'choose one of {SPARSE_LAYOUTS}')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """The T5.1.1 encoder-decoder (and, with `moe`, its sparse FLAN-MoE variant)."""
  vocab_size: int = 32128
  emb_dim: int = 512                      # D
  num_heads: int = 6                      # H
  head_dim: int = 64                      # K
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  mlp_dim: int = 1024                     # F of dense MLP blocks
  mlp_activations: Sequence[str] = ('gelu', 'linear')  # gated-GELU (T5.1.1); ('relu',) classic
  dropout_rate: float = 0.0
  logits_via_embedding: bool = False      # tie the output projection to the input embedding
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dtype: str = 'float32'                  # activation dtype; params, logits and losses stay f32
  moe: Optional[MoeConfig] = None         # None = dense model
  # Run each stack's layers as a flax `nn.scan` over repeating blocks of `layer_period` layers
  # (t5x/MaxText `scan_layers`): compiled once, not once per layer. Params gain a leading
  # 'layers' axis: encoder/layers/layers_{j}/... [num_layers // period, ...] holds layers
  # j, j + period, ...; layers left over keep layers_{i} (moe_flan.model.scan converts).
  scan_layers: bool = False
  # Rematerialise each scanned block in the backward pass (one of REMAT_POLICIES): a scan keeps
  # every block's residuals stacked, which XLA cannot free or recompute across the loop.
  remat_policy: str = 'none'

  def __post_init__(self):
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim'):
      if getattr(self, name) < 1:
        _fail(f'T5Config.{name}', getattr(self, name), 'must be >= 1')
    if not 0.0 <= self.dropout_rate < 1.0:
      _fail('T5Config.dropout_rate', self.dropout_rate, 'must be in [0, 1)')
    if self.remat_policy not in REMAT_POLICIES:
      _fail('T5Config.remat_policy', self.remat_policy, f'choose one of {REMAT_POLICIES}')
    if self.remat_policy != 'none' and not self.scan_layers:
      _fail('T5Config.remat_policy', self.remat_policy,
            'rematerialisation applies to scanned blocks; set T5Config.scan_layers=True')
    if self.scan_layers:
      self.layer_period('encoder')
      self.layer_period('decoder')

  def encoder_sparse_blocks(self) -> tuple[int, ...]:
    if self.moe is None:
      return ()
    return sparse_block_indices(self.moe.encoder_sparse_layout, self.moe.encoder_sparse_every,
                                self.num_encoder_layers)

  def decoder_sparse_blocks(self) -> tuple[int, ...]:
    if self.moe is None:
      return ()
    return sparse_block_indices(self.moe.decoder_sparse_layout, self.moe.decoder_sparse_every,
                                self.num_decoder_layers)

  def layer_period(self, stack: str) -> int:
    """The smallest P such that the stack's layer i is sparse exactly when layer i % P is: the
    layers one step of `scan_layers` runs. The scan runs the first (N // P) * P layers and the
    N % P left over (ST-MoE-32B: 27 = 6 x 4 + 3) run unrolled after it. Raises ValueError when
    the pattern does not repeat at least twice (scanning would compile every layer anyway)."""
    sparse = set(self.encoder_sparse_blocks() if stack == 'encoder'
                 else self.decoder_sparse_blocks())
    n = self.num_encoder_layers if stack == 'encoder' else self.num_decoder_layers
    period = next(p for p in range(1, max(n, 1) + 1)
                  if all((i in sparse) == (i % p in sparse) for i in range(n)))
    if n > 1 and period > n // 2:
      _fail('T5Config.scan_layers', True,
            f'the {stack} sparse blocks {tuple(sorted(sparse))} of {n} layers do not repeat: '
            'scanning needs a sparse/dense pattern that repeats at least twice (e.g. sparse '
            'every N layers with 2N <= the layer count) or scan_layers=False')
    return period

  def sparse_block_paths(self) -> tuple[str, ...]:
    """Parameter paths of the sparse blocks, encoder first (the order of per-layer MoE metrics)."""
    return (tuple(f'encoder/layers_{i}' for i in self.encoder_sparse_blocks()) +
            tuple(f'decoder/layers_{i}' for i in self.decoder_sparse_blocks()))
