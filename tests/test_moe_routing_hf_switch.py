"""The 'hf_switch' router: HF SwitchTransformers' top-1 routing with per-sequence capacity."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan.config import MoeConfig
from moe_flan.moe import MoeLayer
from moe_flan.moe import routing
from moe_flan.moe.routing import hf_switch


def _logits_preferring(experts, num_experts=3, margin=(2.0, 1.0, 3.0, 0.5, 1.5)):
  """<float32>[T, E] whose argmax per token is `experts[t]`, with distinct confidences."""
  logits = np.zeros((len(experts), num_experts), np.float32)
  for t, e in enumerate(experts):
    logits[t, e] = margin[t]
  return logits


def test_hand_built_routing():
  logits = jnp.asarray(np.stack([_logits_preferring([0, 0, 0, 1, 0]),
                                 _logits_preferring([2, 2, 1, 2, 2])]))
  real = jnp.asarray([[True] * 5, [True, True, True, False, False]])
  r = hf_switch(logits, real, num_selected_experts=1, capacity=2)
  np.testing.assert_array_equal(r.expert_index[..., 0], [[0, 0, 0, 1, 0], [2, 2, 1, 2, 2]])
  # First come by position; padding (group 1, tokens 3-4) takes slots like any token.
  np.testing.assert_array_equal(r.slot_index[..., 0], [[0, 1, 2, 0, 3], [0, 1, 0, 2, 3]])
  np.testing.assert_array_equal(r.routed[..., 0], [[1, 1, 0, 1, 0], [1, 1, 1, 0, 0]])
  probs = jax.nn.softmax(logits, axis=-1).max(-1)
  np.testing.assert_allclose(r.combine_weight[..., 0], np.where(r.routed[..., 0], probs, 0.0))
  assert float(r.fraction_dropped) == pytest.approx(2 / 8)   # 2 real tokens of 8 dropped


def test_registered_and_validated():
  assert routing.get_router('hf_switch') is hf_switch
  logits, real = jnp.zeros((1, 4, 2)), jnp.ones((1, 4), bool)
  with pytest.raises(ValueError, match='top-1'):
    hf_switch(logits, real, num_selected_experts=2, capacity=2)
  with pytest.raises(ValueError, match='batch_prioritized_routing'):
    hf_switch(logits, real, num_selected_experts=1, capacity=2, batch_prioritized_routing=True)


def _hf_reference(x, router, wi, wo, capacity):
  """For-loop HF SwitchTransformersSparseMLP (transformers 4.57): per sequence, by position."""
  out, dropped = np.zeros_like(x), 0
  for b in range(x.shape[0]):
    used = np.zeros(router.shape[1], int)
    for t in range(x.shape[1]):
      logits = x[b, t] @ router
      p = np.exp(logits - logits.max())
      p /= p.sum()
      e = int(np.argmax(p))
      used[e] += 1
      if used[e] <= capacity:                      # dropped tokens: zero output
        out[b, t] = p[e] * (np.maximum(x[b, t] @ wi[e], 0.0) @ wo[e])
      else:
        dropped += 1
  return out, dropped


def test_moe_layer_with_hf_switch_matches_hf_loop():
  b, l, d, e, f, cap = 3, 8, 6, 4, 5, 2
  cfg = MoeConfig(num_experts=e, router_type='hf_switch', group_size=l, min_capacity=cap,
                  train_capacity_factor=1e-9, eval_capacity_factor=1e-9, expert_mlp_dim=f,
                  expert_activations=('relu',))
  layer = MoeLayer(cfg, emb_dim=d, router_type='hf_switch', num_selected_experts=1)
  x = jax.random.normal(jax.random.PRNGKey(0), (b, l, d))
  params = nn.unbox(layer.init(jax.random.PRNGKey(1), x)['params'])
  params = jax.tree.map(lambda v: np.asarray(v) * 4.0, params)  # sharp router: uneven routing
  y, state = layer.apply({'params': params}, x, mutable=['moe_metrics'])
  want, num_dropped = _hf_reference(np.asarray(x), params['router']['kernel'],
                                    params['experts']['wi'], params['experts']['wo'], cap)
  np.testing.assert_allclose(np.asarray(y), want, atol=1e-5)
  dropped = float(state['moe_metrics']['fraction_dropped'][0])
  assert num_dropped > 0 and dropped == pytest.approx(num_dropped / (b * l))
