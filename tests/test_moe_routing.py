"""Routing properties with hand-built logits, capacity and grouping rules, and router losses."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan.config import MoeConfig
from moe_flan.moe import capacity as capacity_lib
from moe_flan.moe import collect_moe_metrics, losses, routing as routing_lib

BIG = 10.0


def _logits_for(choices, num_experts, confidence=None):
  """<float32>[1, T, E] logits whose ranking per token is `choices[t]` (best first)."""
  t = len(choices)
  logits = np.zeros((1, t, num_experts), np.float32)
  for i, ranked in enumerate(choices):
    scale = BIG if confidence is None else confidence[i]
    for rank, e in enumerate(ranked):
      logits[0, i, e] = scale * (len(ranked) - rank)
  return jnp.asarray(logits)


def _route(name, logits, real=None, **kw):
  if real is None:
    real = jnp.ones(logits.shape[:2], bool)
  return routing_lib.ROUTERS[name](logits, jnp.asarray(real), **kw)


def test_top1_drops_overflow_in_position_order():
  logits = _logits_for([[0], [0], [0], [1], [0], [1]], 2)
  r = _route('tokens_choose', logits, num_selected_experts=1, capacity=2)
  np.testing.assert_array_equal(r.routed[0, :, 0], [True, True, False, True, False, True])
  np.testing.assert_array_equal(r.slot_index[0, [0, 1, 3, 5], 0], [0, 1, 0, 1])
  np.testing.assert_allclose(r.fraction_dropped, 2 / 6)
  assert np.all(np.asarray(r.combine_weight)[0, [2, 4], 0] == 0)


def test_top2_serves_all_first_choices_before_second_choices():
  # 1st choices fill experts 0 and 1 (capacity 2); then only token 2's 2nd choice (expert 2)
  # still finds room. Token-by-token order would instead have dropped token 2's 1st choice.
  logits = _logits_for([[0, 1, 2], [0, 1, 2], [1, 2, 0], [1, 0, 2]], 3)
  r = _route('tokens_choose', logits, num_selected_experts=2, capacity=2)
  np.testing.assert_array_equal(r.expert_index[0], [[0, 1], [0, 1], [1, 2], [1, 0]])
  np.testing.assert_array_equal(r.routed[0], [[True, False], [True, False], [True, True],
                                              [True, False]])
  assert int(r.slot_index[0, 2, 1]) == 0
  np.testing.assert_allclose(r.fraction_dropped, 3 / 8)


def test_batch_prioritized_routing_keeps_the_most_confident_tokens():
  # Everyone wants expert 0 (capacity 2); tokens 3 and 1 are the most confident.
  logits = _logits_for([[0, 1]] * 4, 2, confidence=[1.0, 3.0, 0.5, 4.0])
  by_position = _route('tokens_choose', logits, num_selected_experts=1, capacity=2)
  by_confidence = _route('tokens_choose', logits, num_selected_experts=1, capacity=2,
                         batch_prioritized_routing=True)
  np.testing.assert_array_equal(by_position.routed[0, :, 0], [True, True, False, False])
  np.testing.assert_array_equal(by_confidence.routed[0, :, 0], [False, True, False, True])
  np.testing.assert_array_equal(by_confidence.slot_index[0, [3, 1], 0], [0, 1])


def test_combine_weights_are_unrenormalised_softmax_probabilities():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 4))
  r = _route('tokens_choose', logits, num_selected_experts=2, capacity=5)
  probs = np.asarray(jax.nn.softmax(logits, -1))
  want = np.take_along_axis(probs, np.argsort(-probs, -1)[..., :2], -1)
  np.testing.assert_allclose(r.combine_weight, want, rtol=1e-6)
  assert np.all(np.asarray(r.combine_weight).sum(-1) < 1)


def test_padding_never_takes_capacity_tokens_choose():
  # Padding tokens 0 and 1 "prefer" expert 0 but must not use its single slot.
  logits = _logits_for([[0], [0], [0], [0]], 2)
  real = np.array([[False, False, True, True]])
  r = _route('tokens_choose', logits, real, num_selected_experts=1, capacity=1)
  np.testing.assert_array_equal(r.routed[0, :, 0], [False, False, True, False])
  assert int(r.slot_index[0, 2, 0]) == 0
  np.testing.assert_allclose(r.fraction_dropped, 1 / 2)
  np.testing.assert_array_equal(np.asarray(r.combine_weight)[0, :2], 0)


def test_experts_choose_takes_exactly_capacity_highest_scoring_tokens():
  logits = 3.0 * jax.random.normal(jax.random.key(1), (2, 8, 4))
  cap = 3
  r = _route('experts_choose', logits, num_selected_experts=1, capacity=cap)
  routed = np.asarray(r.routed)                                # [G, T, E]
  np.testing.assert_array_equal(routed.sum(axis=1), cap)       # exactly C tokens per expert
  probs = np.asarray(jax.nn.softmax(logits, -1))
  for g in range(2):
    for e in range(4):
      want = set(np.argsort(-probs[g, :, e])[:cap])
      assert set(np.flatnonzero(routed[g, :, e])) == want
      np.testing.assert_array_equal(np.sort(np.asarray(r.slot_index)[g, routed[g, :, e], e]),
                                    np.arange(cap))
  np.testing.assert_allclose(r.combine_weight, np.where(routed, probs, 0), rtol=1e-6)
  unpicked = ~routed.any(-1)
  np.testing.assert_allclose(r.fraction_dropped, unpicked.mean(), rtol=1e-6)


def test_padding_never_taken_by_experts_choose():
  logits = _logits_for([[0, 1], [0, 1], [0, 1], [1, 0]], 2)
  real = np.array([[False, True, True, True]])   # token 0 would be expert 0's favourite
  r = _route('experts_choose', logits, real, num_selected_experts=1, capacity=2)
  routed = np.asarray(r.routed)[0]
  assert not routed[0].any()
  np.testing.assert_array_equal(routed[:, 0], [False, True, True, False])
  np.testing.assert_array_equal(routed.sum(0), [2, 2])


def test_capacity_formula_and_cap():
  assert capacity_lib.expert_capacity(16, 4, 1, 1.25, 1) == 5           # ceil(5.0)
  assert capacity_lib.expert_capacity(16, 4, 2, 1.25, 1) == 10
  assert capacity_lib.expert_capacity(16, 8, 1, 0.1, 4) == 4             # min_capacity
  assert capacity_lib.expert_capacity(16, 2, 2, 2.0, 1) == 16            # capped at T
  ff = dict(convention='flaxformer')
  assert capacity_lib.expert_capacity(16, 4, 2, 1.25, 1, **ff) == 5      # no factor k
  assert capacity_lib.expert_capacity(20, 8, 1, 1.0, 1, **ff) == 2       # round(2.5) == 2
  assert capacity_lib.expert_capacity(28, 8, 1, 1.0, 1, **ff) == 4       # round(3.5) == 4
  assert capacity_lib.expert_capacity(20, 8, 1, 1.0, 1) == 3             # ours: ceil(2.5)
  assert capacity_lib.expert_capacity(18, 8, 1, 1.0, 1, **ff) == 2       # round(2.25)
  assert capacity_lib.expert_capacity(16, 8, 1, 1.0, 4, **ff) == 4       # min_capacity
  with pytest.raises(ValueError, match='capacity_convention'):
    capacity_lib.expert_capacity(16, 2, 1, 1.0, 1, convention='gshard')
  with pytest.raises(ValueError, match='capacity_factor=0'):
    capacity_lib.expert_capacity(16, 2, 1, 0, 1)


def test_grouping_rules():
  assert capacity_lib.num_groups(6, 8) == 1
  assert capacity_lib.num_groups(32, 8) == 4
  with pytest.raises(ValueError, match=r'group_size=8.*\b12\b'):
    capacity_lib.num_groups(12, 8)
  groups = functools.partial(capacity_lib.token_groups, group_size=8, routing_groups='group_size')
  assert groups(3, 2, training=False) == groups(3, 2, training=True) == (1, 6)
  assert groups(4, 8, training=False) == groups(4, 8, training=True) == (4, 8)
  assert groups(3, 4, training=False) == (2, 8)       # 12 tokens + 4 padding
  assert groups(7, 3, training=False) == (3, 8)       # 21 tokens + 3 padding
  with pytest.raises(ValueError, match=r'group_size=8.*\b12\b'):
    groups(3, 4, training=True)
  for training in (False, True):
    assert capacity_lib.token_groups(3, 7, 8, 'sequence', training) == (3, 7)
  with pytest.raises(ValueError, match="routing_groups='rows'"):
    capacity_lib.token_groups(3, 7, 8, 'rows', False)


def test_load_balancing_loss_is_one_when_balanced_and_e_when_collapsed():
  e = 4
  real = jnp.ones((1, 8), bool)
  balanced = jnp.asarray(np.eye(e, dtype=np.float32)[np.arange(8) % e][None] * 5.0)
  np.testing.assert_allclose(losses.load_balancing_loss(balanced, real), 1.0, rtol=1e-6)
  collapsed = jnp.zeros((1, 8, e)).at[..., 0].set(50.0)
  np.testing.assert_allclose(losses.load_balancing_loss(collapsed, real), e, rtol=1e-6)
  # Padding tokens (all on expert 1) are ignored: still exactly balanced.
  padded = jnp.concatenate([balanced, jnp.zeros((1, 3, e)).at[..., 1].set(9.0)], axis=1)
  real_padded = jnp.concatenate([real, jnp.zeros((1, 3), bool)], axis=1)
  np.testing.assert_allclose(losses.load_balancing_loss(padded, real_padded), 1.0, rtol=1e-6)
  # A group made only of padding is left out of the mean over groups.
  two_groups = jnp.concatenate([padded, padded], axis=0)
  one_padded_group = jnp.concatenate([real_padded, jnp.zeros_like(real_padded)], axis=0)
  np.testing.assert_allclose(losses.load_balancing_loss(two_groups, one_padded_group), 1.0,
                             rtol=1e-6)


def test_load_balancing_loss_matches_numpy():
  """Per group over its real tokens, then the mean over groups."""
  logits = np.random.RandomState(0).normal(size=(2, 6, 3)).astype(np.float32)
  real = np.ones((2, 6), bool)
  real[1, 4:] = False
  per_group = []
  for g in range(2):
    flat = logits[g][real[g]].astype(np.float64)
    probs = np.exp(flat) / np.exp(flat).sum(-1, keepdims=True)
    frac = np.bincount(probs.argmax(-1), minlength=3) / len(flat)
    per_group.append(3 * np.sum(frac * probs.mean(0)))
  np.testing.assert_allclose(losses.load_balancing_loss(jnp.asarray(logits), jnp.asarray(real)),
                             np.mean(per_group), rtol=1e-5)


def test_z_loss_equals_its_formula():
  rng = np.random.RandomState(1)
  logits = (3 * rng.normal(size=(2, 5, 4))).astype(np.float32)
  real = rng.rand(2, 5) > 0.3
  flat = logits[real].astype(np.float64)
  lse = flat.max(-1) + np.log(np.exp(flat - flat.max(-1, keepdims=True)).sum(-1))
  np.testing.assert_allclose(losses.router_z_loss(jnp.asarray(logits), jnp.asarray(real)),
                             np.mean(lse ** 2), rtol=1e-5)


def test_router_jitter_only_in_training():
  d = e = 4
  router = routing_lib.Router(e, init_std=0.02, jitter_noise=0.1)
  x = jnp.ones((1, 6, d))
  params = {'params': {'kernel': jnp.eye(d)}}   # logits == (jittered) inputs
  np.testing.assert_array_equal(router.apply(params, x), x)
  noisy = router.apply(params, x, enable_dropout=True, rngs={'dropout': jax.random.key(0)})
  assert np.all(np.abs(np.asarray(noisy) - 1) <= 0.1 + 1e-7)
  assert np.std(np.asarray(noisy)) > 0.01
  init = router.init(jax.random.key(0), jnp.ones((2, 3, 64)))['params']['kernel']
  assert init.value.dtype == jnp.float32 and init.names == ('embed', 'unmodeled')
  assert 0.01 < float(jnp.std(init.value)) < 0.03                # router_init_std


def test_unknown_router_name_is_a_clear_error():
  with pytest.raises(ValueError, match="router_type='nope'"):
    routing_lib.get_router('nope')


def test_collect_moe_metrics_averages_over_layers_encoder_first_in_natural_order():
  def layer(lb, load, dropped):
    return {'load_balancing_loss': (jnp.float32(lb),), 'expert_load': (jnp.asarray(load),),
            'fraction_dropped': (jnp.float32(dropped),)}
  tree = {'decoder': {'layers_1': {'moe': layer(5.0, [0.5, 0.5], 0.3)}},
          'encoder': {'layers_10': {'moe': layer(3.0, [0.0, 1.0], 0.2)},
                      'layers_2': {'moe': layer(1.0, [1.0, 0.0], 0.1)}}}
  out = collect_moe_metrics(tree)
  np.testing.assert_allclose(out['load_balancing_loss'], 3.0)
  np.testing.assert_allclose(out['expert_load'], [0.5, 0.5])
  np.testing.assert_allclose(out['expert_load_per_layer'], [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
  np.testing.assert_allclose(out['fraction_dropped_per_layer'], [0.1, 0.2, 0.3])
  np.testing.assert_allclose(out['load_balancing_loss_per_layer'], [1.0, 3.0, 5.0])
  assert collect_moe_metrics({}) == {}


@pytest.mark.parametrize('name,k,prioritized', [('tokens_choose', 1, False),
                                                ('tokens_choose', 3, True),
                                                ('experts_choose', 1, False)])
def test_routed_slots_are_distinct_and_within_capacity(name, k, prioritized):
  """The invariant dispatchers rely on, on random logits with padding and tight capacity."""
  rng = np.random.RandomState(2)
  logits = jnp.asarray(rng.normal(size=(3, 10, 5)).astype(np.float32))
  real = rng.rand(3, 10) > 0.2
  cap = 2
  r = _route(name, logits, real, num_selected_experts=k, capacity=cap,
             batch_prioritized_routing=prioritized)
  routed, expert, slot = map(np.asarray, (r.routed, r.expert_index, r.slot_index))
  assert not routed[~real].any()
  for g in range(3):
    for e in range(5):
      slots = slot[g][routed[g] & (expert[g] == e)]
      assert len(set(slots)) == len(slots) and np.all((0 <= slots) & (slots < cap))
      if name == 'tokens_choose':   # each expert fills min(capacity, demand) slots
        wanted = np.sum(real[g][:, None] & (expert[g] == e))
        assert len(slots) == min(cap, wanted)


def test_top_k_by_argmax_equals_lax_top_k_including_ties():
  """The partition-friendly top-k gives lax.top_k's values, indices and tie order."""
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (3, 16, 8)), axis=-1)
  ties = jnp.array([[[0.25, 0.25, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0]]])
  for p in (probs, ties):
    for k in (1, 2, 3):
      want_values, want_index = jax.lax.top_k(p, k)
      values, index = routing_lib.top_k_by_argmax(p, k)
      np.testing.assert_array_equal(np.asarray(index), np.asarray(want_index))
      np.testing.assert_array_equal(np.asarray(values), np.asarray(want_values))


def test_flaxformer_load_balancing_counts_every_chosen_expert():
  """'flaxformer': a token counts at each of its k top experts (k when balanced); 'ours': top-1."""
  e, k = 4, 2
  real = jnp.ones((1, 8), bool)
  # Token t puts its two largest logits on experts t % e and (t + 1) % e: each expert is chosen
  # by 4 of 8 tokens (f_e = k / E) and the mean probabilities are uniform (P_e = 1 / E).
  logits = np.zeros((1, 8, e), np.float32)
  for t in range(8):
    logits[0, t, t % e] = 5.0
    logits[0, t, (t + 1) % e] = 5.0
  logits = jnp.asarray(logits)
  np.testing.assert_allclose(losses.load_balancing_loss(logits, real, num_counted=k), k,
                             rtol=1e-6)
  np.testing.assert_allclose(losses.load_balancing_loss(logits, real), 1.0, rtol=1e-6)
  # Every token on experts 0 and 1 with probability 1/2 each: f = (1, 1, 0, 0), P = (.5, .5, 0, 0).
  collapsed = jnp.zeros((1, 8, e)).at[..., :2].set(50.0)
  np.testing.assert_allclose(losses.load_balancing_loss(collapsed, real, num_counted=k), e,
                             rtol=1e-6)


def test_flaxformer_load_balancing_matches_numpy_and_zero_for_experts_choose():
  rng = np.random.RandomState(3)
  logits = rng.normal(size=(2, 6, 5)).astype(np.float32)
  real = np.ones((2, 6), bool)
  real[0, 5] = False
  per_group = []
  for g in range(2):
    flat = logits[g][real[g]].astype(np.float64)
    probs = np.exp(flat) / np.exp(flat).sum(-1, keepdims=True)
    top2 = np.argsort(-probs, axis=-1)[:, :2]
    frac = np.array([np.mean(np.any(top2 == x, axis=-1)) for x in range(5)])
    per_group.append(5 * np.sum(frac * probs.mean(0)))
  got = losses.load_balancing_loss(jnp.asarray(logits), jnp.asarray(real), num_counted=2)
  np.testing.assert_allclose(got, np.mean(per_group), rtol=1e-5)
  routing = routing_lib.tokens_choose(jnp.asarray(logits), jnp.asarray(real),
                                      num_selected_experts=2, capacity=6)
  metrics = losses.router_metrics(jnp.asarray(logits), jnp.asarray(real), routing,
                                  'flaxformer', 2)
  np.testing.assert_allclose(metrics['load_balancing_loss'], np.mean(per_group), rtol=1e-5)
  ec = losses.router_metrics(jnp.asarray(logits), jnp.asarray(real), routing, 'flaxformer', 2,
                             experts_choose=True)
  assert float(ec['load_balancing_loss']) == 0.0
  ours = losses.router_metrics(jnp.asarray(logits), jnp.asarray(real), routing, 'ours', 2,
                               experts_choose=True)
  np.testing.assert_allclose(ours['load_balancing_loss'],
                             losses.load_balancing_loss(jnp.asarray(logits), jnp.asarray(real)))
  with pytest.raises(ValueError, match='load_balancing_convention'):
    MoeConfig(load_balancing_convention='gshard')
