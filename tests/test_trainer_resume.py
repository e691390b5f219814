"""Exact resume across a real SIGKILL, and SIGTERM's final save, with the train CLI in subprocesses.

One uninterrupted run of STEPS steps is the reference. A second run is SIGKILLed mid-way (in the
reference's process, after it: tests/multihost_train_twice.py; a process start costs seconds of
imports), restarted and SIGTERMed mid-way (it must save and exit 75, "preempted: requeue"),
restarted again and finished; its per-step losses must equal the reference's exactly (CPU, same
program, same data positions, dropout on so the RNG is part of the state).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAST_COMPILE_ENV, JAX_CACHE_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40
TINY_GIN = """
include 'runs/quickstart.gin'
T5Config.emb_dim = 16
T5Config.num_heads = 2
T5Config.head_dim = 8
T5Config.mlp_dim = 16
T5Config.num_encoder_layers = 1
T5Config.num_decoder_layers = 1
MoeConfig.num_experts = 4
MoeConfig.expert_mlp_dim = 16
MoeConfig.group_size = 64
MoeConfig.encoder_sparse_layout = 'all'
MoeConfig.decoder_sparse_layout = 'all'
TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}
BATCH_SIZE = 4
DROPOUT_RATE = 0.1
LOG_PERIOD = 1
LEARNING_RATE = 1e-2
ScheduleConfig.warmup_steps = 0
DataConfig.truncation_check_examples = 0
# Four tasks are still a sampled mixture (its data position is part of the state) but build their
# tf.data pipelines in a tenth of the time of the 45 tasks of the whole embedded mixture.
MIXTURE_OR_TASK_NAME = 'flan_embedded_n4'
RunConfig.final_eval_mixtures = ()
RunConfig.write_plots = False
"""


def _env():
  env = dict(os.environ)   # FAST_COMPILE_ENV below replaces XLA_FLAGS: one CPU device
  env.update(JAX_COMPILATION_CACHE_DIR=JAX_CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO, **FAST_COMPILE_ENV)
  return env


def _start(gin_file, model_dir, steps, period, log, first_dir=None):
  """`moe_flan.train`; with `first_dir`, the same process first trains that run to its end."""
  env, command = _env(), ['-m', 'moe_flan.train']
  if first_dir:
    env.update(SCRATCH_MODEL_DIR=str(first_dir), SCRATCH_STEPS=str(steps))
    command = [os.path.join(REPO, 'tests', 'multihost_train_twice.py')]
  cmd = [sys.executable, *command, f'--gin_file={gin_file}', f"--gin.MODEL_DIR='{model_dir}'",
         f'--gin.TRAIN_STEPS={steps}', f'--gin.CHECKPOINT_PERIOD={period}']
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _losses(model_dir):
  path = os.path.join(model_dir, 'metrics', 'train.jsonl')
  if not os.path.exists(path):
    return {}
  out = {}
  with open(path) as f:
    for line in f:
      if line.endswith('\n'):
        r = json.loads(line)
        out[r['step']] = r['loss']
  return out


def _committed(model_dir):
  d = os.path.join(model_dir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _run_until(gin_file, model_dir, past_step, sig, log_path, first_dir=None, timeout=600):
  """Starts a run to STEPS (after `first_dir`'s, if given); once it has started (printed its
  start line), logged a step past `past_step` and committed a checkpoint, sends `sig`. Returns
  the exit code."""
  with open(log_path, 'w') as log:
    proc = _start(gin_file, model_dir, STEPS, 8, log, first_dir)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
      with open(log_path) as f:
        started = 'moe_flan: ' in f.read()
      # The start line is printed after stale records of a killed run have been dropped.
      if started and max(_losses(model_dir), default=0) > past_step and _committed(model_dir):
        proc.send_signal(sig)
        break
      time.sleep(0.01)
    return proc.wait(timeout=timeout)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('resume')
  gin_file = root / 'tiny.gin'
  gin_file.write_text(TINY_GIN)
  ref_dir, dir_ = str(root / 'reference'), str(root / 'interrupted')
  logs = {name: str(root / f'{name}.log') for name in ('kill', 'term', 'end')}
  # A fresh MODEL_DIR has no stale records: the reference run's start line may stand for its own.
  rc_kill = _run_until(gin_file, dir_, 12, signal.SIGKILL, logs['kill'], first_dir=ref_dir)
  after_kill = _committed(dir_)
  rc_term = _run_until(gin_file, dir_, (after_kill or [0])[-1] + 3, signal.SIGTERM, logs['term'])
  logged_before_term = max(_losses(dir_))
  after_term = _committed(dir_)
  with open(logs['end'], 'w') as log:
    rc_end = _start(gin_file, dir_, STEPS, 8, log).wait(timeout=600)
  text = {}
  for name, path in logs.items():
    with open(path) as f:
      text[name] = f.read()
  return dict(ref=_losses(ref_dir), got=_losses(dir_), rc=(rc_kill, rc_term, rc_end),
              after_kill=after_kill, after_term=after_term, logged_before_term=logged_before_term,
              text=text)


def test_sigkill_then_restart_gives_identical_losses(runs):
  rc_kill, _, rc_end = runs['rc']
  ref_log, finished, kill_log = runs['text']['kill'].partition(
      f'moe_flan.train: finished at step {STEPS}\n')
  assert finished, ref_log[-3000:]                        # the reference run, then ...
  assert rc_kill == -signal.SIGKILL, kill_log[-3000:]     # ... the run killed before its end
  assert rc_end == 0, runs['text']['end'][-3000:]
  assert runs['after_kill'], 'no checkpoint was committed before the kill'
  resumed = runs['after_kill'][-1]
  assert f'resuming from step {resumed} ' in runs['text']['term']
  assert sorted(runs['ref']) == sorted(runs['got']) == list(range(1, STEPS + 1))
  assert runs['got'] == runs['ref']                      # exact, step by step
  assert runs['ref'][STEPS] < runs['ref'][1]              # and it did learn something
  for name in ('term', 'end'):     # resumed runs restore without orbax or TensorFlow noise
    for noise in ('Metadata file does not exist', 'cuInit', 'Path not found', 'DAMAGED'):
      assert noise not in runs['text'][name], runs['text'][name][-3000:]


def test_sigterm_saves_and_exits_cleanly(runs):
  rc_term = runs['rc'][1]
  assert rc_term == 75, runs['text']['term'][-3000:]
  assert 'stopped by SIGTERM after saving' in runs['text']['term']
  saved = runs['after_term'][-1]
  assert saved == runs['logged_before_term']             # saved exactly where it stopped
  assert f'resuming from step {saved} ' in runs['text']['end']
