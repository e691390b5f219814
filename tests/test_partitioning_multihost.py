"""Multi-host on one machine: 2 processes x 2 CPU devices (gloo, coordinator on 127.0.0.1),
started by launch/local_multiprocess.sh, train the same steps as 1 process x 4 devices, and each
process feeds only its half of every batch. Losses and final params must agree."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'multihost_worker.py')


def _env():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  return env


def test_two_processes_match_one_process(tmp_path):
  multi_out, single_out = tmp_path / 'multi.json', tmp_path / 'single.json'
  multi = subprocess.Popen(
      [os.path.join(ROOT, 'launch', 'local_multiprocess.sh'), '2', '--local_devices=2',
       f'--out={multi_out}'],
      env={**_env(), 'COMMAND': WORKER, 'PYTHON': sys.executable, 'DEVICES_PER_PROCESS': '2',
           'LOG_DIR': str(tmp_path / 'logs'), 'TIMEOUT_S': '540'},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  single = subprocess.run([sys.executable, WORKER, '--local_devices=4', f'--out={single_out}'],
                          env=_env(), capture_output=True, text=True, timeout=540)
  multi_log = multi.communicate(timeout=540)[0]
  assert single.returncode == 0, single.stderr[-3000:]
  assert multi.returncode == 0, multi_log[-3000:]
  got, want = json.loads(multi_out.read_text()), json.loads(single_out.read_text())
  assert got['process_count'] == 2 and want['process_count'] == 1
  assert got['num_shards'] == 2 and want['num_shards'] == 1   # each host read half the batch
  np.testing.assert_allclose(got['losses'], want['losses'], rtol=1e-5)
  assert want['losses'][-1] < want['losses'][0]               # it trained
  assert got['param_sq_sums'].keys() == want['param_sq_sums'].keys()
  for name, value in want['param_sq_sums'].items():
    np.testing.assert_allclose(got['param_sq_sums'][name], value, rtol=1e-5, err_msg=name)
