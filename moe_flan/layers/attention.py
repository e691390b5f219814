"""Multi-head dot-product attention with T5's conventions and a key/value cache for decoding.

T5 does not scale logits by 1/sqrt(K); the query kernel's init std (D*K)^-0.5 folds that
factor in. Logits, mask bias and softmax are computed in float32.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_flan import axes
from moe_flan.layers.dense import DenseGeneral, fan_in_normal
from moe_flan.layers.masks import NEG_INF

_QKV_AXES = (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV)


class MultiHeadAttention(nn.Module):
  """Params: {query,key,value}/kernel [D, H, K] ('embed','heads','kv'); out/kernel [H, K, D]."""
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  def _project(self, name: str, x: jax.Array, std_fan_in: int) -> jax.Array:
    y = DenseGeneral(features=(self.num_heads, self.head_dim),
                     kernel_axes=(axes.EMBED, axes.HEADS, axes.KV),
                     kernel_init=fan_in_normal(std_fan_in), dtype=self.dtype, name=name)(x)
    return nn.with_logical_constraint(y, _QKV_AXES)

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array,
               mask: Optional[jax.Array] = None, bias: Optional[jax.Array] = None,
               enable_dropout: bool = False, decode: bool = False) -> jax.Array:
    """Attends from <float>[B, L, D] queries to <float>[B, M, D] keys/values.

    Args:
      mask: <bool>[B, 1, L, M] (1 = may attend) or None.
      bias: <float32>[B|1, H, L, M] additive logit bias (relative positions) or None.
      decode: autoregressive mode. The first call (no cache yet) creates the cache sized by
        `inputs_kv` and attends normally; later calls take one query position, [B, 1, D],
        write its key/value at `cache_index` and attend over keys 0..cache_index. In that mode
        `mask`/`bias` cover the full cache length M.
    Returns:
      <dtype>[B, L, D].
    """
    d_model = inputs_q.shape[-1]
    query = self._project('query', inputs_q, d_model * self.head_dim)
    key = self._project('key', inputs_kv, d_model)
    value = self._project('value', inputs_kv, d_model)
    if decode:
      key, value, cache_mask = self._update_cache(key, value)
      if cache_mask is not None:
        mask = cache_mask if mask is None else jnp.logical_and(mask, cache_mask)
    logits = jnp.einsum('BLHK,BMHK->BHLM', query.astype(jnp.float32), key.astype(jnp.float32))
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = nn.Dropout(rate=self.dropout_rate)(probs, deterministic=not enable_dropout)
    context = jnp.einsum('BHLM,BMHK->BLHK', probs.astype(self.dtype), value)
    context = nn.with_logical_constraint(context, _QKV_AXES)
    out = DenseGeneral(features=(d_model,), kernel_axes=(axes.HEADS, axes.KV, axes.EMBED),
                       kernel_init=fan_in_normal(self.num_heads * self.head_dim),
                       num_in_axes=2, dtype=self.dtype, name='out')(context)
    return nn.with_logical_constraint(out, (axes.BATCH, axes.LENGTH, axes.EMBED))

  def _update_cache(self, key: jax.Array, value: jax.Array):
    """Cache variables: cached_key/cached_value <dtype>[B, M, H, K], cache_index <int32>[]."""
    initialized = self.has_variable('cache', 'cached_key')
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
    cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if not initialized:
      return key, value, None   # shape-defining pass: attend over the given keys as usual
    batch, max_length = cached_key.value.shape[:2]
    if key.shape[1] != 1:
      raise ValueError(f'decode=True with an initialised cache takes one position at a time; '
                       f'got length {key.shape[1]}')
    index = cache_index.value
    start = (0, index, 0, 0)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key,
                                                    start)
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
    cache_index.value = index + 1
    valid = jnp.arange(max_length) <= index               # keys written so far
    mask = jnp.broadcast_to(valid, (batch, 1, 1, max_length))
    return cached_key.value, cached_value.value, mask
