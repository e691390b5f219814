"""T5 relative position bias: log-spaced buckets of key-minus-query offsets, one learned scalar
per (head, bucket); computed once per stack and shared by all its self-attention layers."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moe_flan import axes


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> jax.Array:
  """Maps `relative_position = key_position - query_position` (<int>[...]) to a bucket id.

  Bidirectional (encoder): half the buckets for keys after the query, half for keys before.
  Causal (decoder): future keys all fall into bucket 0 (they are masked anyway).
  Within each half, the first `n // 2` offsets get one bucket each, larger offsets share
  log-spaced buckets up to `max_distance`, beyond which everything lands in the last bucket.
  """
  n = -jnp.asarray(relative_position, jnp.int32)   # distance looking back from the query
  bucket = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # The float32 eps keeps exact powers of two on their bucket despite rounding in log().
  scaled = (jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
            / np.log(max_distance / max_exact) * (num_buckets - max_exact))
  large = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
  return bucket + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """Learned bias `rel_embedding` <float32>[H, R] ('heads', 'relpos_buckets')."""
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True

  @nn.compact
  def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """<int32>[B, L] query and <int32>[B, M] key positions (B may be 1) -> <float32>[B, H, L, M].

    The stacks pass 0..L-1 with B = 1 (see `moe_flan.model.encoder.relpos_positions`); when
    decoding one step, the query position is the step index.
    """
    table = self.param(
        'rel_embedding',
        nn.with_logical_partitioning(nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
                                     (axes.HEADS, axes.RELPOS_BUCKETS)),
        (self.num_heads, self.num_buckets), jnp.float32)
    offsets = key_positions[:, None, :] - query_positions[:, :, None]    # [B, L, M]
    buckets = relative_position_bucket(offsets, self.bidirectional, self.num_buckets,
                                       self.max_distance)
    # A gather, not a one-hot matmul: the one-hot [B, L, M, R] would be R-fold larger than
    # the result at long lengths.
    bias = jnp.take(table, buckets, axis=1)                                # [H, B, L, M]
    return jnp.transpose(bias, (1, 0, 2, 3))
