"""Two-process train CLI runs (2 x 2 CPU devices, gloo, coordinator on 127.0.0.1): preemption and
a lost process, with real signals.

- SIGTERM to process 1 only: both processes stop after the same step, save one checkpoint of it
  together and exit 75 ("preempted: requeue") within a bounded time; the run resumed from it
  logs exactly the losses of an uninterrupted two-process run.
- SIGKILL to process 1: process 0 exits 1 within a bounded time with a one-line error naming
  process 1, without waiting for it and without the coordination service's C++ abort.

Two pairs of processes do the four runs (a process start costs seconds of imports): each first
trains one run to its end (tests/multihost_train_twice.py), then the run that is signalled.
- pair 1: the uninterrupted reference run, then the run SIGTERMed at process 1;
- pair 2: the SIGTERMed run resumed to its end, then the run SIGKILLed at process 1.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from moe_flan.trainer import metrics

from conftest import FAST_COMPILE_ENV, JAX_CACHE_DIR
from test_trainer_resume import TINY_GIN as RESUME_GIN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_TWICE = os.path.join(REPO, 'tests', 'multihost_train_twice.py')
STEPS = 8
BOUND_S = 150   # signal -> exit, on a loaded 2-core machine
HEARTBEAT_S = 10   # the killed run's: a silent process counts as lost after this
# The resume test's tiny model and run, without plots or a final evaluation.
TINY_GIN = RESUME_GIN + """
RunConfig.write_plots = False
RunConfig.final_eval_mixtures = ()
"""


def _port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(gin_file, first_dir, model_dir, log_prefix, *flags):
  """Both processes of a pair that first trains `first_dir` to step STEPS (from its latest
  checkpoint, if any), then trains `model_dir`; returns their Popen objects and log paths."""
  env = dict(os.environ)   # FAST_COMPILE_ENV below replaces XLA_FLAGS
  env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='2', PYTHONPATH=REPO,
             JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo', TF_CPP_MIN_LOG_LEVEL='2',
             JAX_COMPILATION_CACHE_DIR=JAX_CACHE_DIR,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             SCRATCH_MODEL_DIR=str(first_dir), SCRATCH_STEPS=str(STEPS),
             **FAST_COMPILE_ENV)
  port, procs, logs = _port(), [], []
  for pid in (0, 1):
    logs.append(f'{log_prefix}_{pid}.log')
    with open(logs[-1], 'w') as log:
      procs.append(subprocess.Popen(
          [sys.executable, TRAIN_TWICE, f'--gin_file={gin_file}',
           f"--gin.MODEL_DIR='{model_dir}'", f'--gin.TRAIN_STEPS={STEPS}',
           '--gin.CHECKPOINT_PERIOD=100', f'--coordinator_address=127.0.0.1:{port}',
           '--num_processes=2', f'--process_id={pid}', *flags],
          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs, logs


def _losses(model_dir):
  path = os.path.join(model_dir, 'metrics', 'train.jsonl')
  return {r['step']: r['loss'] for r in metrics.read_jsonl(path)} if os.path.exists(path) else {}


def _committed(model_dir):
  d = os.path.join(model_dir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _signal_after_step(procs, logs, model_dir, sig, step=2, timeout=900):
  """Sends `sig` to process 1 once step `step` is logged; returns (rcs, seconds to all exits)."""
  t0 = time.time()
  while max(_losses(model_dir), default=0) < step:
    assert all(p.poll() is None for p in procs), [t[-3000:] for t in _read(logs)]
    assert time.time() - t0 < timeout, 'no step logged in time'
    time.sleep(0.05)
  procs[1].send_signal(sig)
  t_sig = time.time()
  rcs = [p.wait(timeout=BOUND_S) for p in procs]
  return rcs, time.time() - t_sig


def _read(paths):
  out = []
  for path in paths:
    with open(path) as f:
      out.append(f.read())
  return out


def _kill_all(procs):
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  path = tmp_path_factory.mktemp('multihost_preemption')
  (path / 'tiny.gin').write_text(TINY_GIN)
  return path


@pytest.fixture(scope='module')
def runs(root):
  """The reference run and the SIGTERMed one (pair 1), its resumption and the SIGKILLed run
  (pair 2)."""
  gin_file, procs = root / 'tiny.gin', []
  dirs = {name: str(root / name) for name in ('ref', 'term', 'kill')}
  try:
    # One pair at a time: four processes on a 2-core machine can miss gloo's 30 s connection
    # deadline.
    term, term_logs = _start(gin_file, dirs['ref'], dirs['term'], root / 'term')
    procs += term
    rc_term, term_s = _signal_after_step(term, term_logs, dirs['term'], signal.SIGTERM)
    after_term = _committed(dirs['term'])
    ref_losses = _losses(dirs['ref'])   # the reference run had finished before it started
    # The kill run's heartbeat timeout is the pair's (set when jax.distributed starts).
    kill, kill_logs = _start(gin_file, dirs['term'], dirs['kill'], root / 'kill',
                             f'--distributed_heartbeat_timeout_s={HEARTBEAT_S}')
    procs += kill
    rc_kill, kill_s = _signal_after_step(kill, kill_logs, dirs['kill'], signal.SIGKILL)
  finally:
    _kill_all(procs)
  with open(os.path.join(dirs['ref'], 'mesh.json')) as f:
    mesh = json.load(f)
  with open(os.path.join(dirs['ref'], 'config.gin')) as f:
    config_gin = f.read()
  return dict(ref=ref_losses, got=_losses(dirs['term']), mesh=mesh, config_gin=config_gin,
              dirs=dirs, rc_term=rc_term, term_s=term_s, after_term=after_term,
              rc_kill=rc_kill, kill_s=kill_s,
              text=dict(term=_read(term_logs), kill=_read(kill_logs)))


def _two_runs(log: str):
  """A pair's log split after its first run's normal end: (first run's, second run's)."""
  first, finished, second = log.partition(f'moe_flan.train: finished at step {STEPS}\n')
  assert finished and finished not in second, log[-3000:]
  return first, second


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(runs):
  text = runs['text']
  ref, term = zip(*map(_two_runs, text['term']))   # the reference run ended before the other
  assert runs['rc_term'] == [75, 75], (text['term'][0][-3000:], text['term'][1][-3000:])
  assert runs['term_s'] < BOUND_S
  saved = runs['after_term'][-1]
  assert 2 <= saved < STEPS, runs['after_term']   # one checkpoint of the step both stopped at
  for log in term:   # both processes report the same step
    assert f'stopped by SIGTERM after saving step {saved}; exit status 75' in log, log[-3000:]
  resumed = _two_runs(text['kill'][0])[0]   # resumed, and ran to its end
  assert f'resuming from step {saved} ' in resumed, resumed[-3000:]
  assert sorted(runs['ref']) == sorted(runs['got']) == list(range(1, STEPS + 1))
  assert runs['got'] == runs['ref']                       # bit-identical, step by step
  # The run states its mesh first thing, and MODEL_DIR keeps it and the operative gin config.
  assert ('moe_flan: mesh data=4 x expert=1 x model=1 on 4 cpu device(s) in 2 process(es); '
          "MoE dispatch 'einsum'") in ref[0]
  assert runs['mesh'] == {'mesh': {'data': 4, 'expert': 1, 'model': 1}, 'processes': 2,
                          'devices': 4, 'local_devices': 2, 'platform': 'cpu',
                          'moe_dispatch': 'einsum'}
  # gin continues a long value on the next line ('MODEL_DIR = \\' + newline): compare unwrapped.
  unwrapped = ''.join(runs['config_gin'].replace('\\\n', ' ').split())
  assert f"MODEL_DIR='{runs['dirs']['ref']}'" in unwrapped
  assert 'train.model_dir = %MODEL_DIR' in runs['config_gin']


def test_sigkill_of_one_process_ends_the_other_cleanly(runs):
  rc0, rc1 = runs['rc_kill']
  log0 = _two_runs(runs['text']['kill'][0])[1]   # the run that was killed
  assert rc1 == -signal.SIGKILL
  assert rc0 == 1, log0[-3000:]
  assert runs['kill_s'] < BOUND_S
  # Named once the coordinator has missed its heartbeats, whether process 0 was waiting at the
  # per-step barrier or saw a collective fail first.
  assert (f'moe_flan.train: error: process 0 of 2 stops: lost process 1 (no heartbeat for '
          f'{HEARTBEAT_S} s; see its log)') in log0, log0[-3000:]
  for noise in ('Check failed', 'Fatal Python error', 'Aborted', 'core dumped'):
    assert noise not in log0, log0[-3000:]
