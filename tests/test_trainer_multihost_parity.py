"""One process or two, same run: the train CLI on the same (data 1, expert 8, model 1) mesh of 8
CPU devices, either in this process or in two processes of 4 devices each (gloo, started by
launch/local_multiprocess.sh), with the explicit shard_map dispatcher, whose all-to-all then
crosses the process boundary.

One chain of runs, shared by every test here (each process start costs seconds of imports):
- `one`: one process trains steps 1-6, saving steps 2, 4 and 6 (the uninterrupted reference);
- `scratch`: two processes train steps 1-4 from step 0 (the same processes, before `two`:
  tests/multihost_train_twice.py);
- `two`: two processes resume `one`'s step-2 checkpoint (1 -> 2 processes) and train steps 3-4,
  saving step 4 together;
- `back`: one process resumes `two`'s step-4 checkpoint (2 -> 1) and trains steps 5-6;
- `moe_flan.evaluate` and `moe_flan.infer` then read step 4 as written by one process and by two.
Every loss must equal the reference's to a few float32 ulps (the collectives sum in another
order), and evaluation and decoding must not tell the two checkpoints apart.
"""
import json
import os
import shutil
import subprocess
import sys

import gin
import numpy as np
import pytest

from moe_flan import evaluate as evaluate_cli
from moe_flan import infer as infer_cli
from moe_flan import train as train_cli
from moe_flan.trainer import metrics

from conftest import FAST_COMPILE_ENV, JAX_CACHE_DIR
from test_trainer_resume import TINY_GIN as RESUME_GIN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_ULPS = 4
# The resume test's tiny run, with 8 experts split over 8 devices and routing groups small
# enough that every stack's batch makes a multiple of 8 groups (shard_map runs, no fallback).
TINY_GIN = RESUME_GIN + """
include 'partitioning/expert_parallel_shard_map.gin'
EXPERT_PARTITIONS = 8
MoeConfig.num_experts = 8
MoeConfig.group_size = 8
BATCH_SIZE = 8
"""
EVAL_FLAGS = ("--gin.MIXTURE_OR_TASK_NAME='emb_nli_scoring'", '--gin.NUM_EXAMPLES=4',
              "--gin.TASK_FEATURE_LENGTHS={'inputs':64,'targets':8}", '--gin.BATCH_SIZE=8')


def _train_flags(gin_file, model_dir, steps):
  return [f'--gin_file={gin_file}', f"--gin.MODEL_DIR='{model_dir}'",
          f'--gin.TRAIN_STEPS={steps}', '--gin.CHECKPOINT_PERIOD=2']


def _here(main, argv):
  """An entry point's `main` in this process (8 CPU devices): its imports are paid already."""
  try:
    assert main(argv) == 0
  finally:
    gin.clear_config()


def _two_processes(gin_file, model_dir, steps, log_dir, scratch_dir):
  """Two processes that first train `scratch_dir` from step 0 to step 4, then the run."""
  env = dict(os.environ)   # FAST_COMPILE_ENV below replaces XLA_FLAGS
  # The coordinator in its own process (the opt-in layout): a whole run under it, normal end.
  env.update(PYTHON=sys.executable, DEVICES_PER_PROCESS='4', LOG_DIR=str(log_dir),
             EXTERNAL_COORDINATOR='1',
             COMMAND=os.path.join(REPO, 'tests', 'multihost_train_twice.py'),
             SCRATCH_MODEL_DIR=str(scratch_dir), SCRATCH_STEPS='4',
             TIMEOUT_S='600', JAX_PLATFORMS='cpu', PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2',
             JAX_COMPILATION_CACHE_DIR=JAX_CACHE_DIR,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             **FAST_COMPILE_ENV)   # compiled as this process compiles
  proc = subprocess.run(
      [os.path.join(REPO, 'launch', 'local_multiprocess.sh'), '2',
       *_train_flags(gin_file, model_dir, steps)],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=660)
  logs = [(log_dir / name).read_text() for name in ('process_0.log', 'process_1.log',
                                                    'coordinator.log')]
  return proc.returncode, logs, proc.stdout


def _copy_until(src, dst, step):
  """A copy of MODEL_DIR `src` whose latest checkpoint is `step`."""
  shutil.copytree(src, dst)
  for name in os.listdir(dst / 'checkpoints'):
    if name.isdigit() and int(name) > step:
      shutil.rmtree(dst / 'checkpoints' / name)


def _losses(model_dir):
  records = metrics.read_jsonl(str(model_dir / 'metrics' / 'train.jsonl'))
  return {r['step']: np.float32(r['loss']) for r in records}


def _ulps(a, b) -> int:
  """Distance in float32 units in the last place (both finite, same sign)."""
  return abs(int(np.float32(a).view(np.int32)) - int(np.float32(b).view(np.int32)))


def _evaluate_and_infer(model_dir, out_dir):
  checkpoint = f"--gin.CHECKPOINT_PATH='{model_dir / 'checkpoints' / '4'}'"
  model_gin = f'--gin_file={model_dir}/model.gin'
  _here(evaluate_cli.main, [model_gin, '--gin_file=runs/eval.gin',
                            f"--gin.MODEL_DIR='{model_dir}'", checkpoint, *EVAL_FLAGS,
                            f"--gin.EVAL_OUTPUT_DIR='{out_dir}'"])
  _here(infer_cli.main, [model_gin, '--gin_file=runs/infer.gin', f"--gin.MODEL_DIR='{model_dir}'",
                         checkpoint, "--gin.InferConfig.max_decode_length=8",
                         f"--gin.InferConfig.output_file='{out_dir}/inference.jsonl'"])
  with open(out_dir / 'results.json') as f:
    results = json.load(f)
  with open(out_dir / 'predictions' / 'emb_nli_scoring.jsonl') as f:
    predictions = [json.loads(line) for line in f]
  with open(out_dir / 'inference.jsonl') as f:
    decoded = [json.loads(line) for line in f]
  return dict(results=results, predictions=predictions, decoded=decoded)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, persistent_compilation_cache):
  root = tmp_path_factory.mktemp('multihost_parity')
  gin_file = root / 'tiny.gin'
  gin_file.write_text(TINY_GIN)
  one, two, back, scratch = root / 'one', root / 'two', root / 'back', root / 'scratch'
  _here(train_cli.main, _train_flags(gin_file, one, 6))
  _copy_until(one, two, 2)
  rc, logs, launcher = _two_processes(gin_file, two, 4, root / 'two_logs', scratch)
  assert rc == 0, (launcher[-2000:], logs[0][-3000:], logs[1][-3000:])
  _copy_until(two, back, 4)
  _here(train_cli.main, _train_flags(gin_file, back, 6))
  evaluated = {name: _evaluate_and_infer(d, root / f'eval_{name}') for name, d in
               (('one', one), ('two', two))}
  return dict(one=one, two=two, back=back, logs=logs, evaluated=evaluated,
              losses={name: _losses(d) for name, d in (('one', one), ('two', two),
                                                        ('back', back), ('scratch', scratch))})


def test_two_processes_from_step_0_train_like_one(runs):
  """Initialisation, data order and every step on 2 processes x 4 devices: the losses of
  steps 1-4 are the 1-process run's to a few float32 ulps."""
  ref, got = runs['losses']['one'], runs['losses']['scratch']
  assert sorted(got) == [1, 2, 3, 4], got
  for step in got:
    assert _ulps(got[step], ref[step]) <= MAX_ULPS, (step, got[step], ref[step])
  assert 'moe_flan: starting at step 0' in runs['logs'][0], runs['logs'][0][:3000]


def test_two_processes_resume_one_process_checkpoint_and_train_alike(runs):
  ref, got = runs['losses']['one'], runs['losses']['two']
  assert sorted(ref) == list(range(1, 7)) and sorted(got) == [1, 2, 3, 4]
  assert ref[6] < ref[1]                                     # it trained
  log0 = runs['logs'][0]   # process 0 tells what the run does
  assert 'resuming from step 2 ' in log0, log0[-3000:]
  assert ("mesh data=1 x expert=8 x model=1 on 8 cpu device(s) in 2 process(es); MoE "
          "dispatch 'expert_parallel'") in log0, log0[-3000:]
  for log in runs['logs'][:2]:
    assert 'coordinator in its own process, timeout' in log, log[:3000]
    finished = 'moe_flan.train: finished at step 4'
    assert log.count(finished) == 2, log[-3000:]        # from step 0, then the resumed run
    # No scatter fallback in either run, initialisation included (the warning is once per
    # shape and process, so the run from step 0 shows any the resumed run would).
    assert 'routing group(s) do not divide' not in log, log[:3000]
  assert 'serving 2 processes on 127.0.0.1:' in runs['logs'][2], runs['logs'][2]
  assert [got[s] for s in (1, 2)] == [ref[s] for s in (1, 2)]   # kept from the copied run
  for step in (3, 4):
    assert _ulps(got[step], ref[step]) <= MAX_ULPS, (step, got[step], ref[step])
  with open(runs['two'] / 'mesh.json') as f:
    assert json.load(f) == {'mesh': {'data': 1, 'expert': 8, 'model': 1}, 'processes': 2,
                            'devices': 8, 'local_devices': 4, 'platform': 'cpu',
                            'moe_dispatch': 'expert_parallel'}
  # Step 4 was written by both processes: each stored its own expert shards.
  state = runs['two'] / 'checkpoints' / '4' / 'state'
  assert {'ocdbt.process_0', 'ocdbt.process_1'} <= set(os.listdir(state)), os.listdir(state)


def test_one_process_resumes_two_process_checkpoint_exactly(runs):
  ref, got = runs['losses']['one'], runs['losses']['back']
  assert sorted(got) == list(range(1, 7))
  for step in (5, 6):
    assert _ulps(got[step], ref[step]) <= MAX_ULPS, (step, got[step], ref[step])
  with open(runs['back'] / 'mesh.json') as f:
    assert json.load(f)['processes'] == 1


def test_evaluate_and_infer_cannot_tell_the_checkpoints_apart(runs):
  one, two = runs['evaluated']['one'], runs['evaluated']['two']
  assert len(one['predictions']) == len(two['predictions']) == 4
  for a, b in zip(one['predictions'], two['predictions']):
    assert (a['input'], a['options'], a['prediction']) == (b['input'], b['options'],
                                                           b['prediction'])
    np.testing.assert_allclose(a['log_likelihood'], b['log_likelihood'], rtol=1e-5)
  metrics_one = one['results']['tasks']['emb_nli_scoring']['metrics']
  assert metrics_one == two['results']['tasks']['emb_nli_scoring']['metrics']
  assert one['results']['checkpoint_step'] == two['results']['checkpoint_step'] == 4
  assert len(one['decoded']) == 2 and one['decoded'] == two['decoded']
