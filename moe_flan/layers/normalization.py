"""RMSNorm as in T5: no mean subtraction, no bias, float32 statistics and scale."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_flan import axes


class RMSNorm(nn.Module):
  """`y = x / sqrt(mean(x^2) + eps) * scale`, with `scale` <float32>[D] ('embed',) init 1."""
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """<float>[..., D] -> <dtype>[..., D]; statistics in float32 whatever the input dtype."""
    features = x.shape[-1]
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
                       (features,), jnp.float32)
    x32 = jnp.asarray(x, jnp.float32)
    mean_square = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(mean_square + self.epsilon)
    return jnp.asarray(y * scale, self.dtype)
