"""The machine's achievable matmul rate, measured with XLA in the same process as the cases.

Model FLOP utilisation is reported against this measured peak rather than a datasheet number:
on a shared CPU the datasheet peak is never reachable, and what matters is how close the train
step gets to the best dense matmul XLA can do on the same cores at the same moment.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from benchmarks import timing


def matmul_flops(m: int, k: int, n: int) -> float:
  """FLOPs of one [m, k] x [k, n] matmul (a multiply and an add per term)."""
  return 2.0 * m * k * n


def matmul_fn(size: int, dtype: str = 'float32') -> tuple[Callable[[], jax.Array], float]:
  """(closure running a jitted square `size`^3 matmul, its FLOPs)."""
  if size < 1:
    raise ValueError(f'peak.matmul_fn: size={size} must be >= 1')
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (size, size), dtype=jnp.dtype(dtype))
  b = jax.random.normal(key_b, (size, size), dtype=jnp.dtype(dtype))
  matmul = jax.jit(jnp.matmul)
  return (lambda: matmul(a, b)), matmul_flops(size, size, size)


def measure(size: int, dtype: str = 'float32', repeats: int = 5) -> dict:
  """Median FLOP/s of a jitted square `size`^3 matmul; also the best (min-time) rate.

  Returns a dict with 'flops_per_s' (median), 'best_flops_per_s', the size, dtype and timing.
  """
  fn, flops = matmul_fn(size, dtype)
  result = timing.time_fn(fn, repeats=repeats, warmup=2)
  return {'size': size, 'dtype': dtype, 'flops_per_s': flops / result.median_s,
          'best_flops_per_s': flops / result.min_s, 'time_s': result.as_dict()}


def measure_bandwidth(megabytes: int = 256, repeats: int = 5) -> dict:
  """Streaming memory bandwidth of a jitted `a * 2` on a float32 array of `megabytes` MB:
  bytes read + written per second (median of repeats), writing a fresh output buffer each call
  ('bytes_per_s', what a step that allocates its outputs -- e.g. gradients -- sees) and in place
  on a donated buffer ('in_place_bytes_per_s'). On VMs where first-touch page faults are slow
  the two differ several-fold."""
  if megabytes < 1:
    raise ValueError(f'peak.measure_bandwidth: megabytes={megabytes} must be >= 1')
  a = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
  moved = 2.0 * a.size * 4
  scale = jax.jit(lambda v: v * 2.0)
  fresh = timing.time_fn(lambda: scale(a), repeats=repeats, warmup=1)
  donating = jax.jit(lambda v: v * 0.5, donate_argnums=0)
  holder = {'a': jnp.ones_like(a)}

  def in_place():
    holder['a'] = donating(holder['a'])
    return holder['a']
  inplace = timing.time_fn(in_place, repeats=repeats, warmup=1)
  return {'megabytes': megabytes, 'bytes_per_s': moved / fresh.median_s,
          'in_place_bytes_per_s': moved / inplace.median_s, 'time_s': fresh.as_dict()}
