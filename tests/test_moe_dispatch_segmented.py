"""The 'segmented' dispatcher matches the for-loop-over-experts reference, outputs and gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moe_reference as ref
from moe_flan.kernels import grouped_matmul as grouped_matmul_lib
from moe_flan.moe import routing as routing_lib
from moe_flan.moe import dispatch_segmented as seg
from moe_flan.moe.dispatch import DISPATCHERS
from moe_flan.moe.experts import ExpertFFN

D, F, E = 8, 16, 4
ROUTINGS = [('tokens_choose', 1), ('tokens_choose', 2), ('experts_choose', 1)]


def _weights(key, acts):
  names = ['wi'] if len(acts) == 1 else [f'wi_{i}' for i in range(len(acts))]
  keys = jax.random.split(key, len(names) + 1)
  w = {n: jax.random.normal(k, (E, D, F)) / 3 for n, k in zip(names, keys)}
  w['wo'] = jax.random.normal(keys[-1], (E, F, D)) / 4
  return w


def _layer_like(dispatch, route, real, k, capacity, acts, grouped_matmul):
  """Router kernel -> probabilities -> routing -> dispatch, as MoeLayer does (no flax)."""
  def run(x, kernel, w):
    logits = jnp.einsum('GTD,DE->GTE', x, kernel)
    routing = route(logits, real, num_selected_experts=k, capacity=capacity)
    return dispatch(routing, x, ExpertFFN(w, acts, grouped_matmul=grouped_matmul))
  return run


@pytest.fixture(params=['cpu_ffi', 'auto'], ids=['grouped', 'loop'])
def expert_path(request):
  """The MoeConfig.grouped_matmul of both ways the dispatcher evaluates the experts (module
  doc): on CPU the default is the per-expert loop, the opt-in C++ kernels the grouped path."""
  x = jnp.zeros((4, D))
  if request.param == 'cpu_ffi':
    if jax.default_backend() == 'cpu':
      assert grouped_matmul_lib.prepare('cpu_ffi'), 'the CPU grouped-matmul kernels must build here'
    assert seg.use_grouped_matmul('cpu_ffi', x)
  else:
    assert seg.use_grouped_matmul('auto', x) == (jax.default_backend() != 'cpu')
    assert not seg.use_grouped_matmul('expert_loop', x)
  return request.param


# Each case compiles the per-expert loop (fwd + bwd), so the grid is a covering subset.
CASES = [('tokens_choose', 1, 1, ('relu',)), ('tokens_choose', 2, 3, ('gelu', 'linear')),
         ('tokens_choose', 2, 1, ('relu',)), ('experts_choose', 1, 3, ('gelu', 'linear')),
         ('experts_choose', 1, 16, ('relu',))]


@pytest.mark.parametrize('router_type,k,capacity,acts', CASES,
                         ids=['top1-overflow-relu', 'top2-tight-gated', 'top2-overflow-relu',
                              'ec-tight-gated', 'ec-ample-relu'])
def test_matches_reference(router_type, k, capacity, acts, expert_path):
  keys = jax.random.split(jax.random.key(7), 4)
  g, t = 2, 8
  x = jax.random.normal(keys[0], (g, t, D))
  kernel = 2.0 * jax.random.normal(keys[1], (D, E))   # wide router: decisions never tie
  real = jnp.ones((g, t), bool).at[0, -1].set(False).at[1, 2].set(False)
  w = _weights(keys[2], acts)
  cot = jax.random.normal(keys[3], (g, t, D))
  route = routing_lib.ROUTERS[router_type]
  cap = min(capacity, t)
  fast = _layer_like(DISPATCHERS['segmented'], route, real, k, cap, acts, expert_path)
  params = {'router': {'kernel': kernel}, 'experts': w}
  keep = jnp.asarray(ref.reference_keep(params, x, real, router_type, k, cap))

  def slow(x, kernel, w):
    return ref.reference_forward({'router': {'kernel': kernel}, 'experts': w}, x, keep, acts)

  got, got_vjp = jax.vjp(jax.jit(fast), x, kernel, w)
  want, want_vjp = jax.vjp(slow, x, kernel, w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for path, a, b in zip(['x', 'router', 'experts'], got_vjp(cot), want_vjp(cot)):
    for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-5, err_msg=path)
  if capacity == 1 and router_type == 'tokens_choose':
    assert not np.asarray(keep).sum(-1).all(), 'overflow case must drop selections'


@pytest.mark.parametrize('router_type,k', ROUTINGS[1:], ids=['top2', 'experts_choose'])
def test_same_numbers_as_scatter_on_one_routing(router_type, k, expert_path):
  """Given one routing, 'segmented' and 'scatter' agree (outputs and gradients w.r.t. x,
  logits and expert weights), including segments of many units and empty experts."""
  keys = jax.random.split(jax.random.key(3), 4)
  g, t = 3, 32
  x = jax.random.normal(keys[0], (g, t, D))
  logits = 3.0 * jax.random.normal(keys[1], (g, t, E)) + jnp.array([2.0, 0.0, 0.0, -50.0])
  real = jnp.ones((g, t), bool).at[1, :5].set(False)
  w = _weights(keys[2], ('relu',))
  route = routing_lib.ROUTERS[router_type]

  def loss(fn, xs, lg, ws):
    routing = route(lg, real, num_selected_experts=k, capacity=12)
    return jnp.sum(jnp.sin(fn(routing, xs, ExpertFFN(ws, ('relu',), grouped_matmul=expert_path))))

  for fn in (DISPATCHERS['segmented'], DISPATCHERS['scatter']):
    jax.jit(functools.partial(loss, fn))(x, logits, w)
  want = jax.jit(jax.value_and_grad(functools.partial(loss, DISPATCHERS['scatter']), (0, 1, 2)))
  got = jax.jit(jax.value_and_grad(functools.partial(loss, DISPATCHERS['segmented']), (0, 1, 2)))
  (lw, gw), (lg_, gg) = want(x, logits, w), got(x, logits, w)
  np.testing.assert_allclose(lg_, lw, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(gg), jax.tree.leaves(gw)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  if router_type == 'tokens_choose':   # no token picks expert 3: its gradient is exactly zero
    assert float(jnp.abs(gg[2]['wo'][3]).max()) == 0.0


def test_layout_segments_are_exact_and_aligned():
  """Each expert's rows are contiguous, in group-then-slot order, and padded to `unit`."""
  expert_index = jnp.array([[[0], [1], [0], [2]], [[1], [1], [0], [0]]], jnp.int32)   # G=2,T=4
  slot = jnp.array([[[0], [0], [1], [0]], [[0], [1], [0], [1]]], jnp.int32)
  routed = jnp.ones((2, 4, 1), bool).at[1, 3, 0].set(False)    # group 1's 2nd token of e0 dropped
  routing = routing_lib.Routing(expert_index, slot, routed.astype(jnp.float32), routed,
                                jnp.float32(0), num_experts=3, capacity=2)
  layout = seg.segment_layout(routing)
  assert layout.unit == 1                    # ceil(G * C / NUM_SIZES) = ceil(4 / 16)
  # Expert 0: g0 slots 0,1 then g1 slot 0 -> 3 rows; expert 1: g0 slot 0, g1 slots 0,1 -> 3;
  # expert 2: g0 slot 0 -> 1 row.
  np.testing.assert_array_equal(layout.sizes, [3, 3, 1])
  np.testing.assert_array_equal(layout.starts, [0, 3, 6])
  np.testing.assert_array_equal(layout.row_source[:7], [0, 2, 6, 1, 4, 5, 3])
  p = layout.row_source.shape[0]
  np.testing.assert_array_equal(layout.selection_row[:, 0], [0, 3, 1, 6, 4, 5, 2, p])
  # Rounded to units of 2 rows, segments start on unit boundaries and sizes count units.
  wide = seg.segment_layout(routing, unit=2)
  np.testing.assert_array_equal(wide.sizes, [2, 2, 1])
  np.testing.assert_array_equal(wide.starts, [0, 4, 8])
  np.testing.assert_array_equal(wide.row_source[:9], [0, 2, 6, 2 * 4, 1, 4, 5, 2 * 4, 3])
