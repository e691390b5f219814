"""Multi-host on one machine: 2 processes x 2 CPU devices (gloo, coordinator on 127.0.0.1),
started by launch/local_multiprocess.sh, train the same steps as this process on 4 devices; each
process feeds only its half of every batch. Losses and final params must agree."""
import json
import os
import subprocess
import sys

import jax
import numpy as np

import multihost_worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'multihost_worker.py')


def _env():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  return env


def test_two_processes_match_one_process(tmp_path):
  multi_out = tmp_path / 'multi.json'
  multi = subprocess.Popen(
      [os.path.join(ROOT, 'launch', 'local_multiprocess.sh'), '2', '--local_devices=2',
       f'--out={multi_out}'],
      env={**_env(), 'COMMAND': WORKER, 'PYTHON': sys.executable, 'DEVICES_PER_PROCESS': '2',
           'LOG_DIR': str(tmp_path / 'logs'), 'TIMEOUT_S': '540'},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    # Meanwhile, the same training in this process on 4 of its 8 devices.
    want = multihost_worker.train(jax.devices()[:4])
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
