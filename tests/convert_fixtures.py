"""Tiny configs and random params for the converter tests that need no torch."""
import flax
import numpy as np

from moe_flan.config import MoeConfig, T5Config
from moe_flan.model import abstract_params

DENSE = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=2,
                 num_decoder_layers=2, mlp_dim=32, mlp_activations=('gelu', 'linear'),
                 logits_via_embedding=False, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, dropout_rate=0.0)
SWITCH = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=4,
                  num_decoder_layers=2, mlp_dim=32, mlp_activations=('relu',),
                  logits_via_embedding=True, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16, dropout_rate=0.0,
                  moe=MoeConfig(num_experts=4, router_type='hf_switch', group_size=8,
                                train_capacity_factor=1e-9, eval_capacity_factor=1e-9,
                                min_capacity=3, expert_mlp_dim=32, expert_activations=('relu',),
                                encoder_sparse_layout='hf_every', encoder_sparse_every=2,
                                decoder_sparse_layout='all', decoder_sparse_every=1))


def random_params(config: T5Config, seed: int = 0):
  """Fresh params with every leaf replaced by distinct random values (not init's structure)."""
  rng = np.random.default_rng(seed)
  params = flax.linen.meta.unbox(abstract_params(config))   # shapes only: no compile

  def fill(tree):
    return {k: fill(v) if isinstance(v, dict) else
            rng.standard_normal(v.shape).astype(np.float32) for k, v in tree.items()}
  return fill(params)


def flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flat(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = np.asarray(v)
  return out


def randomise_hf(model):
  """Well-spread random weights for a Hugging Face model, in eval mode (HF's init leaves e.g.
  layer norms at exactly 1). Imports torch only when called."""
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      p.copy_(1.0 + 0.1 * noise if 'layer_norm' in name else 0.5 * noise)
  return model.eval()
