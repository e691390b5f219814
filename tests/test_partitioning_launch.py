"""launch/ scripts: each documents its command, composes the right per-host command, and fails
fast on missing settings. (tests/test_partitioning_multihost.py runs local_multiprocess.sh.)"""
import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ['tpu_pod.sh', 'gpu_slurm.sbatch', 'local_multiprocess.sh']


def _run(script, *args, **env):
  return subprocess.run(['bash', os.path.join(ROOT, 'launch', script), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=60,
                        env={**os.environ, **env})


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_open_with_their_command(script):
  with open(os.path.join(ROOT, 'launch', script)) as f:
    head = f.read(1500)
  assert head.startswith('#!/usr/bin/env bash\n#')
  assert f'launch/{script}' in head and '--gin_file=gin/' in head and 'partitioning/' in head


def test_tpu_pod_runs_the_same_command_on_every_worker():
  proc = _run('tpu_pod.sh', '--gin_file=gin/runs/finetune.gin', "--gin.MODEL_DIR='gs://b/r'",
              DRY_RUN='1', TPU_NAME='pod', ZONE='us-central2-b')
  assert proc.returncode == 0, proc.stderr
  words = shlex.split(proc.stdout.splitlines()[-1])
  assert words[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'pod']
  assert '--worker=all' in words and '--zone=us-central2-b' in words
  remote = shlex.split(next(w for w in words if w.startswith('--command='))[len('--command='):])
  assert remote[remote.index('-m') + 1:] == [
      'moe_flan.train', '--distributed_auto_detect', '--gin_file=gin/runs/finetune.gin',
      "--gin.MODEL_DIR='gs://b/r'"]


def test_tpu_pod_needs_a_tpu_name():
  proc = _run('tpu_pod.sh', DRY_RUN='1', TPU_NAME='', ZONE='z')
  assert proc.returncode != 0 and 'TPU_NAME' in proc.stderr


def test_slurm_starts_one_process_per_gpu():
  proc = _run('gpu_slurm.sbatch', '--gin_file=gin/runs/finetune.gin', DRY_RUN='1',
              GPUS_PER_NODE='4')
  assert proc.returncode == 0, proc.stderr
  words = shlex.split(proc.stdout)
  assert words[0] == 'srun' and '--ntasks-per-node=4' in words and '--gpus-per-task=1' in words
  assert words[-3:] == ['moe_flan.train', '--distributed_auto_detect',
                        '--gin_file=gin/runs/finetune.gin']


def test_local_multiprocess_usage_error():
  proc = _run('local_multiprocess.sh')
  assert proc.returncode == 2 and 'usage' in proc.stderr


def test_local_multiprocess_stops_everything_when_one_process_fails(tmp_path):
  # Process 1 exits with an error at once; process 0 would sleep for a minute.
  script = tmp_path / 'p.py'
  script.write_text('import sys, time\n'
                    'if "--process_id=1" in sys.argv: sys.exit("process 1 failed")\n'
                    'time.sleep(60)\n')
  proc = _run('local_multiprocess.sh', '2', COMMAND=str(script), LOG_DIR=str(tmp_path / 'logs'))
  assert proc.returncode == 1
  assert 'process 1 failed' in proc.stderr
