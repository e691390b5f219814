"""Attention masks: boolean <bool>[B, 1, L, M] (1 = may attend), combined by logical and."""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

# Large negative bias for masked logits; finite so fully masked rows stay NaN-free.
NEG_INF = -1e10


def make_attention_mask(query_input: jax.Array, key_input: jax.Array,
                        pairwise_fn: Callable = jnp.logical_and) -> jax.Array:
  """<*>[B, L] and <*>[B, M] -> <bool>[B, 1, L, M] = pairwise_fn(query[l], key[m])."""
  mask = pairwise_fn(query_input[:, :, None], key_input[:, None, :])
  return mask[:, None, :, :].astype(jnp.bool_)


def padding_mask(query_tokens: jax.Array, key_tokens: jax.Array) -> jax.Array:
  """Non-padding queries may attend to non-padding keys (token 0 = padding)."""
  return make_attention_mask(query_tokens > 0, key_tokens > 0)


def segment_mask(query_segment_ids: jax.Array, key_segment_ids: jax.Array) -> jax.Array:
  """Packed examples attend only within their own segment."""
  return make_attention_mask(query_segment_ids, key_segment_ids, jnp.equal)


def causal_mask(length: int, batch: int = 1) -> jax.Array:
  """<bool>[batch, 1, L, L]: query l may attend to keys m <= l."""
  idx = jnp.arange(length)
  mask = idx[None, :] <= idx[:, None]
  return jnp.broadcast_to(mask, (batch, 1, length, length))


def combine_masks(*masks: Optional[jax.Array]) -> Optional[jax.Array]:
  """Logical and of the given masks (None entries ignored); None if all are None."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0].astype(jnp.bool_)
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out


def mask_to_bias(mask: Optional[jax.Array], dtype=jnp.float32) -> Optional[jax.Array]:
  """<bool>[B, 1, L, M] -> additive bias: 0 where allowed, NEG_INF where masked."""
  if mask is None:
    return None
  return jnp.where(mask, 0.0, NEG_INF).astype(dtype)
