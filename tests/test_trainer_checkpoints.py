"""Checkpoints: round trip, keep-last-K, atomicity, shape checks, partial restore, upcycling."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan.trainer import checkpoints as ck
from moe_flan.trainer import optimizers, train_state as ts


def _params(width=4, experts=None, seed=0):
  rs = np.random.RandomState(seed)
  p = {'token_embedder': {'embedding': rs.randn(10, width).astype(np.float32)},
       'encoder': {'layers_0': {'mlp': {'wi': {'kernel': rs.randn(width, 6).astype(np.float32)},
                                        'wo': {'kernel': rs.randn(6, width).astype(np.float32)}}}}}
  if experts:
    p['encoder']['layers_0'] = {'moe': {
        'router': {'kernel': rs.randn(width, experts).astype(np.float32)},
        'experts': {'wi': rs.randn(experts, width, 6).astype(np.float32),
                    'wo': rs.randn(experts, 6, width).astype(np.float32)}}}
  return jax.tree.map(jnp.asarray, p)


def _state(params, step=0):
  tx = optimizers.make_optimizer(optimizers.OptimizerConfig(min_dim_size_to_factor=2))
  state = ts.new_state(params, tx, jax.random.PRNGKey(7))
  # A non-trivial optimizer state, so the round trip is not of zeros.
  _, opt_state = tx.update(params, state.opt_state, params)
  return state.replace(step=jnp.asarray(step, jnp.int32), opt_state=opt_state)


def _abstract(state):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def test_round_trip_keep_last_k_and_data_position(tmp_path):
  cp = ck.Checkpointer(str(tmp_path), ck.CheckpointConfig(period=2, keep=2))
  states = {s: _state(_params(seed=s), step=s) for s in (2, 3, 4, 6)}
  for s, st in states.items():
    cp.save(st, data_position=10 * s)
  cp.wait()
  assert cp.manager.all_steps() == [4, 6]      # step 3 is not a save step; keep the last 2
  restored, meta = cp.restore(_abstract(states[6]))
  assert meta['data_position'] == 60
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(states[6])):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(restored) == jax.tree.structure(states[6])
  older, meta4 = cp.restore(_abstract(states[4]), step=4)
  np.testing.assert_array_equal(older.params['token_embedder']['embedding'],
                                states[4].params['token_embedder']['embedding'])
  cp.close()


def test_unfinished_save_is_ignored(tmp_path):
  cp = ck.Checkpointer(str(tmp_path), ck.CheckpointConfig(period=1))
  state = _state(_params(), step=1)
  cp.save(state, data_position=1)
  cp.close()
  # A crash mid-save leaves orbax's temporary directory behind; it must not count.
  os.makedirs(tmp_path / 'checkpoints' / '2.orbax-checkpoint-tmp-1234' / 'state')
  cp2 = ck.Checkpointer(str(tmp_path), ck.CheckpointConfig(period=1))
  assert cp2.latest_step() == 1
  restored, _ = cp2.restore(_abstract(state))
  np.testing.assert_array_equal(restored.step, 1)
  cp2.close()


def test_resume_refuses_a_checkpoint_of_another_shape(tmp_path):
  cp = ck.Checkpointer(str(tmp_path), ck.CheckpointConfig(period=1))
  cp.save(_state(_params(width=4), step=1), data_position=1)
  cp.wait()
  cp.check_compatible(ts.param_shapes(_params(width=4)))   # same shapes: fine
  with pytest.raises(ValueError, match='different shape') as err:
    cp.check_compatible(ts.param_shapes(_params(width=8)))
  msg = str(err.value)
  assert 'token_embedder/embedding: model (10, 8) vs checkpoint (10, 4)' in msg
  assert 'encoder/layers_0/mlp/wi/kernel' in msg
  cp.close()


def test_initial_checkpoint_partial_restore_and_errors(tmp_path):
  cp = ck.Checkpointer(str(tmp_path / 'src'), ck.CheckpointConfig(period=1))
  saved = _params(width=4, seed=3)
  cp.save(_state(saved, step=1), data_position=1)
  cp.close()
  fresh = _params(width=4, seed=9)
  for path in (tmp_path / 'src', tmp_path / 'src' / 'checkpoints',
               tmp_path / 'src' / 'checkpoints' / '1'):
    got = ck.restore_initial_params(ck.CheckpointConfig(initial_checkpoint_path=str(path)),
                                    fresh)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(saved)):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r'(?s)does not fit the model:.*token_embedder/embedding: '
                                       r'model \(10, 8\) vs checkpoint \(10, 4\)'):
    ck.restore_initial_params(ck.CheckpointConfig(initial_checkpoint_path=str(tmp_path / 'src')),
                              _params(width=8))
  with pytest.raises(ValueError, match='does not exist'):
    ck.resolve_step_dir(str(tmp_path / 'nowhere'))
  # A model with a param the checkpoint lacks: an error, unless allowed.
  bigger = dict(fresh, extra={'kernel': jnp.ones((2,))})
  cfg = ck.CheckpointConfig(initial_checkpoint_path=str(tmp_path / 'src'))
  with pytest.raises(ValueError, match='extra/kernel: model \\(2,\\), missing in checkpoint'):
    ck.restore_initial_params(cfg, bigger)
  got = ck.restore_initial_params(
      ck.CheckpointConfig(initial_checkpoint_path=str(tmp_path / 'src'),
                          allow_missing_params=True), bigger)
  np.testing.assert_array_equal(got['extra']['kernel'], 1.0)


def test_upcycle_from_a_dense_checkpoint(tmp_path):
  cp = ck.Checkpointer(str(tmp_path), ck.CheckpointConfig(period=1))
  dense = _params(width=4, seed=5)
  cp.save(_state(dense, step=1), data_position=1)
  cp.close()
  fresh_moe = _params(width=4, experts=3, seed=6)
  got = ck.restore_initial_params(
      ck.CheckpointConfig(initial_checkpoint_path=str(tmp_path), upcycle_from_dense=True),
      fresh_moe)
  moe = got['encoder']['layers_0']['moe']
  mlp = dense['encoder']['layers_0']['mlp']
  for e in range(3):
    np.testing.assert_array_equal(moe['experts']['wi'][e], mlp['wi']['kernel'])
    np.testing.assert_array_equal(moe['experts']['wo'][e], mlp['wo']['kernel'])
  np.testing.assert_array_equal(moe['router']['kernel'],
                                fresh_moe['encoder']['layers_0']['moe']['router']['kernel'])
  np.testing.assert_array_equal(got['token_embedder']['embedding'],
                                dense['token_embedder']['embedding'])
