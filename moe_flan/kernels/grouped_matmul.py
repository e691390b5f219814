"""Grouped matmul (`jax.lax.ragged_dot` semantics): each expert's rows times its own weights.

    grouped_matmul(x <[P, D]>, w <[E, D, F]>, group_sizes <int32>[E]) -> <[P, F]>

Rows are sorted by expert: rows [0, s_0) use w[0], the next s_1 rows use w[1], and so on; rows
past sum(group_sizes) come back as zeros. (D -> F names the expert FFN's first product; the
same function computes its F -> D product.) `implementation` (`MoeConfig.grouped_matmul`):

* 'auto' (the default; needs no compiler): on TPU `jax.lax.ragged_dot`, a real grouped matmul
  there. On CPU 'expert_loop', because XLA:CPU expands ragged_dot into a dense computation over
  all E experts (E times the FLOPs). On NVIDIA GPUs XLA expands ragged_dot the same way, so a
  warning is logged there: use 'mosaic_gpu' on Hopper or a capacity dispatcher ('scatter').
  The platform is chosen when the computation is lowered (`lax.platform_dependent`), so a
  function jitted on a CPU host also lowers for an accelerator.
* 'expert_loop': XLA only, every backend: a loop over experts, each running one matmul on a
  window of its rows whose size is one of a few static row counts (at most 1.5x the rows it
  holds, `_windows`), so the work follows the routed rows, not E times them.
* 'ragged_dot': `jax.lax.ragged_dot` on every backend.
* 'cpu_ffi' (opt-in, x86-64 with AVX-512): the C++ kernels of `grouped_matmul_cpu.py` on CPU,
  'auto' elsewhere. Where they cannot be built or loaded, a warning says why and 'auto' runs.
  They are built by `prepare('cpu_ffi')` or `python -m moe_flan.kernels.build` before tracing;
  a trace never compiles them.
* 'mosaic_gpu': JAX's Mosaic GPU grouped-matmul kernels on Hopper (grouped_matmul_hopper.py);
  an error elsewhere.

Reference twin: `ragged_dot` itself; tests check outputs and gradients of every implementation
against it and against a float64 numpy loop.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable

import jax
import jax.numpy as jnp

from moe_flan import config
from moe_flan.kernels import grouped_matmul_cpu
from moe_flan.kernels import grouped_matmul_hopper

IMPLEMENTATIONS = config.GROUPED_MATMULS
_MIN_WINDOW = 8
_NT = (((1,), (1,)), ((), ()))   # a @ b.T without materialising b.T
_TN = (((0,), (0,)), ((), ()))   # a.T @ b


def prepare(implementation: str) -> bool:
  """Readies `implementation` outside any trace: builds the C++ kernels for 'cpu_ffi' (False,
  with a logged reason, where they cannot be used). Nothing to do for the others."""
  if implementation == 'cpu_ffi' and jax.default_backend() == 'cpu':
    return grouped_matmul_cpu.prepare()
  return True


# --- The per-expert loop ('expert_loop') ------------------------------------------------------


def _windows(rows: int) -> tuple[int, ...]:
  """The loop's static row counts: 8, 12, 16, 24, 32, ... (each at most 1.5x the one before,
  so an expert's window holds at most 1.5x its rows beyond the smallest), and `rows` last."""
  sizes, base = set(), _MIN_WINDOW
  while base < rows:
    sizes.update((base, base * 3 // 2))
    base *= 2
  return tuple(sorted(s for s in sizes if s < rows)) + (rows,)


def _over_experts(x: jax.Array, group_sizes: jax.Array,
                  window_fn: Callable[[int], Callable]) -> Callable:
  """body(e, carry) for a loop over experts: runs window_fn(window)(carry, s0, valid, e) on the
  smallest window that covers expert e's rows (nothing for an empty expert).

  s0: the window's first row (moved back so that the window stays inside the P rows);
  valid: <bool>[window] the rows of the window that belong to expert e.
  """
  p = x.shape[0]
  windows = _windows(p)
  sizes = group_sizes.astype(jnp.int32)
  starts = jnp.cumsum(sizes) - sizes

  def body(e, carry, skip):
    start, n = starts[e], sizes[e]

    def branch(window):
      def run(carry):
        s0 = jnp.minimum(start, p - window)
        row = s0 + jnp.arange(window)
        return window_fn(window)(carry, s0, (row >= start) & (row < start + n), e)
      return run

    index = jnp.where(n == 0, 0, 1 + jnp.searchsorted(jnp.asarray(windows), n))
    return jax.lax.switch(index, [skip] + [branch(w) for w in windows], carry)
  return body


def _put(buffer: jax.Array, rows: jax.Array, s0: jax.Array, valid: jax.Array) -> jax.Array:
  """buffer with its rows [s0, s0 + window) replaced by `rows` where valid."""
  old = jax.lax.dynamic_slice_in_dim(buffer, s0, rows.shape[0])
  return jax.lax.dynamic_update_slice_in_dim(buffer, jnp.where(valid[:, None], rows, old), s0, 0)


def _loop_forward(x: jax.Array, w: jax.Array, group_sizes: jax.Array) -> jax.Array:
  """x <[P, D]>, w <[E, D, F]> -> <[P, F]> with one matmul per non-empty expert."""
  def window_fn(window):
    def run(out, s0, valid, e):
      rows = jax.lax.dynamic_slice_in_dim(x, s0, window)
      return _put(out, jnp.dot(rows, w[e]).astype(out.dtype), s0, valid)
    return run

  body = _over_experts(x, group_sizes, window_fn)
  out = jnp.zeros((x.shape[0], w.shape[2]), x.dtype)
  return jax.lax.fori_loop(0, w.shape[0], lambda e, out: body(e, out, lambda out: out), out)


def _loop_gradients(x: jax.Array, w: jax.Array, group_sizes: jax.Array,
                    dy: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(dx <[P, D]>, dw <[E, D, F]>) for the cotangent dy <[P, F]>, expert by expert."""
  def window_fn(window):
    def run(dx, s0, valid, e):
      rows = jnp.where(valid[:, None], jax.lax.dynamic_slice_in_dim(x, s0, window), 0)
      d_rows = jax.lax.dynamic_slice_in_dim(dy, s0, window)
      dx = _put(dx, jax.lax.dot_general(d_rows, w[e], _NT).astype(dx.dtype), s0, valid)
      return dx, jax.lax.dot_general(rows, d_rows, _TN).astype(w.dtype)
    return run

  body = _over_experts(x, group_sizes, window_fn)
  skip = lambda dx: (dx, jnp.zeros(w.shape[1:], w.dtype))

  def step(dx, e):
    return body(e, dx, skip)
  return jax.lax.scan(step, jnp.zeros_like(x), jnp.arange(w.shape[0]))


def _ragged_gradients(x, w, group_sizes, dy):
  _, vjp = jax.vjp(lambda a, b: jax.lax.ragged_dot(a, b, group_sizes), x, w)
  return vjp(dy)


# --- Implementations as custom VJPs, the platform chosen at lowering --------------------------


def _per_platform(cpu_forward: Callable, cpu_gradients: Callable,
                  default_forward: Callable, default_gradients: Callable) -> Callable:
  """A custom-VJP grouped matmul running the cpu_* functions when lowered for CPU and the
  default_* ones for any other platform."""
  @jax.custom_vjp
  def fn(x, w, group_sizes):
    return jax.lax.platform_dependent(x, w, group_sizes, cpu=cpu_forward,
                                      default=default_forward)

  def fwd(x, w, group_sizes):
    return fn(x, w, group_sizes), (x, w, group_sizes)

  def bwd(residuals, dy):
    x, w, group_sizes = residuals
    dx, dw = jax.lax.platform_dependent(x, w, group_sizes, dy, cpu=cpu_gradients,
                                        default=default_gradients)
    return dx, dw, None

  fn.defvjp(fwd, bwd)
  return fn


_expert_loop = _per_platform(_loop_forward, _loop_gradients, _loop_forward, _loop_gradients)
_auto = _per_platform(_loop_forward, _loop_gradients, jax.lax.ragged_dot, _ragged_gradients)
_cpu_ffi = _per_platform(grouped_matmul_cpu.forward, grouped_matmul_cpu.gradients,
                         jax.lax.ragged_dot, _ragged_gradients)


@functools.lru_cache(maxsize=None)
def _warn_expanded_on_gpu() -> None:
  logging.warning('moe_flan grouped_matmul: jax.lax.ragged_dot on an NVIDIA GPU is expanded by '
                  'XLA into a dense dot over every expert (E times the FLOPs). On Hopper set '
                  "MoeConfig.grouped_matmul = 'mosaic_gpu'; elsewhere prefer a capacity "
                  "dispatch ('scatter').")


def _check(x: jax.Array, w: jax.Array, group_sizes: jax.Array, implementation: str) -> None:
  if x.ndim != 2 or w.ndim != 3 or group_sizes.shape != (w.shape[0],) or x.shape[1] != w.shape[1]:
    raise ValueError(f'grouped_matmul: expected x [P, D], w [E, D, F], group_sizes [E]; got x '
                     f'{x.shape}, w {w.shape}, group_sizes {group_sizes.shape}')
  if not jnp.issubdtype(group_sizes.dtype, jnp.integer):
    raise ValueError(f'grouped_matmul: group_sizes must be integers, got {group_sizes.dtype}')
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'grouped_matmul: implementation={implementation!r}; choose one of '
                     f'{IMPLEMENTATIONS}')


def grouped_matmul(x: jax.Array, w: jax.Array, group_sizes: jax.Array,
                   implementation: str = 'auto') -> jax.Array:
  """x: <dtype>[P, D], w: <dtype>[E, D, F], group_sizes: <int32>[E] -> <dtype>[P, F] (see doc)."""
  _check(x, w, group_sizes, implementation)
  w = w.astype(x.dtype)
  if implementation == 'mosaic_gpu':
    reason = grouped_matmul_hopper.unsupported_reason(x, w)
    if reason:
      raise ValueError(f"Bad config: MoeConfig.grouped_matmul='mosaic_gpu' cannot run this "
                       f'grouped matmul (x {x.shape}, w {w.shape}): {reason}')
    return grouped_matmul_hopper.hopper_grouped_matmul(x, w, group_sizes)
  if implementation == 'ragged_dot':
    return jax.lax.ragged_dot(x, w, group_sizes)
  if x.shape[0] == 0:
    return jnp.zeros((0, w.shape[2]), x.dtype)
  group_sizes = group_sizes.astype(jnp.int32)
  if implementation == 'expert_loop':
    return _expert_loop(x, w, group_sizes)
  if jax.default_backend() == 'gpu':
    _warn_expanded_on_gpu()
  if implementation == 'cpu_ffi' and jax.default_backend() == 'cpu' and cpu_ffi_ready(x):
    return _cpu_ffi(x, w, group_sizes)
  return _auto(x, w, group_sizes)


def cpu_ffi_ready(x: jax.Array) -> bool:
  """Whether the C++ kernels can run now: built here when called on concrete arrays (outside
  jit), only loaded from the cache while tracing (nothing compiles inside jit)."""
  if isinstance(x, jax.core.Tracer):
    return grouped_matmul_cpu.ready_for_tracing()
  return grouped_matmul_cpu.prepare()
