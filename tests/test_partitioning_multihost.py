"""Multi-host on one machine: 2 processes x 2 CPU devices (gloo, coordinator on 127.0.0.1),
started by launch/local_multiprocess.sh, train the same steps as this process on 4 devices; each
process feeds only its half of every batch. Losses and final params must agree.

Both processes also save the final (expert-sharded) TrainState with the trainer's Checkpointer into
one directory and log losses through the MetricsWriter: the checkpoint must be complete and restore
here, on the single-process 4-device shardings, bit-exactly to the multi-process final params, and
the metrics file must have been written by process 0 alone."""
import json
import os
import subprocess
import sys

import flax
import jax
import numpy as np

from moe_flan.trainer import metrics

import multihost_worker
from conftest import FAST_COMPILE_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'multihost_worker.py')


def _env():
  env = dict(os.environ)   # FAST_COMPILE_ENV below replaces XLA_FLAGS
  # Compiled as this process compiles its reference run.
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, **FAST_COMPILE_ENV)
  return env


def test_two_processes_match_one_process(tmp_path):
  multi_out = tmp_path / 'multi.json'
  model_dir = tmp_path / 'model'
  multi = subprocess.Popen(
      [os.path.join(ROOT, 'launch', 'local_multiprocess.sh'), '2', '--local_devices=2',
       f'--out={multi_out}', f'--model_dir={model_dir}'],
      env={**_env(), 'COMMAND': WORKER, 'PYTHON': sys.executable, 'DEVICES_PER_PROCESS': '2',
           'LOG_DIR': str(tmp_path / 'logs'), 'TIMEOUT_S': '540'},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    # Meanwhile, the same training in this process on 4 of its 8 devices.
    want_state, want = multihost_worker.run(jax.devices()[:4])
  finally:
    multi_log = multi.communicate(timeout=540)[0]
  assert multi.returncode == 0, multi_log[-3000:]
  got = json.loads(multi_out.read_text())
  assert got['process_count'] == 2 and want['process_count'] == 1
  assert got['num_shards'] == 2 and want['num_shards'] == 1   # each host read half the batch
  np.testing.assert_allclose(got['losses'], want['losses'], rtol=1e-5)
  assert want['losses'][-1] < want['losses'][0]               # it trained
  assert got['param_sq_sums'].keys() == want['param_sq_sums'].keys()
  for name, value in want['param_sq_sums'].items():
    np.testing.assert_allclose(got['param_sq_sums'][name], value, rtol=1e-5, err_msg=name)

  _check_checkpoint(model_dir, want_state, np.load(f'{multi_out}.params.npz'))
  _check_metrics(model_dir, got['losses'])


def _check_checkpoint(model_dir, want_state, multi_params):
  """The 2-process checkpoint is complete and restores bit-exactly onto 4 local devices."""
  ckpt_dir = model_dir / 'checkpoints'
  # Complete: one finalized step directory (orbax renames its tmp dir only once every process
  # has written and process 0 committed), with both items; no temporaries left behind.
  assert sorted(os.listdir(ckpt_dir)) == [str(multihost_worker.NUM_STEPS)], os.listdir(ckpt_dir)
  step_dir = ckpt_dir / str(multihost_worker.NUM_STEPS)
  assert {'state', 'meta', 'commit_success.txt'} <= set(os.listdir(step_dir)), os.listdir(step_dir)
  leftovers = [os.path.join(d, n) for d, dirs, files in os.walk(ckpt_dir) for n in dirs + files
               if 'tmp' in n]
  assert not leftovers, leftovers
  # Cooperative: each process wrote its own shards (orbax OCDBT keeps one store per process).
  for pid in (0, 1):
    shards = step_dir / 'state' / f'ocdbt.process_{pid}' / 'd'
    assert shards.is_dir() and os.listdir(shards), f'process {pid} wrote no array data'

  restored, meta = multihost_worker.restore(str(model_dir), want_state)
  assert meta['step'] == multihost_worker.NUM_STEPS == int(restored.step)
  assert meta['data_position'] == multihost_worker.NUM_STEPS
  got = flax.traverse_util.flatten_dict(restored.params, sep='/')
  want = flax.traverse_util.flatten_dict(want_state.params, sep='/')
  assert sorted(got) == sorted(want) == sorted(multi_params.files)
  experts = [k for k in got if '/experts/' in k]
  assert experts, sorted(got)
  for k in experts:   # the expert weights were split over both processes' devices
    assert want[k].sharding.spec[0] == 'expert', (k, want[k].sharding.spec)
  for k, leaf in got.items():
    # On this process's (1, 4, 1) mesh with the reference run's shardings ...
    assert leaf.sharding == want[k].sharding, k
    # ... holding exactly what the two processes had at the end of training.
    np.testing.assert_array_equal(np.asarray(leaf), multi_params[k], err_msg=k)
    np.testing.assert_allclose(np.asarray(leaf), np.asarray(want[k]), rtol=1e-5, atol=1e-6,
                               err_msg=k)


def _check_metrics(model_dir, losses):
  """Both processes logged every step; only process 0's writer touched the disk."""
  records = metrics.read_jsonl(str(model_dir / 'metrics' / 'train.jsonl'))
  assert [r['step'] for r in records] == [1, 2, 3], records   # once each, not once per process
  assert [r['writer_process'] for r in records] == [0.0] * 3, records
  np.testing.assert_allclose([r['loss'] for r in records], losses, rtol=0)
  assert os.listdir(model_dir / 'metrics') == ['train.jsonl']
