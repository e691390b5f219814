"""MoeLayer end to end: dense equivalence, params, training-only noise, padding, metrics."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan.config import MoeConfig
from moe_flan.moe import (MoeLayer, check_config, collect_moe_metrics, dispatcher_names,
                          register_dispatcher, register_router)
from moe_flan.moe import dispatch as dispatch_lib
from moe_flan.moe.dispatch_scatter import scatter_dispatch

D, F = 8, 16


def _cfg(**kw):
  base = dict(num_experts=4, dispatch='scatter', group_size=16, expert_mlp_dim=F,
              min_capacity=1, train_capacity_factor=2.0, eval_capacity_factor=2.0)
  base.update(kw)
  return MoeConfig(**base)


@functools.lru_cache(maxsize=None)
def _init(cfg, k=1, router_type='tokens_choose', shape=(2, 8)):
  layer = MoeLayer(cfg, D, router_type, k)
  x = jax.random.normal(jax.random.key(0), shape + (D,))
  # Keep params only: init also sows 'moe_metrics', which apply would then append to.
  variables = {'params': jax.jit(layer.init)(jax.random.key(1), x)['params']}
  return layer, x, variables


@functools.lru_cache(maxsize=None)
def _jitted_apply(layer, train):
  def apply(variables, x, mask, rng):
    rngs = {'dropout': rng} if train else None
    return layer.apply(variables, x, mask, enable_dropout=train, rngs=rngs)
  return jax.jit(apply)


def _apply(layer, variables, x, mask=None, seed=None):
  """Jitted layer.apply; training mode (enable_dropout) iff a dropout seed is given."""
  train = seed is not None
  return _jitted_apply(layer, train)(variables, x, mask, jax.random.key(seed if train else 0))


def _gelu_np(v):
  return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))


@pytest.mark.parametrize('dispatch', ['einsum', 'scatter', 'dropless'])
@pytest.mark.parametrize('activations', [('gelu', 'linear'), ('relu',)])
def test_one_expert_with_ample_capacity_is_a_dense_mlp(dispatch, activations):
  cfg = _cfg(num_experts=1, dispatch=dispatch, expert_activations=activations)
  layer, x, variables = _init(cfg)
  y = jax.jit(layer.apply)(variables, x)
  p = {k: np.asarray(v.value[0], np.float64) for k, v in variables['params']['experts'].items()}
  xn = np.asarray(x, np.float64)
  if activations == ('relu',):
    hidden = np.maximum(xn @ p['wi'], 0)
  else:
    hidden = _gelu_np(xn @ p['wi_0']) * (xn @ p['wi_1'])
  np.testing.assert_allclose(y, hidden @ p['wo'], rtol=1e-5, atol=1e-5)


def test_param_names_shapes_and_logical_axes():
  cfg = _cfg(num_experts=4, expert_activations=('gelu', 'linear'))
  layer, x, _ = _init(cfg)
  params = jax.eval_shape(layer.init, jax.random.key(0), x)['params']
  got = jax.tree.map(lambda b: (b.value.shape, b.value.dtype, b.names), params,
                     is_leaf=lambda b: hasattr(b, 'names'))
  assert got == {
      'router': {'kernel': ((D, 4), jnp.float32, ('embed', 'unmodeled'))},
      'experts': {'wi_0': ((4, D, F), jnp.float32, ('expert', 'embed', 'mlp')),
                  'wi_1': ((4, D, F), jnp.float32, ('expert', 'embed', 'mlp')),
                  'wo': ((4, F, D), jnp.float32, ('expert', 'mlp', 'embed'))}}
  relu = MoeLayer(_cfg(expert_activations=('relu',)), D, 'tokens_choose', 1)
  relu_params = jax.eval_shape(relu.init, jax.random.key(0), x)['params']['experts']
  assert sorted(relu_params) == ['wi', 'wo']


def test_jitter_changes_nothing_in_eval_and_applies_in_training():
  plain, x, variables = _init(_cfg())
  jittery = MoeLayer(_cfg(jitter_noise=0.5), D, 'tokens_choose', 1)
  want = _apply(plain, variables, x)
  # Eval: no rng needed and identical output.
  np.testing.assert_array_equal(_apply(jittery, variables, x), want)
  # Training without jitter (and no expert dropout) equals eval here (same capacity factor).
  np.testing.assert_array_equal(_apply(plain, variables, x, seed=0), want)
  train = [_apply(jittery, variables, x, seed=s) for s in (0, 1)]
  assert not np.allclose(train[0], want)
  assert not np.allclose(train[0], train[1])


def test_expert_dropout_only_in_training():
  cfg = _cfg(expert_dropout_rate=0.5)
  layer, x, variables = _init(cfg)
  plain = MoeLayer(_cfg(), D, 'tokens_choose', 1)
  want = _apply(plain, variables, x)
  np.testing.assert_array_equal(_apply(layer, variables, x), want)
  train = _apply(layer, variables, x, seed=0)
  assert not np.allclose(train, want)


def test_padding_tokens_are_not_routed_and_do_not_affect_real_tokens():
  cfg = _cfg(train_capacity_factor=0.5, eval_capacity_factor=0.5)   # tight: capacity 2
  layer, x, variables = _init(cfg)
  mask = np.ones((2, 8), bool)
  mask[:, :3] = False                   # padding first: it would win slots in position order
  apply = jax.jit(functools.partial(layer.apply, mutable=['moe_metrics']))
  y, state = apply(variables, x, jnp.asarray(mask))
  y2, _ = apply(variables, x.at[:, :3].set(7.0), jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(y)[~mask], 0)
  np.testing.assert_allclose(np.asarray(y)[mask], np.asarray(y2)[mask], rtol=1e-6)
  # Real tokens alone (a batch without the padded positions) route identically.
  real_only, _ = apply(variables, x[:, 3:].reshape(1, 10, D), None)
  np.testing.assert_allclose(np.asarray(y)[mask], np.asarray(real_only).reshape(10, D),
                             rtol=1e-5, atol=1e-6)
  metrics = collect_moe_metrics(state['moe_metrics'])
  assert metrics['expert_load'].shape == (4,)
  np.testing.assert_allclose(metrics['expert_load'].sum(), 1.0, rtol=1e-6)
  assert 0 < float(metrics['fraction_dropped']) < 1
  assert 0.25 <= float(metrics['top1_prob']) <= 1


def test_sown_metrics_are_collected_over_layers():
  cfg = _cfg()
  layer, x, variables = _init(cfg)
  _, state = layer.apply(variables, x, mutable=['moe_metrics'])
  one = state['moe_metrics']
  assert all(len(v) == 1 for v in one.values())     # one sow per call
  assert sorted(one) == ['expert_load', 'fraction_dropped', 'load_balancing_loss',
                         'router_z_loss', 'top1_prob']
  tree = {'layers_1': {'moe': one}, 'layers_3': {'moe': one}}
  metrics = collect_moe_metrics(tree)
  np.testing.assert_allclose(metrics['load_balancing_loss'], one['load_balancing_loss'][0])
  assert metrics['expert_load_per_layer'].shape == (2, 4)


def test_bfloat16_activations():
  cfg = _cfg()
  layer, x, variables = _init(cfg)
  y32 = _apply(layer, variables, x)
  y16 = _apply(MoeLayer(cfg, D, 'tokens_choose', 1, dtype=jnp.bfloat16), variables, x)
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32, rtol=0.1, atol=0.05)


def test_group_size_not_dividing_the_batch_is_a_clear_error_in_training():
  layer = MoeLayer(_cfg(group_size=8), D, 'tokens_choose', 1)
  with pytest.raises(ValueError, match=r'group_size=8.*\b12\b'):
    jax.eval_shape(functools.partial(layer.init, enable_dropout=True),
                   {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
                   jnp.ones((3, 4, D)))


def _dropping(**kw):
  """Capacity 2 whatever the group size (vanishing factor, min_capacity): tokens get dropped."""
  return _cfg(dispatch='einsum', train_capacity_factor=1e-6, eval_capacity_factor=1e-6,
              min_capacity=2, **kw)


def _dropped(layer, variables, x, mask=None):
  y, state = jax.jit(functools.partial(layer.apply, mutable=['moe_metrics']))(variables, x, mask)
  return np.asarray(y), float(state['moe_metrics']['fraction_dropped'][0])


@pytest.mark.parametrize('router_type', ['tokens_choose', 'experts_choose'])
def test_eval_completes_the_last_group_with_padding_that_takes_no_slot(router_type):
  """12 tokens in groups of 8 at eval: groups [tokens 0-7] and [tokens 8-11 + 4 padding], each
  with 2 slots per expert; same numbers as routing those two groups in separate calls. (Experts
  choosing tokens would pick the zero padding, whose router probabilities are all 1/E, over
  real tokens with lower ones, were it routable.)"""
  cfg = _dropping(group_size=8)
  layer, _, variables = _init(cfg, router_type=router_type, shape=(2, 4))
  x = jax.random.normal(jax.random.key(5), (3, 4, D))
  mask = jnp.ones((3, 4), bool).at[2, 3].set(False)
  y, dropped = _dropped(layer, variables, x, mask)
  first, dropped_first = _dropped(layer, variables, x[:2], mask[:2])
  last, _ = _dropped(layer, variables, x[2:], mask[2:])
  assert dropped > 0 and dropped_first > 0            # capacity binds: grouping matters
  np.testing.assert_allclose(y, np.concatenate([first, last]), rtol=1e-6, atol=1e-6)


def test_sequence_groups_route_each_sequence_alone():
  """routing_groups='sequence': G = B groups of one sequence, in training and at eval."""
  cfg = _dropping(routing_groups='sequence', group_size=3)   # group_size is not used
  layer, _, variables = _init(cfg, shape=(2, 4))
  x = jax.random.normal(jax.random.key(6), (3, 8, D))
  y, dropped = _dropped(layer, variables, x)
  assert dropped > 0
  for b in range(3):
    np.testing.assert_allclose(y[b], _dropped(layer, variables, x[b:b + 1])[0][0], rtol=1e-6,
                               atol=1e-6)
  trained = _apply(layer, variables, x, seed=0)       # no group-size error in training either
  np.testing.assert_allclose(trained, y, rtol=1e-6, atol=1e-6)   # no jitter, no dropout


def test_mismatched_padding_mask_is_a_clear_error():
  layer = MoeLayer(_cfg(), D, 'tokens_choose', 1)
  with pytest.raises(ValueError, match=r'padding_mask shape \(2, 4\)'):
    jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((2, 8, D)), jnp.ones((2, 4)))


def test_registered_dispatcher_is_used():
  calls = []

  def counting(routing, x, ffn):
    calls.append(routing.capacity)
    return scatter_dispatch(routing, x, ffn)

  register_dispatcher('counting_scatter', counting)
  try:
    assert 'counting_scatter' in dispatcher_names()
    cfg = _cfg(dispatch='counting_scatter')
    layer, x, variables = _init(_cfg())
    y = MoeLayer(cfg, D, 'tokens_choose', 1).apply(variables, x)
    np.testing.assert_allclose(y, layer.apply(variables, x), rtol=1e-6)
    assert calls == [8]                  # ceil(2.0 * 1 * 16 / 4)
  finally:
    dispatch_lib.unregister_dispatcher('counting_scatter')
  assert 'counting_scatter' not in dispatcher_names()


def test_built_in_names_cannot_be_replaced_and_unknown_names_are_clear_errors():
  with pytest.raises(ValueError, match="'scatter' is a built-in dispatcher"):
    register_dispatcher('scatter', scatter_dispatch)
  with pytest.raises(ValueError, match="'tokens_choose' is a built-in router"):
    register_router('tokens_choose', lambda *a, **k: None)
  _, x, variables = _init(_cfg())
  with pytest.raises(ValueError, match=r"MoeConfig.dispatch='scater': unknown dispatcher; "
                                       r"choose one of \('einsum', 'scatter'"):
    MoeLayer(_cfg(dispatch='scater'), D, 'tokens_choose', 1).apply(variables, x)
  with pytest.raises(ValueError, match="MoeConfig.decoder_router_type='top2': unknown router"):
    check_config(_cfg(decoder_router_type='top2'))
  with pytest.raises(ValueError, match='eval_capacity_factor=0.0: must be > 0'):
    check_config(_cfg(eval_capacity_factor=0.0))
  check_config(_cfg(dispatch='dropless', eval_capacity_factor=0.0))  # no capacity there
