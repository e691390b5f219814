"""Grouped matmul on Hopper GPUs (H100, H200) with JAX's own Mosaic GPU kernels.

    hopper_grouped_matmul(x <[M, K]>, w <[G, K, N]>, group_sizes <int32>[G]) -> <[M, N]>

Same semantics as `jax.lax.ragged_dot` (rows sorted by group; rows past sum(group_sizes) come
back as zeros). Why not ragged_dot itself: on NVIDIA GPUs XLA's RaggedDotRewriter expands a
ragged dot into a dense dot over a group-broadcast, group-masked input ([M, K] -> [M, G, K]),
so every row is multiplied by all G experts' weights: G times the FLOPs and a G-times
temporary (128x at E=128). The cuDNN grouped-GEMM fusion that avoids it needs cuDNN >= 9.22
and an experimental XLA flag, and covers the forward only.

The kernels are `jax.experimental.pallas.ops.gpu.ragged_dot_mgpu` (forward, and the input
gradient on a transposed copy of the weights) and `transposed_ragged_dot_mgpu` (the weight
gradient, ragged over the contracted rows), maintained in JAX. They use wgmma and TMA, so they
need compute capability 9.x and bfloat16 or float16 operands; `unsupported_reason` says when a
call cannot use them. The kernels leave rows outside every group unwritten, so outputs are
masked here.

Reference twin: `jax.lax.ragged_dot`. The tests run the forward and input-gradient kernels in
Mosaic GPU's interpreter on CPU and check outputs and gradients against it;
the interpreter cannot run the weight-gradient kernel (a transposed shared-memory view), which
is checked on a Hopper GPU only.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

HOPPER_DTYPES = (jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class Blocks:
  """Tile sizes of the kernels (the largest `grid_block_n` dividing the N tiles is used)."""
  block_m: int = 128
  block_n: int = 128
  block_k: int = 64
  max_concurrent_steps: int = 4


DEFAULT_BLOCKS = Blocks()


def unsupported_reason(x: jax.Array, w: jax.Array, blocks: Blocks = DEFAULT_BLOCKS,
                       check_device: bool = True) -> Optional[str]:
  """None if the kernels can run x <[M, K]> @ w <[G, K, N]>; else why not, in words."""
  if check_device:
    if jax.default_backend() != 'gpu':
      return f'the default backend is {jax.default_backend()!r}, not a GPU'
    capability = getattr(jax.devices()[0], 'compute_capability', '')
    if not str(capability).startswith('9'):
      return f'the GPU has compute capability {capability!r}; the kernels need 9.x (Hopper)'
  if x.dtype != w.dtype or not any(x.dtype == d for d in HOPPER_DTYPES):
    return f'operands are {x.dtype} and {w.dtype}; the kernels need both bfloat16 or float16'
  k, n = w.shape[1], w.shape[2]
  # The forward contracts K in block_k steps into block_n-wide outputs; the input gradient
  # contracts N into K-wide outputs; the weight gradient writes [K, N] in block_m x block_n tiles.
  tiles = {'forward': (('K', k, blocks.block_k), ('N', n, blocks.block_n)),
           'input gradient': (('N', n, blocks.block_k), ('K', k, blocks.block_n)),
           'weight gradient': (('K', k, blocks.block_m), ('N', n, blocks.block_n))}
  for kernel, checks in tiles.items():
    for dim, size, tile in checks:
      if size % tile:
        return f'{dim}={size} is not a multiple of the {kernel} tile {tile}'
  return None


def _grid_block_n(n: int, block_n: int) -> int:
  tiles = n // block_n
  return next(b for b in (8, 4, 2, 1) if tiles % b == 0)


def _rows_in_groups(out: jax.Array, group_sizes: jax.Array) -> jax.Array:
  valid = jnp.arange(out.shape[0]) < jnp.sum(group_sizes)
  return jnp.where(valid[:, None], out, jnp.zeros((), out.dtype))


def _nn(x, w, group_sizes, blocks: Blocks):
  """<[M, K]> @ <[G, K, N]> per group -> <[M, N]>."""
  from jax.experimental.pallas.ops.gpu import ragged_dot_mgpu
  out = ragged_dot_mgpu.ragged_dot(
      x, w, group_sizes=group_sizes, block_m=blocks.block_m, block_n=blocks.block_n,
      block_k=blocks.block_k, max_concurrent_steps=blocks.max_concurrent_steps,
      grid_block_n=_grid_block_n(w.shape[2], blocks.block_n))
  return _rows_in_groups(out, group_sizes)


def _tn(x, dy, group_sizes, blocks: Blocks):
  """x <[M, K]>, dy <[M, N]> -> <[G, K, N]>: x[group g]^T @ dy[group g]."""
  from jax.experimental.pallas.ops.gpu import transposed_ragged_dot_mgpu
  return transposed_ragged_dot_mgpu.transposed_ragged_dot(
      x, dy, group_sizes=group_sizes, block_m=blocks.block_m, block_n=blocks.block_n,
      block_k=blocks.block_k, max_concurrent_steps=blocks.max_concurrent_steps,
      grid_block_n=_grid_block_n(dy.shape[1], blocks.block_n))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _hopper(x, w, group_sizes, blocks):
  return _nn(x, w, group_sizes, blocks)


def _hopper_fwd(x, w, group_sizes, blocks):
  return _nn(x, w, group_sizes, blocks), (x, w, group_sizes)


def _hopper_bwd(blocks, residuals, dy):
  x, w, group_sizes = residuals
  dy = dy.astype(x.dtype)
  # An explicit [G, N, K] copy of the weights (one pass over them) rather than the kernel's
  # transposed-weights mode, which not every JAX release has and its interpreter cannot run.
  dx = _nn(dy, jnp.swapaxes(w, 1, 2), group_sizes, blocks)
  dw = _tn(x, dy, group_sizes, blocks)
  return dx, dw.astype(w.dtype), None


_hopper.defvjp(_hopper_fwd, _hopper_bwd)


def hopper_grouped_matmul(x: jax.Array, w: jax.Array, group_sizes: jax.Array,
                          blocks: Blocks = DEFAULT_BLOCKS, check_device: bool = True
                          ) -> jax.Array:
  """x: <bf16|f16>[M, K], w: <same>[G, K, N], group_sizes: <int>[G] -> <same>[M, N].

  Differentiable in x and w. Raises ValueError (with the reason) where the kernels cannot run.
  check_device=False skips the GPU check (tests run the kernels in Mosaic GPU's interpreter).
  """
  reason = unsupported_reason(x, w, blocks, check_device)
  if reason:
    raise ValueError(f'hopper_grouped_matmul: cannot use the Mosaic GPU kernels: {reason}')
  return _hopper(x, w, group_sizes.astype(jnp.int32), blocks)
