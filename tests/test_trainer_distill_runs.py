"""Distillation runs (gin/runs/distill.gin) on a single downstream task, in one process and in two
(jax.distributed, 2 x 2 CPU devices, gloo, started by launch/local_multiprocess.sh): the run
feeds that task's batches to the teacher, two processes log the losses of one, and the run's
loss_curves.png plots train.jsonl's total, cross entropy and KL."""
import json
import os
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest
import seqio

from moe_flan.trainer import data as data_lib, distill, loop, plots

from conftest import FAST_COMPILE_ENV, JAX_CACHE_DIR
from test_trainer_distill import STUDENT_BINDINGS, _partitioner, _save_random, student_model
from test_trainer_distill import teacher_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures('persistent_compilation_cache')

TASK = 'emb_nli'                 # a single downstream task (seqio.Task), as finetune.gin's example
STEPS = 3
LENGTHS = {'inputs': 32, 'targets': 8}
FILES = ('models/t5_1_1_tiny.gin', 'runs/distill.gin', 'partitioning/expert_parallel.gin')
LOSS_KEYS = ('loss', 'cross_entropy', 'distill/kl', 'distill/teacher_cross_entropy')


def _bindings(model_dir, teacher_dir):
  return STUDENT_BINDINGS + [
      f"MODEL_DIR = '{model_dir}'", f"TEACHER_CHECKPOINT_PATH = '{teacher_dir}'",
      f"MIXTURE_OR_TASK_NAME = '{TASK}'", f'TRAIN_STEPS = {STEPS}',
      f'TASK_FEATURE_LENGTHS = {LENGTHS}', 'BATCH_SIZE = 8', 'DROPOUT_RATE = 0.1',
      'LOG_PERIOD = 1', 'CHECKPOINT_PERIOD = 100', 'EVAL_PERIOD = 0', 'LEARNING_RATE = 3e-2',
      'DataConfig.truncation_check_examples = 0']


def _records(model_dir):
  with open(os.path.join(model_dir, 'metrics', 'train.jsonl')) as f:
    return [json.loads(line) for line in f]


def _start_two_processes(root, teacher_dir):
  """The same run as `_run_here`, by 2 processes x 2 devices (expert axis 4: each process
  holds 2 of the teacher's 8 experts and feeds half of each batch)."""
  env = dict(os.environ)   # FAST_COMPILE_ENV below replaces XLA_FLAGS
  env.update(PYTHONPATH=REPO, PYTHON=sys.executable, DEVICES_PER_PROCESS='2',
             LOG_DIR=str(root / 'logs'), TIMEOUT_S='540', JAX_COMPILATION_CACHE_DIR=JAX_CACHE_DIR,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', **FAST_COMPILE_ENV)
  flags = [f'--gin_file={f}' for f in FILES] + [
      f'--gin_bindings={b}' for b in _bindings(root / 'two', teacher_dir)
      + ['EXPERT_PARTITIONS = 4', 'RunConfig.write_plots = False']]
  return subprocess.Popen([os.path.join(REPO, 'launch', 'local_multiprocess.sh'), '2', *flags],
                          cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _run_here(model_dir, teacher_dir):
  from moe_flan.trainer import cli  # pylint: disable=g-import-not-at-top
  cli.configure_gin(cli.Flags(tuple(os.path.join(REPO, 'gin', f) for f in FILES),
                              tuple(_bindings(model_dir, teacher_dir)), ()))
  try:
    return loop.train()
  finally:
    gin.clear_config()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The single-task distillation run in this process (8 devices) and, meanwhile, in two."""
  root = tmp_path_factory.mktemp('distill_runs')
  teacher_dir = _save_random(root / 'teacher', teacher_model(), seed=1)[0]
  two = _start_two_processes(root, teacher_dir)
  try:
    result = _run_here(str(root / 'one'), teacher_dir)
  finally:
    two_log = two.communicate(timeout=540)[0]
  assert two.returncode == 0, two_log[-3000:]
  return dict(result=result, one=str(root / 'one'), two=str(root / 'two'), teacher=teacher_dir)


def test_a_single_task_run_feeds_that_tasks_batches_to_the_teacher(runs):
  """The logged teacher cross entropy of each step equals the teacher's, computed here, on that
  step's batch of the single task: the run distils on the task's data, not the mixture's."""
  assert isinstance(seqio.get_mixture_or_task(TASK), seqio.Task)
  assert runs['result'].step == STEPS
  records = _records(runs['one'])
  assert [r['step'] for r in records] == list(range(1, STEPS + 1))
  teacher = distill.build_teacher(distill.DistillConfig(runs['teacher']), student_model(),
                                  _partitioner())
  params = teacher.restore_params()
  batches = data_lib.host_slices(data_lib.DataConfig(TASK, LENGTHS, batch_size=8), 0, 1)
  logits_fn = jax.jit(teacher.logits)
  for record, batch in zip(records, batches):
    logits = np.asarray(logits_fn(params, batch), np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    targets, w = batch['decoder_target_tokens'], batch['decoder_loss_weights']
    ce = -(np.take_along_axis(log_p, targets[..., None], -1)[..., 0] * w).sum() / w.sum()
    np.testing.assert_allclose(record['distill/teacher_cross_entropy'], ce, rtol=1e-5)
    assert np.isfinite(record['distill/kl']) and record['distill/kl'] > 0


def test_two_processes_log_the_losses_of_one(runs):
  one, two = _records(runs['one']), _records(runs['two'])
  assert [r['step'] for r in two] == list(range(1, STEPS + 1))
  with open(os.path.join(runs['two'], 'mesh.json')) as f:
    assert json.load(f)['processes'] == 2
  for a, b in zip(one, two):
    for key in LOSS_KEYS:
      np.testing.assert_allclose(b[key], a[key], rtol=2e-5, err_msg=f'step {a["step"]} {key}')


def test_the_runs_loss_plot_draws_train_jsonl(runs):
  """loss_curves.png is written; its figure's total, cross entropy and KL curves are exactly
  train.jsonl's values at its steps, each in its own panel."""
  with open(os.path.join(runs['one'], plots.LOSS_PNG), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  records = _records(runs['one'])
  fig = plots.loss_figure(records)
  lines = {line.get_label(): (ax.get_title(), line) for ax in fig.axes for line in ax.lines}
  panels = set()
  for key in LOSS_KEYS:
    title, line = lines[f'train {key}']
    panels.add(title)
    np.testing.assert_array_equal(line.get_xdata(), [r['step'] for r in records])
    np.testing.assert_array_equal(line.get_ydata(), [r[key] for r in records])
  assert len(panels) == 3                      # total | student and teacher CE | KL
