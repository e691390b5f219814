"""The opt-in C++ grouped-matmul kernels for XLA:CPU (`MoeConfig.grouped_matmul = 'cpu_ffi'`).

    cpu_nn(x <[P, D]>, w <[E, D, F]>, group_sizes <int32>[E]) -> <float32>[P, F]   x @ w[e]
    cpu_nt(dy <[P, F]>, w <[E, D, F]>, group_sizes)            -> <float32>[P, D]   dy @ w[e]^T
    cpu_tn(x <[P, D]>, dy <[P, F]>, group_sizes)              -> <float32>[E, D, F] x^T @ dy

Rows are sorted by expert: expert e owns the group_sizes[e] rows after those of experts < e
(the same functions serve the F -> D product with the roles of D and F swapped). The kernels
(`grouped_matmul.cc`) read each expert's weights once and keep them in cache for all its rows,
which pays off when the experts have few rows each; they need an x86-64 CPU with AVX-512 and a
C++ compiler (`build.py`), so they are opt-in and never chosen automatically.

`prepare()` builds and registers them outside any trace (the trainer calls it when a model
names 'cpu_ffi'; `python -m moe_flan.kernels.build` does it ahead of time). While tracing,
`ready_for_tracing()` only loads an already-built library: a jitted function never runs the
compiler.
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from moe_flan.kernels import build

SOURCE = 'grouped_matmul.cc'
TARGETS = (('moe_flan_grouped_nn', 'MoeFlanGroupedNN'),
           ('moe_flan_grouped_nt', 'MoeFlanGroupedNT'),
           ('moe_flan_grouped_tn', 'MoeFlanGroupedTN'))


@functools.lru_cache(maxsize=None)
def _refusal(reason: str) -> None:
  """Logs, once per reason, why the kernels are not used."""
  logging.warning("moe_flan grouped_matmul='cpu_ffi': the C++ kernels are not used, falling "
                  'back to the XLA grouped matmul: %s', reason)


def prepare() -> bool:
  """Builds (if needed) and registers the kernels; False, with a logged reason, if they cannot
  be used on this host. Call it outside jit: it may run the C++ compiler."""
  try:
    build.register_cpu_targets(SOURCE, TARGETS)
    return True
  except build.KernelBuildError as e:
    _refusal(str(e))
    return False


def ready_for_tracing() -> bool:
  """Whether the kernels can be lowered now without compiling anything (registered already, or
  a library built for this host is in the cache); logs why not otherwise."""
  try:
    build.register_cpu_targets(SOURCE, TARGETS, compile_if_missing=False)
    return True
  except build.KernelBuildError as e:
    _refusal(str(e))
    return False


def _segments(group_sizes: jax.Array) -> tuple[jax.Array, jax.Array]:
  lengths = group_sizes.astype(jnp.int32)
  return jnp.cumsum(lengths) - lengths, lengths


def _ffi(target: str, shape: tuple, *operands: jax.Array) -> jax.Array:
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method='sequential')(*operands)


def cpu_nn(x: jax.Array, w: jax.Array, group_sizes: jax.Array) -> jax.Array:
  """x <[P, D]>, w <[E, D, F]> -> <float32>[P, F]: each expert's rows @ its w[e]."""
  return _ffi('moe_flan_grouped_nn', (x.shape[0], w.shape[2]), x.astype(jnp.float32),
              w.astype(jnp.float32), *_segments(group_sizes))


def cpu_nt(dy: jax.Array, w: jax.Array, group_sizes: jax.Array) -> jax.Array:
  """dy <[P, F]>, w <[E, D, F]> -> <float32>[P, D]: each expert's rows @ w[e]^T."""
  return _ffi('moe_flan_grouped_nt', (dy.shape[0], w.shape[1]), dy.astype(jnp.float32),
              w.astype(jnp.float32), *_segments(group_sizes))


def cpu_tn(x: jax.Array, dy: jax.Array, group_sizes: jax.Array) -> jax.Array:
  """x <[P, D]>, dy <[P, F]> -> <float32>[E, D, F]: x[rows of e]^T @ dy[rows of e]."""
  return _ffi('moe_flan_grouped_tn', (group_sizes.shape[0], x.shape[1], dy.shape[1]),
              x.astype(jnp.float32), dy.astype(jnp.float32), *_segments(group_sizes))


def forward(x: jax.Array, w: jax.Array, group_sizes: jax.Array) -> jax.Array:
  """The grouped matmul in float32, returned in x's dtype."""
  return cpu_nn(x, w, group_sizes).astype(x.dtype)


def gradients(x: jax.Array, w: jax.Array, group_sizes: jax.Array,
              dy: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(dx <[P, D]>, dw <[E, D, F]>) of the grouped matmul for the cotangent dy <[P, F]>."""
  return (cpu_nt(dy, w, group_sizes).astype(x.dtype),
          cpu_tn(x, dy, group_sizes).astype(w.dtype))
