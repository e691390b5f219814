"""The feed-forward half of a block: a dense MLP, or the MoE layer (ST-MoE: after an extra MLP)."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_flan.config import T5Config
from moe_flan.layers.mlp import MlpBlock
from moe_flan.layers.normalization import RMSNorm
from moe_flan.moe import MoeLayer


def residual_dropout(config: T5Config, y: jax.Array, enable_dropout: bool) -> jax.Array:
  """Dropout on a sublayer's output before the residual add (mask shared along length, as t5x)."""
  return nn.Dropout(rate=config.dropout_rate, broadcast_dims=(-2,))(
      y, deterministic=not enable_dropout)


def _dense_mlp(config: T5Config, x: jax.Array, enable_dropout: bool, name: str) -> jax.Array:
  return MlpBlock(intermediate_dim=config.mlp_dim, activations=tuple(config.mlp_activations),
                  dropout_rate=config.dropout_rate, dtype=jnp.dtype(config.dtype),
                  name=name)(x, enable_dropout=enable_dropout)


def feed_forward_sublayers(config: T5Config, x: jax.Array, *, sparse: bool, router_type: str,
                           num_selected_experts: int, padding_mask: Optional[jax.Array],
                           enable_dropout: bool) -> jax.Array:
  """Pre-norm residual feed-forward sublayer(s); call from inside a block's compact method.

  Creates, in the calling block: `pre_mlp_layer_norm` + `mlp` (dense) or `moe` (sparse), and
  for ST-MoE sparse blocks also `pre_extra_mlp_layer_norm` + `extra_mlp`, applied as their own
  residual sublayer before the MoE sublayer.

  Args:
    x: <dtype>[B, L, D] block activations.
    padding_mask: <bool>[B, L] real tokens (routing skips padding), or None (all real).
  Returns:
    <dtype>[B, L, D].
  """
  dtype = jnp.dtype(config.dtype)
  eps = config.layer_norm_epsilon
  if sparse and config.moe.extra_dense_mlp:
    y = RMSNorm(epsilon=eps, dtype=dtype, name='pre_extra_mlp_layer_norm')(x)
    y = _dense_mlp(config, y, enable_dropout, 'extra_mlp')
    x = x + residual_dropout(config, y, enable_dropout)
  y = RMSNorm(epsilon=eps, dtype=dtype, name='pre_mlp_layer_norm')(x)
  if sparse:
    y = MoeLayer(config=config.moe, emb_dim=x.shape[-1], router_type=router_type,
                 num_selected_experts=num_selected_experts, dtype=dtype,
                 name='moe')(y, padding_mask=padding_mask, enable_dropout=enable_dropout)
  else:
    y = _dense_mlp(config, y, enable_dropout, 'mlp')
  return x + residual_dropout(config, y, enable_dropout)
