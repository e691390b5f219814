"""Segmented dispatch: rows sorted into per-expert segments, exact-size matmuls per expert.

A capacity dispatcher ('segmented'). Routed selections are laid out in one row
buffer <[P, D]>: expert 0's rows (all groups, each group's slots in order), then expert 1's,
and so on. Two ways run the experts on it:

* grouped (off CPU with MoeConfig.grouped_matmul 'auto'; on CPU with the opt-in 'cpu_ffi'
  kernels or an explicit 'ragged_dot'): segments are back to back and `ffn.ragged` runs one
  grouped matmul per weight over all of them (a real grouped matmul on TPU, on Hopper with
  'mosaic_gpu' and with 'cpu_ffi'; XLA expands plain ragged_dot on CPU and NVIDIA GPUs);
* the per-expert loop (on CPU by default, everywhere with 'expert_loop', and the grouped
  path's reference in the tests): each segment is rounded up to a multiple of
  `unit = ceil(G * C / NUM_SIZES)` rows, so it holds one of NUM_SIZES + 1 possible row counts,
  and a loop over experts runs the whole expert FFN on exactly that many rows (a `lax.switch`
  over the possible counts).

Compared with the capacity-padded paths ('einsum', 'scatter'):

* the experts do the work of the tokens actually routed (plus < `unit` rows per expert), not of
  the E * C capacity slots (the capacity factor, e.g. 1.25x, is no longer paid in FLOPs);
* no <[G, T, E, C]> one-hot tensor and no per-row scatter: tokens move with row gathers whose
  backward passes are row gathers too (the inverse index is known), except for experts-choose,
  whose many selections per token are combined with a scatter-add;
* the backward pass is a hand-written loop of the same per-expert matmuls (custom VJP): XLA's
  autodiff of a switch inside a loop would store every branch's residuals.

Rows of a segment beyond its routed rows are zeros; every activation in `ACTIVATIONS` maps 0
to 0, so they produce zero outputs and zero weight gradients. The loop is sequential over
experts, so a branch may write its full-size result window past its own segment: the next
expert (or the tail slack of the buffer) owns those rows and rewrites them afterwards.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from moe_flan.kernels import grouped_matmul as grouped_matmul_lib
from moe_flan.moe.experts import ACTIVATIONS, ExpertFFN, input_kernel_names
from moe_flan.moe.routing import Routing

NUM_SIZES = 16               # segment sizes per expert: 0, unit, 2 * unit, ..., NUM_SIZES * unit
_GATHER_MAX_SELECTIONS = 2   # above this (experts-choose: S = E), move rows with scatter-adds
_NT = (((1,), (1,)), ((), ()))   # a @ b.T without materialising b.T
_TN = (((0,), (0,)), ((), ()))   # a.T @ b


@dataclasses.dataclass(frozen=True)
class SegmentLayout:
  """Where each routed selection lives in the row buffer.

  row_source: <int32>[P] flat token (g * T + t) each row copies; G * T (a zero row) if unused.
  selection_row: <int32>[G * T, S] the row of each selection; P if not routed.
  row_selection: <int32>[P] flat selection index ((g * T + t) * S + s) of each row; G*T*S if none.
  starts: <int32>[E] first row of each expert's segment.
  sizes: <int32>[E] segment length in units (0..NUM_SIZES).
  unit, window: static ints; window = NUM_SIZES * unit is the largest segment.
  """
  row_source: jax.Array
  selection_row: jax.Array
  row_selection: jax.Array
  starts: jax.Array
  sizes: jax.Array
  unit: int
  window: int


def segment_layout(routing: Routing, unit: Optional[int] = None) -> SegmentLayout:
  """Computes the row layout of `routing` (integer work, O(G * T * S + G * E)).

  unit: rows per size step; default ceil(G * C / NUM_SIZES) (the loop's switch). With unit=1
  the segments are back to back and `sizes` are row counts (grouped-matmul layout).
  """
  g, t, s = routing.expert_index.shape
  e, c = routing.num_experts, routing.capacity
  unit = unit or max(1, math.ceil(g * c / NUM_SIZES))
  rows_bound = min(g * t * s, g * e * c) + e * unit   # routed rows + rounding of each segment
  num_rows = rows_bound + NUM_SIZES * unit            # + slack for the last full-size window
  expert = jnp.where(routing.routed, routing.expert_index, e).reshape(g, t * s)
  slot_end = jnp.where(routing.routed, routing.slot_index + 1, 0).reshape(g, t * s)
  # Rows expert e needs in group g: 1 + its largest routed slot (slots may have gaps: padding
  # tokens picked by experts-choose hold a slot but are not routed).
  length = jnp.zeros((g, e + 1), jnp.int32).at[jnp.arange(g)[:, None], expert].max(slot_end)
  length = length[:, :e]                                                   # [G, E]
  group_offset = jnp.cumsum(length, axis=0) - length                      # [G, E]
  sizes = -(-jnp.sum(length, axis=0) // unit)                             # [E] ceil
  starts = jnp.cumsum(sizes * unit) - sizes * unit                        # [E]
  offset = jnp.concatenate([starts[None] + group_offset, jnp.zeros((g, 1), jnp.int32)], 1)
  row = jnp.take_along_axis(offset, expert, axis=1) + routing.slot_index.reshape(g, t * s)
  row = jnp.where(routing.routed.reshape(g, t * s), row, num_rows).reshape(-1)  # [G*T*S]
  token = jnp.repeat(jnp.arange(g * t, dtype=jnp.int32), s)
  row_source = jnp.full((num_rows,), g * t, jnp.int32).at[row].set(token, mode='drop')
  row_selection = jnp.full((num_rows,), g * t * s, jnp.int32).at[row].set(
      jnp.arange(g * t * s, dtype=jnp.int32), mode='drop')
  return SegmentLayout(row_source=row_source, selection_row=row.reshape(g * t, s).astype(jnp.int32),
                       row_selection=row_selection, starts=starts.astype(jnp.int32),
                       sizes=sizes.astype(jnp.int32), unit=unit, window=NUM_SIZES * unit)


# --- Row moves whose transposes are gathers too --------------------------------------------


@jax.custom_vjp
def gather_rows(src: jax.Array, index: jax.Array, inverse: jax.Array) -> jax.Array:
  """out[m] = src[index[m]] (zeros where index is out of range).

  src: <dtype>[N, D]; index: <int32>[M]; inverse: <int32>[N, R] lists, for each source row,
  every m with index[m] == n (out-of-range entries pad it). Backward: d_src[n] = sum over r of
  d_out[inverse[n, r]] -- a gather, not a scatter-add.
  """
  return jnp.take(src, index, axis=0, mode='fill', fill_value=0)


def _gather_rows_fwd(src, index, inverse):
  return gather_rows(src, index, inverse), (index, inverse)


def _gather_rows_bwd(residuals, d_out):
  index, inverse = residuals
  d_src = jnp.take(d_out, inverse, axis=0, mode='fill', fill_value=0)    # [N, R, D]
  return jnp.sum(d_src, axis=1), None, None


gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


# --- The per-expert loop ---------------------------------------------------------------------


def _hidden_fn(activations: Sequence[str]) -> Callable[..., jax.Array]:
  """(pre_0, pre_1, ..., keep_scale | None) -> prod_i act_i(pre_i) * keep_scale."""
  def hidden(*pre_and_scale):
    *pre, scale = pre_and_scale
    h = None
    for act, p in zip(activations, pre):
      a = ACTIVATIONS[act](p)
      h = a if h is None else h * a
    return h if scale is None else h * scale
  return hidden


def _pad_to(a: jax.Array, rows: int) -> jax.Array:
  return jnp.pad(a, ((0, rows - a.shape[0]), (0, 0)))


def _forward_loop(activations, unit, x_rows, w_in, w_out, starts, sizes, scale):
  """Returns (y_rows <[P, D]>, pre-activations tuple of <[P, F]>) for the segments."""
  hidden = _hidden_fn(activations)
  window = NUM_SIZES * unit
  p, f = x_rows.shape[0], w_out.shape[1]

  def body(e, carry):
    y, pre_all = carry
    start, w_e, wo_e = starts[e], [w[e] for w in w_in], w_out[e]

    def branch(n):
      def run():
        if n == 0:
          return jnp.zeros((window, y.shape[1]), y.dtype), tuple(
              jnp.zeros((window, f), y.dtype) for _ in w_in)
        rows = jax.lax.dynamic_slice_in_dim(x_rows, start, n * unit)
        pre = tuple(rows @ w for w in w_e)
        s = None if scale is None else jax.lax.dynamic_slice_in_dim(scale, start, n * unit)
        out = hidden(*pre, s) @ wo_e
        return _pad_to(out, window), tuple(_pad_to(a, window) for a in pre)
      return run

    out, pre = jax.lax.switch(sizes[e], [branch(n) for n in range(NUM_SIZES + 1)])
    y = jax.lax.dynamic_update_slice_in_dim(y, out, start, 0)
    pre_all = tuple(jax.lax.dynamic_update_slice_in_dim(a, b, start, 0)
                    for a, b in zip(pre_all, pre))
    return y, pre_all

  init = (jnp.zeros_like(x_rows), tuple(jnp.zeros((p, f), x_rows.dtype) for _ in w_in))
  return jax.lax.fori_loop(0, w_out.shape[0], body, init)


def _backward_loop(activations, unit, x_rows, w_in, w_out, starts, sizes, scale, pre_all, dy):
  """Per-expert VJP: returns (d_x_rows <[P, D]>, d_w_in tuple <[E, D, F]>, d_w_out <[E, F, D]>)."""
  hidden = _hidden_fn(activations)
  window = NUM_SIZES * unit

  def body(carry, weights):
    dx, e = carry
    w_e, wo_e = weights
    start = starts[e]

    def branch(n):
      def run():
        if n == 0:
          return (jnp.zeros((window, dx.shape[1]), dx.dtype),
                  tuple(jnp.zeros_like(w) for w in w_e), jnp.zeros_like(wo_e))
        take = lambda a: jax.lax.dynamic_slice_in_dim(a, start, n * unit)
        rows, g = take(x_rows), take(dy)
        pre = tuple(take(a) for a in pre_all)
        s = None if scale is None else take(scale)
        h, hidden_vjp = jax.vjp(lambda *p: hidden(*p, s), *pre)
        d_pre = hidden_vjp(jax.lax.dot_general(g, wo_e, _NT))
        d_rows = sum(jax.lax.dot_general(d, w, _NT) for d, w in zip(d_pre, w_e))
        d_w = tuple(jax.lax.dot_general(rows, d, _TN) for d in d_pre)
        return _pad_to(d_rows, window), d_w, jax.lax.dot_general(h, g, _TN)
      return run

    d_rows, d_w, d_wo = jax.lax.switch(sizes[e], [branch(n) for n in range(NUM_SIZES + 1)])
    dx = jax.lax.dynamic_update_slice_in_dim(dx, d_rows, start, 0)
    return (dx, e + 1), (d_w, d_wo)

  (dx, _), (d_w_in, d_w_out) = jax.lax.scan(body, (jnp.zeros_like(x_rows), 0),
                                            (tuple(w_in), w_out))
  return dx, d_w_in, d_w_out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def segmented_ffn(activations: tuple, unit: int, x_rows: jax.Array, w_in: tuple,
                  w_out: jax.Array, starts: jax.Array, sizes: jax.Array,
                  scale: Optional[jax.Array]) -> jax.Array:
  """Experts on their segments: x_rows <[P, D]>, w_in tuple of <[E, D, F]>, w_out <[E, F, D]>,
  starts/sizes <int32>[E] (see SegmentLayout), scale <[P, F]> | None (expert-dropout keep
  mask / (1 - rate)) -> y_rows <[P, D]> (rows outside every segment are zeros)."""
  return _forward_loop(activations, unit, x_rows, w_in, w_out, starts, sizes, scale)[0]


def _segmented_ffn_fwd(activations, unit, x_rows, w_in, w_out, starts, sizes, scale):
  y, pre = _forward_loop(activations, unit, x_rows, w_in, w_out, starts, sizes, scale)
  return y, (x_rows, w_in, w_out, starts, sizes, scale, pre)


def _segmented_ffn_bwd(activations, unit, residuals, dy):
  x_rows, w_in, w_out, starts, sizes, scale, pre = residuals
  dx, d_w_in, d_w_out = _backward_loop(activations, unit, x_rows, w_in, w_out, starts, sizes,
                                       scale, pre, dy)
  return dx, d_w_in, d_w_out, None, None, None


segmented_ffn.defvjp(_segmented_ffn_fwd, _segmented_ffn_bwd)


# --- The dispatcher ---------------------------------------------------------------------------


def _keep_scale(ffn: ExpertFFN, shape: tuple, dtype) -> Optional[jax.Array]:
  """Expert-dropout multiplier <dtype>[P, F] (keep / (1 - rate)), or None without dropout."""
  if ffn.dropout_rng is None or ffn.dropout_rate <= 0.0:
    return None
  keep = jax.random.bernoulli(ffn.dropout_rng, 1.0 - ffn.dropout_rate, shape)
  return jnp.where(keep, 1.0 / (1.0 - ffn.dropout_rate), 0.0).astype(dtype)


def _expert_loop(ffn: ExpertFFN, layout: SegmentLayout, x_rows: jax.Array) -> jax.Array:
  """The experts on their segments with the per-expert loop: <[P, D]> -> <[P, D]>."""
  weights = [jnp.asarray(ffn.weights[n], ffn.dtype) for n in input_kernel_names(ffn.activations)]
  w_out = jnp.asarray(ffn.weights['wo'], ffn.dtype)
  scale = _keep_scale(ffn, (x_rows.shape[0], w_out.shape[1]), ffn.dtype)
  return segmented_ffn(tuple(ffn.activations), layout.unit, x_rows, tuple(weights), w_out,
                       layout.starts, layout.sizes, scale)


def use_grouped_matmul(implementation: str, x: jax.Array) -> bool:
  """Whether the experts run as one grouped matmul per weight (`ffn.ragged` on back-to-back
  segments) rather than the per-expert loop, for MoeConfig.grouped_matmul `implementation`."""
  if implementation == 'expert_loop':
    return False
  if jax.default_backend() != 'cpu':
    return True
  if implementation == 'cpu_ffi':
    return grouped_matmul_lib.cpu_ffi_ready(x)   # falls back to the loop where it cannot run
  return implementation in ('ragged_dot', 'mosaic_gpu')   # as named ('mosaic_gpu' fails on CPU)


def segmented_dispatch(routing: Routing, x: jax.Array, ffn: ExpertFFN) -> jax.Array:
  """x: <dtype>[G, T, D] -> <dtype>[G, T, D] (the dispatcher interface, see dispatch.py)."""
  g, t, d = x.shape
  s = routing.expert_index.shape[-1]
  grouped = use_grouped_matmul(ffn.grouped_matmul, x)
  layout = segment_layout(routing, unit=1 if grouped else None)
  tokens = x.reshape(g * t, d).astype(ffn.dtype)
  combine = routing.combine_weight.reshape(g * t, s).astype(ffn.dtype)
  if s <= _GATHER_MAX_SELECTIONS:
    x_rows = gather_rows(tokens, layout.row_source, layout.selection_row)
  else:
    x_rows = jnp.take(tokens, layout.row_source, axis=0, mode='fill', fill_value=0)
  if grouped:
    y_rows = ffn.ragged(x_rows, layout.sizes)     # unit 1: sizes are row counts
  else:
    y_rows = _expert_loop(ffn, layout, x_rows)
  if s <= _GATHER_MAX_SELECTIONS:
    picked = gather_rows(y_rows, layout.selection_row.reshape(-1), layout.row_selection[:, None])
    y = jnp.einsum('GTSD,GTS->GTD', picked.reshape(g, t, s, d), combine.reshape(g, t, s))
  else:
    # Many selections per token (experts-choose): sum rows into tokens with a scatter-add.
    row_weight = jnp.take(combine.reshape(-1), layout.row_selection, mode='fill', fill_value=0)
    y = jnp.zeros((g * t + 1, d), y_rows.dtype).at[layout.row_source].add(
        y_rows * row_weight[:, None])[:g * t]      # unused rows land in the extra last row
  return y.reshape(g, t, d).astype(x.dtype)

