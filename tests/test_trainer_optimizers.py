"""Adafactor (per-expert factoring), schedules, and AdamW wiring, against numpy references."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from moe_flan.trainer import optimizers as opt


def _np_factored_update(g):
  """First Adafactor step (beta2 = 0) of one param factored over its last two dims."""
  g2 = g.astype(np.float64) ** 2 + 1e-30
  vr, vc = g2.mean(-1), g2.mean(-2)
  row = 1 / np.sqrt(vr / vr.mean(-1, keepdims=True))
  col = 1 / np.sqrt(vc)
  return g * row[..., :, None] * col[..., None, :]


def test_expert_kernels_are_factored_per_expert():
  g = np.random.RandomState(0).randn(3, 4, 5).astype(np.float32)   # [E, D, F]
  tx = opt.scale_by_factored_rms(min_dim_size_to_factor=2)
  state = tx.init({'w': jnp.zeros_like(g)})
  assert state.v_row['w'].shape == (3, 4) and state.v_col['w'].shape == (3, 5)
  u, _ = tx.update({'w': jnp.asarray(g)}, state)
  np.testing.assert_allclose(u['w'], _np_factored_update(g), rtol=1e-5)
  # Experts do not share statistics: scaling expert 0's gradient leaves expert 1's update alone.
  g_scaled = g.copy()
  g_scaled[0] *= 100.0
  u2, _ = tx.update({'w': jnp.asarray(g_scaled)}, state)
  np.testing.assert_allclose(u2['w'][1:], u['w'][1:], rtol=1e-5)


def test_small_params_use_full_second_moment():
  g = np.array([3.0, -4.0], np.float32)
  tx = opt.scale_by_factored_rms(min_dim_size_to_factor=128)
  u, state = tx.update({'b': jnp.asarray(g)}, tx.init({'b': jnp.zeros(2)}))
  np.testing.assert_allclose(u['b'], np.sign(g), rtol=1e-5)   # g / sqrt(g^2)
  assert state.v['b'].shape == (2,)


def test_adafactor_step_matches_reference():
  """Full t5x-style step: factored rms, block-RMS clip at 1, times lr * max(rms(p), 1e-3)."""
  rs = np.random.RandomState(1)
  p = rs.randn(2, 6, 7).astype(np.float32)
  g = rs.randn(2, 6, 7).astype(np.float32)
  cfg = opt.OptimizerConfig(min_dim_size_to_factor=2)
  tx = opt.make_optimizer(cfg, schedule=lambda step: 0.1)
  updates, _ = tx.update({'p': jnp.asarray(g)}, tx.init({'p': jnp.asarray(p)}),
                         {'p': jnp.asarray(p)})
  u = _np_factored_update(g)
  u = u / max(1.0, np.sqrt(np.mean(u ** 2)))
  expected = -0.1 * u * max(np.sqrt(np.mean(p.astype(np.float64) ** 2)), 1e-3)
  np.testing.assert_allclose(updates['p'], expected, rtol=1e-4)


def test_param_block_rms_scaling_matches_optax():
  """Our one-pass version against optax's, including a param below the minimum scale."""
  import optax  # pylint: disable=g-import-not-at-top
  rs = np.random.RandomState(2)
  params = {'big': jnp.asarray(rs.randn(3, 8, 5).astype(np.float32)),
            'tiny': jnp.asarray(1e-5 * rs.randn(7).astype(np.float32)),
            'zero': jnp.zeros((4, 4))}
  updates = jax.tree.map(lambda p: jnp.asarray(rs.randn(*p.shape).astype(np.float32)), params)
  ours, _ = opt.scale_by_param_block_rms(1e-3).update(updates, optax.EmptyState(), params)
  want, _ = optax.scale_by_param_block_rms(1e-3).update(updates, optax.EmptyState(), params)
  for name in params:
    np.testing.assert_allclose(ours[name], want[name], rtol=1e-6, err_msg=name)
  np.testing.assert_allclose(ours['tiny'], updates['tiny'] * 1e-3, rtol=1e-6)
  with pytest.raises(ValueError, match='needs the params'):
    opt.scale_by_param_block_rms().update(updates, optax.EmptyState())


@pytest.mark.parametrize('name,step,expected', [
    ('constant', 7, 0.5),
    ('rsqrt', 4, 0.5 * np.sqrt(16) / np.sqrt(16)),     # inside warmup: constant base
    ('rsqrt', 64, 0.5 * np.sqrt(16) / np.sqrt(64)),
    ('linear', 16 + 42, 0.5 + (0.1 - 0.5) * 0.5),      # half way from warmup to decay_steps
    ('cosine', 100, 0.1),
    ('cosine', 16 + 42, 0.1 + 0.4 * 0.5),
])
def test_schedules(name, step, expected):
  cfg = opt.ScheduleConfig(name=name, base_learning_rate=0.5, warmup_steps=16, decay_steps=100,
                           end_value=0.1, linear_warmup=False)
  np.testing.assert_allclose(float(opt.make_schedule(cfg)(step)), expected, rtol=1e-5)


def test_linear_warmup_ramps_up():
  s = opt.make_schedule(opt.ScheduleConfig('constant', 1.0, warmup_steps=10))
  np.testing.assert_allclose([float(s(i)) for i in (0, 4, 9, 50)], [0.1, 0.5, 1.0, 1.0],
                             rtol=1e-6)


def test_global_norm_clipping_bounds_the_step():
  """AdamW's first step is sign-like and scale-free, so compare clipped vs unclipped grads:
  with clipping the Adam moments see g / |g| * max_norm, identical for g and 10 g."""
  p = {'w': jnp.ones((4,))}
  g = {'w': jnp.array([1.0, -2.0, 0.5, 3.0])}
  cfg = opt.OptimizerConfig(name='adamw', grad_clip_norm=1.0, eps=1.0)  # big eps: not scale-free
  tx = opt.make_optimizer(cfg, schedule=lambda s: 1.0)
  u1, _ = tx.update(g, tx.init(p), p)
  u10, _ = tx.update(jax.tree.map(lambda x: 10 * x, g), tx.init(p), p)
  np.testing.assert_allclose(u1['w'], u10['w'], rtol=1e-6)
  tx_noclip = opt.make_optimizer(opt.OptimizerConfig(name='adamw', eps=1.0), lambda s: 1.0)
  n1, _ = tx_noclip.update(g, tx_noclip.init(p), p)
  assert not np.allclose(n1['w'], u1['w'])


def test_bad_settings_name_the_field():
  with pytest.raises(ValueError, match='ScheduleConfig.name'):
    opt.ScheduleConfig(name='exponential')
  with pytest.raises(ValueError, match='OptimizerConfig.name'):
    opt.OptimizerConfig(name='sgd')
  with pytest.raises(ValueError, match='num_microbatches'):
    opt.OptimizerConfig(num_microbatches=0)
