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


def _remote(line):
  words = shlex.split(line)
  return words, shlex.split(next(w for w in words if w.startswith('--command='))[
      len('--command='):])


def test_tpu_pod_external_coordinator_runs_beside_worker_0_for_the_whole_run():
  proc = _run('tpu_pod.sh', '--gin_file=gin/runs/finetune.gin',
              '--distributed_heartbeat_timeout_s=30', DRY_RUN='1', TPU_NAME='pod', ZONE='z',
              EXTERNAL_COORDINATOR='1', NUM_HOSTS='4')
  assert proc.returncode == 0, proc.stderr
  start, train, stop = proc.stdout.splitlines()
  words, remote = _remote(start)
  assert '--worker=0' in words and '--worker=all' not in words
  # The port is the one JAX's Cloud TPU detection points every worker at by default.
  assert remote[remote.index('-m') + 1:remote.index('>')] == [
      'moe_flan.partitioning.coordinator', '--bind_address=[::]:8482', '--num_processes=4',
      '--heartbeat_timeout_s=30']
  assert remote[-4:] == ['echo', '$!', '>', 'coordinator.pid'] and 'nohup' in remote
  words, remote = _remote(train)
  assert '--worker=all' in words and 'JAX_COORDINATOR_PORT=8482' in remote
  assert remote[remote.index('-m') + 1:] == [
      'moe_flan.train', '--distributed_auto_detect', '--external_coordinator',
      '--gin_file=gin/runs/finetune.gin', '--distributed_heartbeat_timeout_s=30']
  words, remote = _remote(stop)
  assert '--worker=0' in words and remote[-3:] == ['kill', '$(cat', 'coordinator.pid)']


def test_tpu_pod_external_coordinator_needs_the_host_count():
  proc = _run('tpu_pod.sh', DRY_RUN='1', TPU_NAME='pod', ZONE='z', EXTERNAL_COORDINATOR='1')
  assert proc.returncode != 0 and 'NUM_HOSTS' in proc.stderr and not proc.stdout


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


def test_slurm_external_coordinator_serves_where_jax_looks(monkeypatch):
  proc = _run('gpu_slurm.sbatch', '--gin_file=gin/runs/finetune.gin', DRY_RUN='1',
              GPUS_PER_NODE='4', SLURM_JOB_ID='1234', SLURM_JOB_NUM_NODES='3',
              EXTERNAL_COORDINATOR='1')
  assert proc.returncode == 0, proc.stderr
  coordinator, train = (shlex.split(line) for line in proc.stdout.splitlines())
  # Independently: the address JAX's own SLURM detection gives every task of job 1234.
  from jax._src.clusters import slurm_cluster
  monkeypatch.setenv('SLURM_JOB_ID', '1234')
  monkeypatch.setenv('SLURM_STEP_NODELIST', 'node[001-003]')
  port = slurm_cluster.SlurmCluster.get_coordinator_address(None, None).split(':')[-1]
  assert coordinator == ['env', 'JAX_PLATFORMS=cpu', 'python3', '-m',
                         'moe_flan.partitioning.coordinator', f'--bind_address=[::]:{port}',
                         '--num_processes=12']
  assert train[0] == 'srun' and train[-4:] == [
      'moe_flan.train', '--distributed_auto_detect', '--external_coordinator',
      '--gin_file=gin/runs/finetune.gin']
