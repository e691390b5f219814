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
