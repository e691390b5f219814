"""A linear map over several input and output axes whose kernel carries logical axis names."""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class DenseGeneral(nn.Module):
  """`y = x · kernel`, contracting the last `num_in_axes` axes of x (no bias, as T5).

  With `num_in_axes=1, features=(H, K)` it maps <f>[B, L, D] -> <f>[B, L, H, K] with a kernel
  [D, H, K]; with `num_in_axes=2, features=(D,)` it maps [B, L, H, K] -> [B, L, D] ([H, K, D]).
  The kernel is stored in float32 and used in `dtype`.
  """
  features: Sequence[int]
  kernel_axes: Sequence[str]
  kernel_init: Callable = nn.initializers.lecun_normal()
  num_in_axes: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_shape = x.shape[-self.num_in_axes:]
    kernel_shape = tuple(in_shape) + tuple(self.features)
    if len(self.kernel_axes) != len(kernel_shape):
      raise ValueError(f'kernel_axes={tuple(self.kernel_axes)} does not match kernel shape '
                       f'{kernel_shape}')
    kernel = self.param('kernel', nn.with_logical_partitioning(self.kernel_init,
                                                               tuple(self.kernel_axes)),
                        kernel_shape, jnp.float32)
    kernel = jnp.asarray(kernel, self.dtype)
    x = jnp.asarray(x, self.dtype)
    contract_x = tuple(range(x.ndim - self.num_in_axes, x.ndim))
    contract_k = tuple(range(self.num_in_axes))
    return jax.lax.dot_general(x, kernel, ((contract_x, contract_k), ((), ())))


def fan_in_normal(fan_in: int, scale: float = 1.0, truncated: bool = False) -> Callable:
  """Normal initializer with variance `scale / fan_in` (fan_in given explicitly, since the
  kernels above have several input/output axes and flax's fan inference would guess wrong)."""
  std = float(np.sqrt(scale / fan_in))
  if truncated:
    # A unit truncated normal on [-2, 2] has std 0.87962566; rescale so the std is `std`.
    return nn.initializers.truncated_normal(stddev=std / 0.87962566103423978)
  return nn.initializers.normal(stddev=std)
