"""T5.1.1 encoder stack: embed -> N x (self-attention, feed-forward) -> RMSNorm."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_flan import axes
from moe_flan.config import T5Config
from moe_flan.layers.attention import MultiHeadAttention
from moe_flan.layers.masks import combine_masks, padding_mask, segment_mask
from moe_flan.layers.normalization import RMSNorm
from moe_flan.layers.relative_position import RelativePositionBias
from moe_flan.model.feed_forward import feed_forward_sublayers, residual_dropout
from moe_flan.model.scan import run_scanned

_ACT = (axes.BATCH, axes.LENGTH, axes.EMBED)


def relpos_positions(length: int) -> jax.Array:
  """0..L-1 as <int32>[1, L]: the positions the relative bias is computed from, for every row.

  Packed inputs need no per-example positions here: T5 has no absolute position embedding,
  packed segments are contiguous (so inside a segment index offsets equal position offsets)
  and pairs across segments are masked. One [1, H, L, L] bias instead of [B, H, L, L] saves
  B-fold memory at long packed lengths. (The *_positions features are accepted and unused.)
  """
  return jnp.arange(length, dtype=jnp.int32)[None, :]


class EncoderLayer(nn.Module):
  """One encoder block; sparse blocks swap the dense MLP for the MoE layer."""
  config: T5Config
  sparse: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array], bias: jax.Array,
               token_mask: jax.Array, enable_dropout: bool = False) -> jax.Array:
    """x <dtype>[B, L, D]; mask <bool>[B, 1, L, L]; bias <float32>[B|1, H, L, L];
    token_mask <bool>[B, L] -> <dtype>[B, L, D]."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    y = RMSNorm(epsilon=cfg.layer_norm_epsilon, dtype=dtype, name='pre_attention_layer_norm')(x)
    y = MultiHeadAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                           dropout_rate=cfg.dropout_rate, dtype=dtype, name='attention')(
                               y, y, mask=mask, bias=bias, enable_dropout=enable_dropout)
    x = x + residual_dropout(cfg, y, enable_dropout)
    moe = cfg.moe
    x = feed_forward_sublayers(
        cfg, x, sparse=self.sparse,
        router_type=moe.router_type if self.sparse else '',
        num_selected_experts=moe.num_selected_experts if self.sparse else 0,
        padding_mask=token_mask, enable_dropout=enable_dropout)
    return nn.with_logical_constraint(x, _ACT)


class Encoder(nn.Module):
  """Params: relpos_bias/rel_embedding, layers_{i}/... (scan_layers: layers/layers_{j}/...,
  moe_flan.model.scan), encoder_norm/scale."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoder_input_tokens: jax.Array,
               encoder_segment_ids: Optional[jax.Array] = None,
               encoder_positions: Optional[jax.Array] = None,
               enable_dropout: bool = False) -> jax.Array:
    """<int32>[B, L] tokens (0 = padding) -> <dtype>[B, L, D] encodings."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    tokens = encoder_input_tokens
    mask = combine_masks(
        padding_mask(tokens, tokens),
        None if encoder_segment_ids is None else segment_mask(encoder_segment_ids,
                                                              encoder_segment_ids))
    del encoder_positions   # implied by the segment layout, see relpos_positions
    positions = relpos_positions(tokens.shape[1])
    bias = RelativePositionBias(num_heads=cfg.num_heads,
                                num_buckets=cfg.relative_attention_num_buckets,
                                max_distance=cfg.relative_attention_max_distance,
                                bidirectional=True, name='relpos_bias')(positions, positions)
    x = self.shared_embedding(tokens).astype(dtype)
    x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=not enable_dropout)
    x = nn.with_logical_constraint(x, _ACT)
    if cfg.scan_layers:
      x = run_scanned(EncoderLayer, cfg, 'encoder', x, mask, bias, tokens > 0,
                      enable_dropout=enable_dropout)
    else:
      sparse_blocks = cfg.encoder_sparse_blocks()
      for i in range(cfg.num_encoder_layers):
        x = EncoderLayer(cfg, sparse=i in sparse_blocks, name=f'layers_{i}')(
            x, mask, bias, tokens > 0, enable_dropout)
    x = RMSNorm(epsilon=cfg.layer_norm_epsilon, dtype=dtype, name='encoder_norm')(x)
    x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=not enable_dropout)
    return nn.with_logical_constraint(x, _ACT)
