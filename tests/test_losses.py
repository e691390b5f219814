"""Cross entropy with z-loss and label smoothing against numpy; MoE aux losses in the total."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan.model import compute_loss, cross_entropy_with_z_loss
from t5_fixtures import tiny_config


def _reference(logits, targets, weights, z_coef, smoothing):
  """Per token: KL-style smoothed CE (min 0) + z_coef * logsumexp^2, weight-averaged."""
  logits = np.asarray(logits, np.float64)
  v = logits.shape[-1]
  total, z_total = 0.0, 0.0
  for idx in np.ndindex(*targets.shape):
    row = logits[idx]
    log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
    log_p = row - log_z
    q = np.full(v, smoothing / (v - 1))
    q[targets[idx]] = 1.0 - smoothing
    ce = -np.sum(q * log_p) + np.sum(q[q > 0] * np.log(q[q > 0]))   # minus entropy of q
    total += weights[idx] * (ce + z_coef * log_z ** 2)
    z_total += weights[idx] * z_coef * log_z ** 2
  return total / weights.sum(), z_total / weights.sum()


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_cross_entropy_matches_numpy(smoothing):
  rng = np.random.RandomState(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
  targets = rng.randint(1, 7, size=(2, 5)).astype(np.int32)
  targets[1, 3:] = 0
  weights = (targets > 0).astype(np.float32)
  loss, z, wsum = cross_entropy_with_z_loss(logits, targets, None, 1e-4, smoothing)
  want, want_z = _reference(logits, targets, weights, 1e-4, smoothing)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(z, want_z, rtol=1e-5)
  assert float(wsum) == 8.0


def test_padding_is_ignored_and_weights_respected():
  rng = np.random.RandomState(1)
  logits = rng.normal(size=(1, 4, 5)).astype(np.float32)
  targets = np.array([[2, 3, 0, 0]], np.int32)
  base = cross_entropy_with_z_loss(logits, targets)[0]
  garbage = logits.copy()
  garbage[0, 2:] = 100 * rng.normal(size=(2, 5))
  np.testing.assert_allclose(cross_entropy_with_z_loss(garbage, targets)[0], base, rtol=1e-6)
  weights = np.array([[0.0, 1.0, 0.0, 0.0]], np.float32)
  only_second = cross_entropy_with_z_loss(logits, targets, weights)[0]
  want, _ = _reference(logits, targets, weights, 1e-4, 0.0)
  np.testing.assert_allclose(only_second, want, rtol=1e-5)


def test_perfect_prediction_costs_only_the_z_loss():
  targets = np.array([[1, 2]], np.int32)
  logits = np.full((1, 2, 4), -1e4, np.float32)
  logits[0, 0, 1] = logits[0, 1, 2] = 0.0              # p = 1 on the target, log Z = 0
  loss, z, _ = cross_entropy_with_z_loss(logits, targets, z_loss=1e-4)
  assert abs(float(loss)) < 1e-6 and abs(float(z)) < 1e-6
  shifted = logits + 3.0                               # same softmax, log Z = 3
  loss, z, _ = cross_entropy_with_z_loss(shifted, targets, z_loss=1e-4)
  np.testing.assert_allclose([loss, z], [9e-4, 9e-4], rtol=1e-4)


def test_label_smoothing_minimum_is_the_smoothed_distribution():
  v, s = 5, 0.2
  q = np.full(v, s / (v - 1))
  q[3] = 1 - s
  logits = np.log(q)[None, None].astype(np.float32)
  loss, _, _ = cross_entropy_with_z_loss(logits, np.array([[3]]), z_loss=0.0, label_smoothing=s)
  assert abs(float(loss)) < 1e-5
  worse = logits.copy()
  worse[0, 0, 3] += 1.0
  assert float(cross_entropy_with_z_loss(worse, np.array([[3]]), z_loss=0.0,
                                         label_smoothing=s)[0]) > 1e-3


def test_bad_label_smoothing_raises():
  with pytest.raises(ValueError, match='label_smoothing'):
    cross_entropy_with_z_loss(np.zeros((1, 1, 3)), np.array([[1]]), label_smoothing=1.0)


def test_compute_loss_adds_weighted_moe_losses():
  cfg = tiny_config(moe=True)
  cfg = dataclasses.replace(cfg, moe=dataclasses.replace(
      cfg.moe, load_balancing_loss_weight=0.01, router_z_loss_weight=0.5))
  rng = np.random.RandomState(2)
  logits = rng.normal(size=(2, 3, 6)).astype(np.float32)
  batch = {'decoder_target_tokens': np.array([[1, 2, 3], [4, 0, 0]], np.int32)}
  layer = lambda lb, z: {'moe': {'load_balancing_loss': (jnp.float32(lb),),
                                 'router_z_loss': (jnp.float32(z),),
                                 'fraction_dropped': (jnp.float32(0.0),),
                                 'top1_prob': (jnp.float32(0.5),),
                                 'expert_load': (jnp.full((4,), 0.25),)}}
  sown = {'encoder': {'layers_1': layer(1.0, 2.0)}, 'decoder': {'layers_1': layer(3.0, 4.0)}}
  total, metrics = compute_loss(cfg, logits, batch, sown)
  ce = cross_entropy_with_z_loss(logits, batch['decoder_target_tokens'])[0]
  np.testing.assert_allclose(total, ce + 0.01 * 2.0 + 0.5 * 3.0, rtol=1e-6)
  np.testing.assert_allclose(metrics['moe/load_balancing_loss'], 2.0)
  np.testing.assert_allclose(metrics['cross_entropy'] + metrics['z_loss'], ce, rtol=1e-6)
  dense_total, dense_metrics = compute_loss(tiny_config(), logits, batch, None)
  np.testing.assert_allclose(dense_total, ce, rtol=1e-6)
  assert not any(k.startswith('moe/') for k in dense_metrics)
  want_acc = np.mean([np.argmax(logits[0, i]) == t for i, t in enumerate([1, 2, 3])] +
                     [np.argmax(logits[1, 0]) == 4])
  np.testing.assert_allclose(dense_metrics['accuracy'], want_acc)


def _autodiff_cross_entropy(logits, targets, weights, z_coef, smoothing):
  """The plain formula, for jax.grad: log-softmax against materialised smoothed targets."""
  v = logits.shape[-1]
  low = smoothing / (v - 1)
  q = jax.nn.one_hot(targets, v) * (1.0 - smoothing - low) + low
  log_z = jax.nn.logsumexp(logits, axis=-1)
  entropy = -((1.0 - smoothing) * np.log(1.0 - smoothing) + (v - 1) * low * np.log(low + 1e-20))
  ce = -jnp.sum(q * (logits - log_z[..., None]), axis=-1) - entropy
  z = z_coef * log_z ** 2
  return jnp.sum((ce + z) * weights) / jnp.sum(weights), jnp.sum(z * weights) / jnp.sum(weights)


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_cross_entropy_gradient_matches_autodiff_of_the_formula(smoothing):
  """The hand-written VJP (one pass over the logits) against jax.grad of the plain formula,
  through both outputs, with weights, padding and ids outside the vocabulary (-1 and V)."""
  rng = np.random.RandomState(3)
  logits = jnp.asarray(rng.normal(size=(2, 6, 9)).astype(np.float32) * 3)
  targets = jnp.asarray(rng.randint(1, 9, size=(2, 6)).astype(np.int32).tolist())
  targets = targets.at[0, 1].set(-1).at[1, 2].set(9).at[1, 5].set(0)
  weights = jnp.asarray(rng.uniform(0.5, 2.0, size=(2, 6)).astype(np.float32)).at[1, 5].set(0.0)

  def combine(fn):
    def scalar(x):
      loss, z = fn(x)[:2]
      return loss + 3.0 * z      # a cotangent on the z-loss output too
    return scalar

  ours = combine(lambda x: cross_entropy_with_z_loss(x, targets, weights, 1e-2, smoothing))
  plain = combine(lambda x: _autodiff_cross_entropy(x, targets, weights, 1e-2, smoothing))
  np.testing.assert_allclose(ours(logits), plain(logits), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(plain)(logits), rtol=1e-4,
                             atol=1e-7)


def test_loss_gradient_under_a_vocab_sharded_mesh_gathers_nothing():
  """Logits sharded over ('data', -, 'model') as the default rules shard them: the loss and its
  gradient stay local (no all-gather of the [B, L, V] logits) and match one device."""
  import re
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ('data', 'model'))
  rng = np.random.RandomState(7)
  logits = rng.normal(size=(4, 6, 32)).astype(np.float32)
  targets = rng.randint(0, 32, size=(4, 6)).astype(np.int32)
  grad = jax.jit(jax.grad(lambda x, t: cross_entropy_with_z_loss(x, t, None, 1e-3, 0.1)[0]))
  sharded = (jax.device_put(logits, NamedSharding(mesh, P('data', None, 'model'))),
             jax.device_put(targets, NamedSharding(mesh, P('data', None))))
  hlo = grad.lower(*sharded).compile().as_text()
  assert not re.findall(r'all-gather(?:-start)?\(', hlo)
  np.testing.assert_allclose(grad(*sharded), grad(logits, targets), rtol=1e-5, atol=1e-7)
