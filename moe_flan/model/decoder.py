"""T5.1.1 decoder stack: embed -> N x (causal self-attention, cross-attention, feed-forward)
-> RMSNorm -> logits (own `logits_dense` or the tied embedding / sqrt(D))."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moe_flan import axes
from moe_flan.config import T5Config
from moe_flan.layers.attention import MultiHeadAttention
from moe_flan.layers.dense import DenseGeneral, fan_in_normal
from moe_flan.layers.masks import (causal_mask, combine_masks, make_attention_mask,
                                   segment_mask)
from moe_flan.layers.normalization import RMSNorm
from moe_flan.layers.relative_position import RelativePositionBias
from moe_flan.model.encoder import relpos_positions
from moe_flan.model.feed_forward import feed_forward_sublayers, residual_dropout
from moe_flan.model.scan import run_scanned

_ACT = (axes.BATCH, axes.LENGTH, axes.EMBED)


def decoder_masks(encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array,
                  decoder_target_tokens: Optional[jax.Array],
                  encoder_segment_ids: Optional[jax.Array],
                  decoder_segment_ids: Optional[jax.Array], stepping: bool):
  """(decoder_mask <bool>[B, 1, Lt, Lt] | None, encoder_decoder_mask <bool>[B, 1, Lt, Li],
  token_mask <bool>[B, Lt] | None).

  Decoder padding comes from the targets (the inputs start with token 0, the start token).
  When stepping, the self-attention cache masks unwritten positions and every query is real.
  """
  encoder_real = encoder_input_tokens > 0
  if stepping or decoder_target_tokens is None:
    decoder_real = jnp.ones(decoder_input_tokens.shape, jnp.bool_)
  else:
    decoder_real = decoder_target_tokens > 0
  segments = decoder_segment_ids is not None
  encoder_decoder_mask = combine_masks(
      make_attention_mask(decoder_real, encoder_real),
      segment_mask(decoder_segment_ids, encoder_segment_ids)
      if segments and encoder_segment_ids is not None else None)
  if stepping:
    return None, encoder_decoder_mask, None
  batch, length = decoder_input_tokens.shape
  decoder_mask = combine_masks(
      causal_mask(length, batch), make_attention_mask(decoder_real, decoder_real),
      segment_mask(decoder_segment_ids, decoder_segment_ids) if segments else None)
  return decoder_mask, encoder_decoder_mask, decoder_real


class DecoderLayer(nn.Module):
  """One decoder block; sparse blocks swap the dense MLP for the MoE layer."""
  config: T5Config
  sparse: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, encoded: jax.Array, decoder_mask: Optional[jax.Array],
               encoder_decoder_mask: Optional[jax.Array], bias: jax.Array,
               token_mask: Optional[jax.Array], enable_dropout: bool = False,
               decode: bool = False) -> jax.Array:
    """x <dtype>[B, L, D]; encoded <dtype>[B, M, D]; masks <bool>[B, 1, L, *];
    bias <float32>[B|1, H, L, L'] -> <dtype>[B, L, D]."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    eps = cfg.layer_norm_epsilon

    def attention(name):
      return MultiHeadAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                                dropout_rate=cfg.dropout_rate, dtype=dtype, name=name)

    y = RMSNorm(epsilon=eps, dtype=dtype, name='pre_self_attention_layer_norm')(x)
    y = attention('self_attention')(y, y, mask=decoder_mask, bias=bias,
                                    enable_dropout=enable_dropout, decode=decode)
    x = x + residual_dropout(cfg, y, enable_dropout)
    y = RMSNorm(epsilon=eps, dtype=dtype, name='pre_cross_attention_layer_norm')(x)
    # Keys/values of the encoder are recomputed each step: cheap next to the cached self-attn.
    y = attention('encoder_decoder_attention')(y, encoded, mask=encoder_decoder_mask,
                                               enable_dropout=enable_dropout)
    x = x + residual_dropout(cfg, y, enable_dropout)
    moe = cfg.moe
    x = feed_forward_sublayers(
        cfg, x, sparse=self.sparse,
        router_type=moe.decoder_effective_router_type if self.sparse else '',
        num_selected_experts=moe.decoder_effective_num_selected_experts if self.sparse else 0,
        padding_mask=token_mask, enable_dropout=enable_dropout)
    return nn.with_logical_constraint(x, _ACT)


class Decoder(nn.Module):
  """Params: relpos_bias/rel_embedding, layers_{i}/... (scan_layers: layers/layers_{j}/...,
  moe_flan.model.scan), decoder_norm/scale, logits_dense/kernel."""
  config: T5Config
  shared_embedding: nn.Module

  def _relpos_bias(self, tokens: jax.Array, decode: bool, stepping: bool,
                   max_decode_length: Optional[int]) -> jax.Array:
    """<float32>[1, H, L, L] (full sequence) or [1, H, 1, max_decode_length] (one step)."""
    cfg = self.config
    relpos = RelativePositionBias(num_heads=cfg.num_heads,
                                  num_buckets=cfg.relative_attention_num_buckets,
                                  max_distance=cfg.relative_attention_max_distance,
                                  bidirectional=False, name='relpos_bias')
    if decode:
      # Index of the next position to decode (the layers' attention caches keep their own).
      position = self.variable('cache', 'position', lambda: jnp.array(0, jnp.int32))
    if not stepping:
      positions = relpos_positions(tokens.shape[1])
      return relpos(positions, positions)
    if max_decode_length is None:
      raise ValueError('Decoder: max_decode_length is required when decoding step by step')
    query = position.value[None, None]
    position.value = position.value + 1
    keys = jnp.arange(max_decode_length, dtype=jnp.int32)[None, :]
    return relpos(query, keys)

  @nn.compact
  def __call__(self, encoded: jax.Array, encoder_input_tokens: jax.Array,
               decoder_input_tokens: jax.Array,
               decoder_target_tokens: Optional[jax.Array] = None,
               encoder_segment_ids: Optional[jax.Array] = None,
               decoder_segment_ids: Optional[jax.Array] = None,
               decoder_positions: Optional[jax.Array] = None, enable_dropout: bool = False,
               decode: bool = False, max_decode_length: Optional[int] = None) -> jax.Array:
    """<int32>[B, Lt] decoder inputs (shifted targets) -> <float32>[B, Lt, V] logits.

    encoded <dtype>[B, Li, D]; encoder_input_tokens <int32>[B, Li] (for the cross mask).
    With decode=True, the first call creates the caches and runs the full sequence; once they
    exist each call takes one token per sequence, <int32>[B, 1].
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    stepping = decode and self.has_variable('cache', 'position')
    decoder_mask, encoder_decoder_mask, token_mask = decoder_masks(
        encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, encoder_segment_ids,
        decoder_segment_ids, stepping)
    del decoder_positions   # implied by the segment layout, see relpos_positions
    bias = self._relpos_bias(decoder_input_tokens, decode, stepping, max_decode_length)
    x = self.shared_embedding(decoder_input_tokens).astype(dtype)
    x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=not enable_dropout)
    x = nn.with_logical_constraint(x, _ACT)
    if cfg.scan_layers:
      x = run_scanned(DecoderLayer, cfg, 'decoder', x, encoded, decoder_mask,
                      encoder_decoder_mask, bias, token_mask, enable_dropout=enable_dropout,
                      decode=decode)
    else:
      sparse_blocks = cfg.decoder_sparse_blocks()
      for i in range(cfg.num_decoder_layers):
        x = DecoderLayer(cfg, sparse=i in sparse_blocks, name=f'layers_{i}')(
            x, encoded, decoder_mask, encoder_decoder_mask, bias, token_mask,
            enable_dropout=enable_dropout, decode=decode)
    x = RMSNorm(epsilon=cfg.layer_norm_epsilon, dtype=dtype, name='decoder_norm')(x)
    x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=not enable_dropout)
    if cfg.logits_via_embedding:
      # T5 rescales tied logits, since the embedding's unit-normal rows are large. Scaling the
      # [B, L, D] input instead of the V-wide logits is the same product at D/V of the work.
      logits = self.shared_embedding.attend(x.astype(jnp.float32) / np.sqrt(x.shape[-1]))
    else:
      logits = DenseGeneral(features=(cfg.vocab_size,), kernel_axes=(axes.EMBED, axes.VOCAB),
                            kernel_init=fan_in_normal(x.shape[-1], truncated=True),
                            dtype=jnp.float32, name='logits_dense')(x)
    return nn.with_logical_constraint(logits.astype(jnp.float32),
                                      (axes.BATCH, axes.LENGTH, axes.VOCAB))
