"""Damaged checkpoints: a real truncated file and a real overwritten block are named (step, file,
reason), the newest intact earlier step is restored with a warning (or refused on request), and
nothing is deleted. Restoring is silent about orbax's step metadata."""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from moe_flan.trainer import checkpoint_integrity as integrity
from moe_flan.trainer import checkpoints as ck
from moe_flan.trainer import optimizers, train_state as ts


def _state(step):
  rs = np.random.RandomState(step)
  params = {'a': {'kernel': jnp.asarray(rs.randn(64, 256).astype(np.float32))},
            'b': {'kernel': jnp.asarray(rs.randn(256, 64).astype(np.float32))}}
  tx = optimizers.make_optimizer(optimizers.OptimizerConfig(min_dim_size_to_factor=2))
  return ts.new_state(params, tx, jax.random.PRNGKey(step)).replace(
      step=jnp.asarray(step, jnp.int32))


def _abstract(state):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def _save(model_dir, steps, **cfg):
  cp = ck.Checkpointer(model_dir, ck.CheckpointConfig(period=1, keep=5, **cfg))
  for s in steps:
    cp.save(_state(s), data_position=10 * s)
  cp.close()


def _largest_data_file(step_dir):
  """The biggest array data file of a step (relative path), where the params' bytes live."""
  files = [os.path.relpath(os.path.join(root, n), step_dir)
           for root, _, names in os.walk(os.path.join(step_dir, 'state')) for n in names
           if os.path.basename(root) == 'd']
  return max(files, key=lambda f: os.path.getsize(os.path.join(step_dir, f)))


def _truncate(path):
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.truncate(size // 2)
  return size


def _overwrite_block(path):
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size // 2)
    f.write(b'\xab' * 4096)


def _listing(directory):
  return sorted((os.path.relpath(os.path.join(r, n), directory),
                 os.path.getsize(os.path.join(r, n)))
                for r, _, names in os.walk(directory) for n in names)


def _assert_state_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _warnings(caplog):
  return '\n'.join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_truncated_latest_step_is_named_and_an_intact_step_restored(tmp_path, caplog):
  model_dir = str(tmp_path)
  _save(model_dir, (1, 2, 3))
  step3 = os.path.join(model_dir, 'checkpoints', '3')
  assert all(integrity.is_sealed(os.path.join(model_dir, 'checkpoints', str(s)))
             for s in (1, 2, 3))
  damaged = _largest_data_file(step3)
  written = _truncate(os.path.join(step3, damaged))
  before = _listing(step3)

  cp = ck.Checkpointer(model_dir, ck.CheckpointConfig(period=1, keep=5))
  cp.check_compatible(ts.param_shapes(_state(3).params))   # skips the damaged step, no error
  with caplog.at_level(logging.WARNING):
    state, meta = cp.restore(_abstract(_state(3)))
  _assert_state_equal(state, _state(2))
  assert meta['data_position'] == 20
  warning = _warnings(caplog)
  assert f'checkpoint step 3 ({step3}) is damaged: {damaged} is truncated' in warning
  assert f'({written // 2} of {written} bytes)' in warning
  assert 'Falling back to checkpoint step 2' in warning
  # Nothing is deleted: the damaged step moved aside, byte for byte; step 3 can be saved again.
  moved = os.path.join(model_dir, 'checkpoints_corrupt', '3')
  assert f'moved to {moved}' in warning
  assert not os.path.exists(step3) and _listing(moved) == before
  assert cp.save(_state(3), data_position=30) and cp.latest_step() == 3
  cp.close()
  restored, _ = ck.Checkpointer(model_dir, ck.CheckpointConfig()).restore(_abstract(_state(3)))
  _assert_state_equal(restored, _state(3))


def test_overwritten_block_is_caught_by_its_checksum(tmp_path, caplog):
  model_dir = str(tmp_path)
  _save(model_dir, (1, 2))
  step2 = os.path.join(model_dir, 'checkpoints', '2')
  damaged = _largest_data_file(step2)
  _overwrite_block(os.path.join(step2, damaged))
  before = _listing(step2)

  # Fallback off: one error naming step, file and reason; nothing moved.
  cp = ck.Checkpointer(model_dir, ck.CheckpointConfig(fallback_to_intact=False))
  with pytest.raises(ck.CorruptCheckpointError) as err:
    cp.restore(_abstract(_state(2)))
  assert str(err.value).startswith(f'checkpoint step 2 ({step2}) is damaged: {damaged} fails '
                                   'its checksum')
  assert _listing(step2) == before
  cp.close()
  # Evaluation / inference path: the newest intact step, the damaged one left in place.
  with caplog.at_level(logging.WARNING):
    used, flat = ck.load_params_from(model_dir)
  assert used == os.path.join(model_dir, 'checkpoints', '1')
  np.testing.assert_array_equal(flat['a/kernel'], _state(1).params['a']['kernel'])
  assert 'fails its checksum' in _warnings(caplog) and 'left in place' in _warnings(caplog)
  assert _listing(step2) == before
  with pytest.raises(ck.CorruptCheckpointError, match='step 2 .* fails its checksum'):
    ck.load_params(step2)      # a step named explicitly is never swapped for another
  with pytest.raises(ck.CorruptCheckpointError, match='step 2 .* fails its checksum'):
    ck.load_params(model_dir, fallback=False)


def test_unsealed_step_that_orbax_cannot_read_falls_back(tmp_path, caplog):
  model_dir = str(tmp_path)
  _save(model_dir, (1,))
  _save(model_dir, (2,), checksums=False)     # e.g. killed between commit and sealing
  step2 = os.path.join(model_dir, 'checkpoints', '2')
  assert not integrity.is_sealed(step2)
  _truncate(os.path.join(step2, _largest_data_file(step2)))
  cp = ck.Checkpointer(model_dir, ck.CheckpointConfig())
  with caplog.at_level(logging.WARNING):
    state, _ = cp.restore(_abstract(_state(2)))
  cp.close()
  _assert_state_equal(state, _state(1))
  assert 'step 2' in _warnings(caplog) and 'records no checksums' in _warnings(caplog)


def test_every_step_damaged_is_an_error_and_nothing_moves(tmp_path):
  model_dir = str(tmp_path)
  _save(model_dir, (1, 2))
  for s in (1, 2):
    step_dir = os.path.join(model_dir, 'checkpoints', str(s))
    _truncate(os.path.join(step_dir, _largest_data_file(step_dir)))
  cp = ck.Checkpointer(model_dir, ck.CheckpointConfig())
  with pytest.raises(ck.CorruptCheckpointError, match='no intact checkpoint.*step 2.*step 1'):
    cp.restore(_abstract(_state(2)))
  cp.close()
  assert sorted(os.listdir(os.path.join(model_dir, 'checkpoints'))) == ['1', '2']


def test_restoring_is_silent_about_step_metadata(tmp_path, caplog):
  """Trained steps are read as orbax composites and converted directories as plain items, so
  orbax never warns 'Metadata file does not exist'."""
  model_dir = str(tmp_path / 'run')
  _save(model_dir, (1,))
  converted = str(tmp_path / 'converted')
  with ocp.StandardCheckpointer() as writer:     # the layout `moe_flan.convert` writes
    writer.save(os.path.join(converted, 'state'), {'params': _state(4).params})
  step1 = os.path.join(model_dir, 'checkpoints', '1')
  with caplog.at_level(logging.DEBUG):
    assert ck.saved_param_shapes(step1) == {'a/kernel': (64, 256), 'b/kernel': (256, 64)}
    np.testing.assert_array_equal(ck.load_params(model_dir)['b/kernel'],
                                  _state(1).params['b']['kernel'])
    np.testing.assert_array_equal(ck.load_params(converted)['a/kernel'],
                                  _state(4).params['a']['kernel'])
    cp = ck.Checkpointer(model_dir, ck.CheckpointConfig())
    cp.check_compatible(ts.param_shapes(_state(1).params))
    cp.restore(_abstract(_state(1)))
    cp.close()
  logged = '\n'.join(r.getMessage() for r in caplog.records)
  assert 'Metadata file does not exist' not in logged
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], logged
