"""`python -m moe_flan.evaluate` on 2 processes x 2 CPU devices (gloo, coordinator on 127.0.0.1,
started by launch/local_multiprocess.sh) against the same command on 1 process x 4 devices.

The benchmark is a BBH directory with a rank-classification task (5 questions x 3 options:
15 rows) and a generative task (7 examples, greedy decoding), at batch 4: neither count divides
by the batch or by the 2 hosts. Each process must feed only its share of every batch (the two
shares add up to all rows), results.json and the predictions must equal the 1-process run's
(nothing dropped, nothing counted twice), and only process 0 may write or print the results.
"""
import glob
import json
import os
import subprocess
import sys

import pytest

import benchmark_fixtures as bf
from conftest import FAST_COMPILE_ENV, JAX_CACHE_DIR
from t5_fixtures import TINY_GIN_MODEL, write_step0_model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600
MC = [(1, 8, 3), (9, 2, 4), (5, 6, 7), (3, 1, 2), (2, 7, 1)]
GEN = [(1, 2), (3, 3), (4, 1), (2, 2), (5, 3), (6, 1), (1, 1)]
ROWS = 3 * len(MC) + len(GEN)   # one (prompt, option) row per option; one row per generation


def _write_bbh(root: str) -> str:
  examples = {
      'largest_option': [{'input': bf.largest_question(*n), 'target': f'({"ABC"[n.index(max(n))]})'}
                         for n in MC],
      'multistep_arithmetic_two': [{'input': f'{a} + {b} =', 'target': str(a + b)}
                                   for a, b in GEN]}
  prompts = {'largest_option': bf.BBH_COT, 'multistep_arithmetic_two': bf.BBH_ARITH_COT}
  for sub in ('bbh', 'cot-prompts'):
    os.makedirs(os.path.join(root, sub))
  for name, rows in examples.items():
    with open(os.path.join(root, 'bbh', f'{name}.json'), 'w') as f:
      json.dump({'examples': rows}, f)
    with open(os.path.join(root, 'cot-prompts', f'{name}.txt'), 'w') as f:
      f.write(prompts[name])
  return root


def _args(model_dir, bbh_dir, out):
  return ['--gin_file=models/flan_moe_tiny.gin', '--gin_file=runs/eval.gin',
          *[f'--gin.{b.replace(" ", "")}' for b in TINY_GIN_MODEL],
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='bbh_3shot'",
          f"--gin.BBH_DIR='{bbh_dir}'", "--gin.SPLIT='test'", '--gin.BATCH_SIZE=4',
          "--gin.TASK_FEATURE_LENGTHS={'inputs':256,'targets':8}",
          f"--gin.EVAL_OUTPUT_DIR='{out}'"]


def _env(devices: int):
  env = dict(os.environ)   # FAST_COMPILE_ENV below replaces XLA_FLAGS
  env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=REPO,
             TF_CPP_MIN_LOG_LEVEL='2', JAX_COMPILATION_CACHE_DIR=JAX_CACHE_DIR,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', **FAST_COMPILE_ENV)
  return env


def _read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('eval_multihost')
  model_dir, bbh = str(root / 'model'), _write_bbh(str(root / 'bbh'))
  write_step0_model_dir(model_dir)
  out = {n: str(root / n) for n in ('one', 'two')}
  logs = root / 'logs'
  two = subprocess.Popen(
      [os.path.join(REPO, 'launch', 'local_multiprocess.sh'), '2', *_args(model_dir, bbh,
                                                                           out['two'])],
      cwd=REPO, env={**_env(2), 'COMMAND': '-m moe_flan.evaluate', 'PYTHON': sys.executable,
                     'LOG_DIR': str(logs), 'TIMEOUT_S': str(TIMEOUT_S)},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    # Meanwhile the 1-process reference, behind the two (which must meet at their collectives).
    one = subprocess.run(['nice', '-n', '10', sys.executable, '-m', 'moe_flan.evaluate',
                          *_args(model_dir, bbh, out['one'])],
                         cwd=REPO, env=_env(4), capture_output=True, text=True, timeout=TIMEOUT_S)
    two_log = two.communicate(timeout=TIMEOUT_S)[0]
  finally:
    if two.poll() is None:
      two.kill()
      two.wait()
  assert one.returncode == 0, one.stderr[-3000:]
  assert two.returncode == 0, two_log[-3000:]
  return dict(out=out, one=one, logs=[_read(logs / f'process_{i}.log') for i in (0, 1)])


def _results(out_dir):
  results = json.loads(_read(os.path.join(out_dir, 'results.json')))
  # The operative gin config names the output directory, which differs by construction.
  results['model_gin'] = results['model_gin'].replace(out_dir, 'EVAL_OUTPUT_DIR')
  return results


def _predictions(out_dir):
  files = sorted(glob.glob(os.path.join(out_dir, 'predictions', '*.jsonl')))
  return {os.path.basename(p): [json.loads(line) for line in _read(p).splitlines()]
          for p in files}


def test_two_processes_write_what_one_process_writes(runs):
  one, two = runs['out']['one'], runs['out']['two']
  assert _results(two) == _results(one)
  assert _predictions(two) == _predictions(one)
  assert set(_predictions(two)) == {'bbh_largest_option_3shot.jsonl',
                                    'bbh_multistep_arithmetic_two_3shot.jsonl'}


def test_every_example_is_evaluated_once(runs):
  results, predictions = _results(runs['out']['two']), _predictions(runs['out']['two'])
  rank = predictions['bbh_largest_option_3shot.jsonl']
  gen = predictions['bbh_multistep_arithmetic_two_3shot.jsonl']
  # In file order, each example once: the question ends its prompt, its target is kept.
  assert [r['target'] for r in rank] == [f'({"ABC"[n.index(max(n))]})' for n in MC]
  assert all(r['input'].endswith(f'Q: {bf.largest_question(*n)}\nA:') for r, n in zip(rank, MC))
  assert all(len(r['log_likelihood']) == 3 for r in rank)   # every option scored
  assert [r['target'] for r in gen] == [str(a + b) for a, b in GEN]
  assert all(r['input'].endswith(f'Q: {a} + {b} =\nA:') for r, (a, b) in zip(gen, GEN))
  assert results['tasks']['bbh_largest_option_3shot']['num_examples'] == len(MC)
  assert results['tasks']['bbh_multistep_arithmetic_two_3shot']['num_examples'] == len(GEN)
  accuracy = results['tasks']['bbh_largest_option_3shot']['metrics']['accuracy']['value']
  assert accuracy == pytest.approx(100.0 * sum(r['correct'] for r in rank) / len(MC))


def _share(text):
  lines = [line for line in text.splitlines() if line.startswith('moe_flan.evaluate: process ')]
  assert len(lines) == 1, text[-3000:]
  return lines[0]


def test_each_process_feeds_its_share_of_every_batch(runs):
  # Contiguous halves of each batch of 4: the rank batches hold one question (3 rows + 1
  # padding row: 2 + 1 rows), the generation batches 4 and 3 rows (2 + 2, 2 + 1).
  shares = [_share(text) for text in runs['logs']]
  mesh = 'mesh data=4 x expert=1 x model=1'
  assert shares == [
      f'moe_flan.evaluate: process 0 of 2 (data shard 0 of 2, {mesh}) fed 14 of {ROWS} example '
      'rows to the model',
      f'moe_flan.evaluate: process 1 of 2 (data shard 1 of 2, {mesh}) fed 8 of {ROWS} example '
      'rows to the model']
  assert _share(runs['one'].stderr) == (
      f'moe_flan.evaluate: process 0 of 1 (data shard 0 of 1, {mesh}) fed {ROWS} of {ROWS} '
      'example rows to the model')


def test_only_process_0_writes_and_prints_the_results(runs):
  two = runs['out']['two']
  # Every TensorBoard writer opens its own events file (host and pid in the name).
  assert len(glob.glob(os.path.join(two, 'tensorboard', 'events.out.tfevents.*'))) == 1
  log0, log1 = runs['logs']
  table = '| bbh_largest_option_3shot | bbh/nlp | 5 |'
  assert table in log0 and "on 'bbh_3shot' (split 'test')" in log0
  assert table not in log1 and 'moe_flan.evaluate: checkpoint' not in log1
