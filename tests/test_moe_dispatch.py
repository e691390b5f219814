"""Every dispatch path matches the for-loop-over-experts reference, outputs and gradients."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moe_reference as ref
from moe_flan.config import MoeConfig
from moe_flan.moe import MoeLayer, routing as routing_lib
from moe_flan.moe.dispatch import DISPATCHERS
from moe_flan.moe.experts import ExpertFFN

B, L, D, F, E = 2, 8, 8, 16, 4
GROUP = 8   # B * L = 16 tokens -> G = 2 groups of T = 8
ACTS = ('gelu', 'linear')
ROUTINGS = [('tokens_choose', 1), ('tokens_choose', 2), ('experts_choose', 1)]


def _inputs(seed=0):
  kx, kr, kc = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (B, L, D))
  mask = np.ones((B, L), bool)
  mask[1, -2:] = False                       # two padding tokens in the second sequence
  cotangent = jax.random.normal(kc, (B, L, D))
  return x, jnp.asarray(mask), cotangent, kr


def _params(router_key):
  """Hand-made params under the contract's names (apply fails if the layer's names differ)."""
  k0, k1, k2 = jax.random.split(jax.random.key(1), 3)
  return {
      # A wide router spreads probabilities apart, so float32 vs float64 never flips a decision.
      'router': {'kernel': jax.random.normal(router_key, (D, E))},
      'experts': {'wi_0': jax.random.normal(k0, (E, D, F)) / 3,
                  'wi_1': jax.random.normal(k1, (E, D, F)) / 3,
                  'wo': jax.random.normal(k2, (E, F, D)) / 4},
  }


def _layer_capacity(cfg, router_type, k, t):
  if cfg.dispatch == 'dropless' and router_type == 'tokens_choose':
    return t
  return min(max(math.ceil(cfg.eval_capacity_factor * k * t / E), cfg.min_capacity), t)


def _reference_loss(params, x, keep, cotangent):
  y = ref.reference_forward(params, x, keep, ACTS)
  return jnp.sum(y * cotangent), y


# Module level, so all cases (same shapes) share one compilation.
_reference_value_and_grad = jax.jit(
    jax.value_and_grad(_reference_loss, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize('overflow', [False, True], ids=['ample', 'overflow'])
@pytest.mark.parametrize('router_type,k', ROUTINGS, ids=['top1', 'top2', 'experts_choose'])
@pytest.mark.parametrize('dispatch', ['einsum', 'scatter', 'dropless'])
def test_layer_matches_reference(dispatch, router_type, k, overflow):
  _check_layer_against_reference(dispatch, router_type, k, overflow)


def test_batch_prioritized_layer_matches_reference():
  _check_layer_against_reference('scatter', 'tokens_choose', 2, True, batch_prioritized=True)


def _check_layer_against_reference(dispatch, router_type, k, overflow, batch_prioritized=False):
  cfg = MoeConfig(num_experts=E, dispatch=dispatch, group_size=GROUP, expert_mlp_dim=F,
                  min_capacity=1, eval_capacity_factor=0.5 if overflow else 4.0,
                  expert_activations=ACTS, batch_prioritized_routing=batch_prioritized)
  layer = MoeLayer(cfg, D, router_type, k)
  x, mask, cot, rkey = _inputs()
  params = _params(rkey)

  @jax.jit
  def fast(p, xs):
    y, state = layer.apply({'params': p}, xs, mask, mutable=['moe_metrics'])
    return jnp.sum(y * cot), (y, state['moe_metrics'])

  (_, (y, metrics)), (g_params, g_x) = jax.value_and_grad(fast, argnums=(0, 1), has_aux=True)(
      params, x)

  g = B * L // GROUP
  xg, realg, cotg = x.reshape(g, GROUP, D), mask.reshape(g, GROUP), cot.reshape(g, GROUP, D)
  capacity = _layer_capacity(cfg, router_type, k, GROUP)
  keep = ref.reference_keep(params, xg, realg, router_type, k, capacity, batch_prioritized)
  if batch_prioritized:   # the case must be one where priority changes who keeps a slot
    assert (keep != ref.reference_keep(params, xg, realg, router_type, k, capacity)).any()
  assert not keep[~np.asarray(realg)].any()
  dropped = float(metrics['fraction_dropped'][0])
  if overflow and not (dispatch == 'dropless' and router_type == 'tokens_choose'):
    assert dropped > 0, 'the overflow case must drop tokens'
  else:
    assert router_type == 'experts_choose' or dropped == 0
  real_np = np.asarray(realg)
  if router_type == 'experts_choose':
    want_dropped = np.mean(~keep[real_np].any(-1))
  else:
    want_dropped = 1 - keep.sum() / (real_np.sum() * k)
  np.testing.assert_allclose(dropped, want_dropped, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(metrics['expert_load'][0], keep.sum((0, 1)) / keep.sum(), rtol=1e-6)
  probs = ref.softmax_np(np.asarray(xg, np.float64) @ np.asarray(params['router']['kernel']))
  np.testing.assert_allclose(metrics['top1_prob'][0], probs.max(-1)[real_np].mean(), rtol=1e-5)

  (_, want_y), (want_gp, want_gx) = _reference_value_and_grad(params, xg, jnp.asarray(keep),
                                                                cotg)
  np.testing.assert_allclose(y.reshape(g, GROUP, D), want_y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_x.reshape(g, GROUP, D), want_gx, rtol=1e-4, atol=1e-5)
  for path, want in jax.tree_util.tree_leaves_with_path(want_gp):
    got = functools.reduce(lambda t, key: t[key.key], path, g_params)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=str(path))
  assert np.abs(g_params['router']['kernel']).max() > 0   # the router does get trained


def _loop_over_experts(routing, x, ffn_weights):
  """Output for a given Routing, expert by expert (no dispatch machinery)."""
  out = jnp.zeros_like(x)
  for e in range(routing.num_experts):
    w = jnp.sum(jnp.where(routing.expert_index == e, routing.combine_weight, 0.0), axis=-1)
    out = out + w[..., None] * ref.expert_ffn(ffn_weights, e, x, ACTS)
  return out


@pytest.mark.parametrize('router_type,k', ROUTINGS, ids=['top1', 'top2', 'experts_choose'])
def test_dispatchers_agree_on_one_overflowing_routing(router_type, k):
  """Same routing (capacity 1, so tokens are dropped) -> same outputs and gradients everywhere,
  including the dropless path, which processes exactly the routed selections it is given."""
  keys = jax.random.split(jax.random.key(3), 5)
  g, t = 2, 8
  x = jax.random.normal(keys[0], (g, t, D))
  logits = 2.0 * jax.random.normal(keys[1], (g, t, E))
  real = jnp.ones((g, t), bool).at[0, -1].set(False)
  weights = {'wi_0': jax.random.normal(keys[2], (E, D, F)) / 3,
             'wi_1': jax.random.normal(keys[3], (E, D, F)) / 3,
             'wo': jax.random.normal(keys[4], (E, F, D)) / 4}
  route = routing_lib.ROUTERS[router_type]

  def loss(fn, xs, lg, w):
    routing = route(lg, real, num_selected_experts=k, capacity=1)
    y = fn(routing, xs, ExpertFFN(w, ACTS)) if fn else _loop_over_experts(routing, xs, w)
    return jnp.sum(y ** 2), y

  def all_paths(xs, lg, w):
    """(output, grads) of the loop and of each dispatcher; one compilation for all four."""
    fns = [None] + [DISPATCHERS[n] for n in names]
    return [jax.value_and_grad(functools.partial(loss, fn), argnums=(0, 1, 2), has_aux=True)(
        xs, lg, w) for fn in fns]

  names = ('einsum', 'scatter', 'dropless')
  assert float(route(logits, real, num_selected_experts=k, capacity=1).fraction_dropped) > 0
  ((_, want), want_grads), *results = jax.jit(all_paths)(x, logits, weights)
  for name, ((_, got), grads) in zip(names, results):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
    for got_g, want_g in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(got_g, want_g, rtol=1e-4, atol=1e-5, err_msg=name)
