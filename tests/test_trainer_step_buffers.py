"""Step buffers kept across steps: the same numbers as fresh buffers, written in place.

`ReusedGradientBuffers` must (1) return what the plain jitted function returns and (2) write each
call's gradients into the previous call's buffers (same addresses, the old arrays donated). The
trainer's step is (3) one donated jit by default; with `reuse_step_buffers` it must (4) give the
same run as the donated state on a sharded mesh, with the new state in the buffers of the state
before last and gradients sharded like the params.
"""
import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan.trainer import builder, checkpoints as ck, optimizers, step_buffers
from test_trainer_loop import DATA, tiny_model   # the trainer tests' tiny FLAN-MoE and data

pytestmark = pytest.mark.usefixtures('persistent_compilation_cache')


def _loss_and_grads(w, x):
  """(loss, grads) of a two-layer ReLU net; w = {'wi': [D, F], 'wo': [F, D]}, x [N, D]."""
  def loss(w):
    return jnp.mean(jnp.square(jax.nn.relu(x @ w['wi']) @ w['wo'] - x))
  return jax.value_and_grad(loss)(w)


def _inputs(seed):
  r = np.random.RandomState(seed)
  w = {'wi': r.randn(32, 64).astype(np.float32), 'wo': r.randn(64, 32).astype(np.float32)}
  return w, r.randn(16, 32).astype(np.float32)


def _pointers(tree):
  return [s.data.unsafe_buffer_pointer() for leaf in jax.tree.leaves(tree)
          for s in leaf.addressable_shards]


def test_same_values_as_plain_jit_and_written_into_the_previous_buffers():
  reused = step_buffers.ReusedGradientBuffers(_loss_and_grads)
  plain = jax.jit(_loss_and_grads)
  previous, previous_pointers = None, None
  for seed in range(3):
    w, x = _inputs(seed)
    loss, grads = reused(w, x)
    want_loss, want_grads = plain(w, x)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 grads, want_grads)
    if previous is not None:
      assert all(leaf.is_deleted() for leaf in jax.tree.leaves(previous))   # donated
      assert _pointers(grads) == previous_pointers                         # same memory
    previous, previous_pointers = grads, _pointers(grads)


def test_gradients_alias_the_donated_buffers_in_the_compiled_step():
  reused = step_buffers.ReusedGradientBuffers(_loss_and_grads)
  w, x = _inputs(0)
  stats = reused.lower(w, x).compile().memory_analysis()
  assert stats.alias_size_in_bytes == (32 * 64 + 64 * 32) * 4


def test_donate_argnums_donates_the_wrapped_functions_arguments():
  reused = step_buffers.ReusedGradientBuffers(
      lambda w, x: ((jax.tree.map(lambda a: a * 0.5, w), x.sum()), _loss_and_grads(w, x)[1]),
      donate_argnums=(0,))
  w, x = _inputs(0)
  w = jax.device_put(w)
  (halved, _), _ = reused(w, jnp.asarray(x))
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(w))
  np.testing.assert_allclose(halved['wi'], _inputs(0)[0]['wi'] * 0.5)


def test_the_default_train_step_is_one_donated_jit(monkeypatch):
  assert optimizers.OptimizerConfig().reuse_step_buffers is False
  monkeypatch.setattr(step_buffers, 'ReusedGradientBuffers', None)   # must not be reached
  step = step_buffers.jit_train_step(lambda return_grads: _halve_step(return_grads))
  w = jax.device_put(_inputs(0)[0])
  new, _ = step(w, None)
  assert _deleted(w)                                         # the state is donated
  np.testing.assert_allclose(new['wi'], _inputs(0)[0]['wi'] * 0.5)


def test_equal_settings_share_one_jitted_train_step():
  """Runs of equal settings in one process (an experiment's seeds and stages) share the jitted
  step, so it is traced and compiled once; whatever its program depends on gives another."""
  def jitted(model=None, optimizer=optimizers.OptimizerConfig(), frozen=(), seed=0):
    return builder.build_step(model or tiny_model(), DATA, optimizer, frozen, seed
                              ).jit_train_step()
  first = jitted()
  assert jitted(seed=1) is first
  others = [jitted(model=tiny_model(emb_dim=32)), jitted(frozen=('router',)),
            jitted(optimizer=optimizers.OptimizerConfig(grad_clip_norm=1.0)),
            jitted(optimizer=optimizers.OptimizerConfig(reuse_step_buffers=True))]
  try:
    gin.bind_parameter('compute_loss.z_loss', 0.5)   # read while the step is traced
    others.append(jitted())
  finally:
    gin.clear_config()
  assert all(other is not first for other in others)
  assert jitted() is first
  init = builder.build_step(tiny_model(), DATA, optimizers.OptimizerConfig(), (), 0).jit_init
  lengths = dict(DATA.task_feature_lengths)
  assert init(lengths, 8) is init(dict(reversed(lengths.items())), 8)
  assert init(lengths, 16) is not init(lengths, 8) and init(lengths, 8) is not first
  assert init({**lengths, 'targets': lengths['targets'] * 2}, 8) is not init(lengths, 8)


def test_the_kept_compiled_step_is_per_argument_shapes(tmp_path, monkeypatch):
  """Runs of equal settings share the loop's ahead-of-time compiled step (an experiment's 16
  runs compile 5: tests/test_experiments_flan_moe.py), but only for the same argument shapes
  and shardings: another batch size compiles its own."""
  compiles = []
  real_compile = jax.stages.Lowered.compile
  monkeypatch.setattr(jax.stages.Lowered, 'compile',
                      lambda self, *a, **k: compiles.append(1) or real_compile(self, *a, **k))
  for name, batch_size in (('b8', 8), ('b16', 16)):
    data = dataclasses.replace(DATA, batch_size=batch_size, truncation_check_examples=0)
    setup = builder.build(str(tmp_path / name), tiny_model(), data, optimizers.OptimizerConfig(),
                          ck.CheckpointConfig(period=100), (), seed=0)
    state, _ = setup.initial_state()
    batch = setup.shard(next(setup.train_batches(0)))
    _, metrics = setup.compiled_train_step(state, batch)(state, batch)
    assert np.isfinite(float(metrics['loss']))
    setup.close()
  assert len(compiles) == 2


def _halve_step(return_grads):
  assert not return_grads, 'the donated step asks for no gradients'
  return lambda w, batch: (jax.tree.map(lambda a: a * 0.5, w), {})


class _Recording(step_buffers.ReusedGradientBuffers):
  """Remembers its instances, to read the trainer's gradient buffers."""
  instances: list = []

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    _Recording.instances.append(self)


def _trainer_run(model_dir, reuse):
  """3 steps of builder's train step on the default (8-device) mesh.

  Returns (metrics, params, and with kept buffers a list per step of (state, the addresses of
  the gradients' and of the new state's buffers); else None).
  """
  setup = builder.build(model_dir, tiny_model(), DATA,
                        optimizers.OptimizerConfig(reuse_step_buffers=reuse),
                        ck.CheckpointConfig(period=100), (), seed=0)
  state, _ = setup.initial_state()
  count = len(_Recording.instances)
  step = setup.jit_train_step()
  batches = setup.train_batches(0)
  history = []
  for _ in range(3):
    state, metrics = step(state, setup.shard(next(batches)))
    if len(_Recording.instances) > count:
      grads = _Recording.instances[-1]._grads   # pylint: disable=protected-access
      assert jax.tree.map(lambda g: g.sharding, grads) == setup.parts.state_shardings.params
      assert jax.tree.map(lambda a: a.sharding, state) == setup.parts.state_shardings
      history.append((state, _pointers(grads), _pointers(state)))
  setup.close()
  return jax.device_get(metrics), jax.device_get(state.params), history or None


def _deleted(tree):
  return all(leaf.is_deleted() for leaf in jax.tree.leaves(tree))


def test_trainer_with_reuse_step_buffers_keeps_them_with_the_same_numbers(tmp_path, monkeypatch):
  monkeypatch.setattr(step_buffers, 'ReusedGradientBuffers', _Recording)
  _Recording.instances = []
  m_kept, p_kept, history = _trainer_run(str(tmp_path / 'kept'), True)
  m_fresh, p_fresh, none = _trainer_run(str(tmp_path / 'default'), False)
  assert none is None and len(_Recording.instances) == 1     # the default keeps no buffers
  (s1, g1, p1), (s2, g2, p2), (s3, g3, p3) = history
  assert g1 == g2 == g3                    # gradients: the same buffers every step
  assert p3 == p1 and p2 != p1             # state n+1 in the buffers of state n-1
  assert _deleted(s1) and not _deleted(s2) and not _deleted(s3)
  for name in ('loss', 'grad_norm', 'accuracy'):
    np.testing.assert_allclose(m_kept[name], m_fresh[name], rtol=1e-5, err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               p_kept, p_fresh)
