"""Grouped matmul (`jax.lax.ragged_dot` semantics) with a real CPU implementation.

    grouped_matmul(x <[M, K]>, w <[G, K, N]>, group_sizes <int32>[G]) -> <[M, N]>

Rows are sorted by group: rows [0, s_0) use w[0], the next s_1 rows use w[1], and so on; rows
past sum(group_sizes) come back as zeros. `implementation` chooses how:

* 'auto': on CPU the C++ kernels of `grouped_matmul.cc` through the XLA FFI (forward `nn`;
  backward `nt` for the input and `tn` for the weights), in float32, because XLA:CPU's
  ragged_dot is a dense computation doing G times the work. Elsewhere `jax.lax.ragged_dot`:
  a real grouped matmul on TPU, but on NVIDIA GPUs XLA expands it into a dense dot over all G
  groups (G times the FLOPs; see grouped_matmul_hopper.py), so a warning is logged there. On a
  CPU host the choice is made when the computation is lowered (`lax.platform_dependent`), so a
  function jitted there also lowers for an accelerator.
* 'ragged_dot': `jax.lax.ragged_dot` on every backend.
* 'mosaic_gpu': JAX's Mosaic GPU grouped-matmul kernels on Hopper (grouped_matmul_hopper.py);
  an error elsewhere.

Reference twin: `ragged_dot` itself; tests check outputs and gradients agree.
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from moe_flan import config
from moe_flan.kernels import build
from moe_flan.kernels import grouped_matmul_hopper

IMPLEMENTATIONS = config.GROUPED_MATMULS

_SOURCE = 'grouped_matmul.cc'
_TARGETS = (('moe_flan_grouped_nn', 'MoeFlanGroupedNN'),
            ('moe_flan_grouped_nt', 'MoeFlanGroupedNT'),
            ('moe_flan_grouped_tn', 'MoeFlanGroupedTN'))


@functools.lru_cache(maxsize=None)
def cpu_kernels_available() -> bool:
  """True once the C++ kernels are built and registered; False (logged) if they cannot be."""
  try:
    build.register_cpu_targets(_SOURCE, _TARGETS)
    return True
  except build.KernelBuildError as e:
    logging.warning('moe_flan grouped_matmul: CPU kernels unavailable, falling back to '
                    'jax.lax.ragged_dot (G times the work on CPU): %s', e)
    return False


def _segments(group_sizes: jax.Array) -> tuple[jax.Array, jax.Array]:
  lengths = group_sizes.astype(jnp.int32)
  return jnp.cumsum(lengths) - lengths, lengths


def _ffi(target: str, shape: tuple, *operands: jax.Array) -> jax.Array:
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method='sequential')(*operands)


# The three CPU kernels (float32; callers check `cpu_kernels_available()` first).
def cpu_nn(x: jax.Array, w: jax.Array, group_sizes: jax.Array) -> jax.Array:
  """x <[M, K]>, w <[G, K, N]> -> <f32[M, N]>: each group's rows @ its w[g]."""
  return _ffi('moe_flan_grouped_nn', (x.shape[0], w.shape[2]), x.astype(jnp.float32),
              w.astype(jnp.float32), *_segments(group_sizes))


def cpu_nt(dy: jax.Array, w: jax.Array, group_sizes: jax.Array) -> jax.Array:
  """dy <[M, N]>, w <[G, K, N]> -> <f32[M, K]>: each group's rows @ w[g]^T."""
  return _ffi('moe_flan_grouped_nt', (dy.shape[0], w.shape[1]), dy.astype(jnp.float32),
              w.astype(jnp.float32), *_segments(group_sizes))


def cpu_tn(x: jax.Array, dy: jax.Array, group_sizes: jax.Array) -> jax.Array:
  """x <[M, K]>, dy <[M, N]> -> <f32[G, K, N]>: x[group g]^T @ dy[group g]."""
  return _ffi('moe_flan_grouped_tn', (group_sizes.shape[0], x.shape[1], dy.shape[1]),
              x.astype(jnp.float32), dy.astype(jnp.float32), *_segments(group_sizes))


def _kernel_nn(x, w, group_sizes):
  return cpu_nn(x, w, group_sizes).astype(x.dtype)


def _kernel_grads(x, w, group_sizes, dy):
  return (cpu_nt(dy, w, group_sizes).astype(x.dtype),
          cpu_tn(x, dy, group_sizes).astype(w.dtype))


def _ragged_grads(x, w, group_sizes, dy):
  _, vjp = jax.vjp(lambda a, b: jax.lax.ragged_dot(a, b, group_sizes), x, w)
  return vjp(dy)


@jax.custom_vjp
def _grouped_matmul(x: jax.Array, w: jax.Array, group_sizes: jax.Array) -> jax.Array:
  return jax.lax.platform_dependent(x, w, group_sizes, cpu=_kernel_nn,
                                    default=jax.lax.ragged_dot)


def _grouped_matmul_fwd(x, w, group_sizes):
  return _grouped_matmul(x, w, group_sizes), (x, w, group_sizes)


def _grouped_matmul_bwd(residuals, dy):
  x, w, group_sizes = residuals
  dx, dw = jax.lax.platform_dependent(x, w, group_sizes, dy, cpu=_kernel_grads,
                                      default=_ragged_grads)
  return dx, dw, None


_grouped_matmul.defvjp(_grouped_matmul_fwd, _grouped_matmul_bwd)


@functools.lru_cache(maxsize=None)
def _warn_expanded_on_gpu() -> None:
  logging.warning('moe_flan grouped_matmul: jax.lax.ragged_dot on an NVIDIA GPU is expanded by '
                  'XLA into a dense dot over every group (G times the FLOPs). On Hopper set '
                  "MoeConfig.grouped_matmul = 'mosaic_gpu'; elsewhere prefer a capacity "
                  "dispatch ('scatter').")


def grouped_matmul(x: jax.Array, w: jax.Array, group_sizes: jax.Array,
                   implementation: str = 'auto') -> jax.Array:
  """x: <dtype>[M, K], w: <dtype>[G, K, N], group_sizes: <int32>[G] -> <dtype>[M, N] (see doc)."""
  if x.ndim != 2 or w.ndim != 3 or group_sizes.shape != (w.shape[0],) or x.shape[1] != w.shape[1]:
    raise ValueError(f'grouped_matmul: expected x [M, K], w [G, K, N], group_sizes [G]; got x '
                     f'{x.shape}, w {w.shape}, group_sizes {group_sizes.shape}')
  if not jnp.issubdtype(group_sizes.dtype, jnp.integer):
    raise ValueError(f'grouped_matmul: group_sizes must be integers, got {group_sizes.dtype}')
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'grouped_matmul: implementation={implementation!r}; choose one of '
                     f'{IMPLEMENTATIONS}')
  if implementation == 'mosaic_gpu':
    w = w.astype(x.dtype)
    reason = grouped_matmul_hopper.unsupported_reason(x, w)
    if reason:
      raise ValueError(f"Bad config: MoeConfig.grouped_matmul='mosaic_gpu' cannot run this "
                       f'grouped matmul (x {x.shape}, w {w.shape}): {reason}')
    return grouped_matmul_hopper.hopper_grouped_matmul(x, w, group_sizes)
  if jax.default_backend() == 'gpu':
    _warn_expanded_on_gpu()
  # Off CPU the C++ kernels are never lowered, so they are not built there either.
  if (implementation == 'ragged_dot' or jax.default_backend() != 'cpu'
      or not cpu_kernels_available()):
    return jax.lax.ragged_dot(x, w, group_sizes)
  return _grouped_matmul(x, w.astype(x.dtype), group_sizes.astype(jnp.int32))
