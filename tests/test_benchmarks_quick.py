"""The benchmark suite's quick mode runs end to end and writes well-formed results (no speed
assertions: performance is measured by `python -m benchmarks.run`, see BENCHMARKS.md)."""
import json
import math

import pytest

from benchmarks import run as run_lib
from conftest import DISABLE_OPTIMIZATIONS_ENV

# The cases compile the same programs more than once (each candidate's model init, the train step
# of train_step and step_buffers); the quick suite measures run times, never compile times.
pytestmark = pytest.mark.usefixtures('persistent_compilation_cache')

EXPECTED = {
    'moe_layer': {'dense', 'einsum', 'scatter', 'segmented', 'dropless', 'segmented cpu_ffi',
                  'dropless cpu_ffi', 'expert_matmuls_only'},
    'train_step': {'train_step'},
    'input_pipeline': {'get_batches'},
    'memory': {'train_step'},
    'hf_switch': {'moe_flan', 'hf_torch'},
    'grouped_matmul': {'dense', 'kernel', 'kernel_routed', 'xla_batched'},
    'step_buffers': {'kept step buffers', 'donated state'},
    'eval_rank': {'moe_flan', 'hf_torch'},
}


def test_quick_cpu_suite_writes_results(tmp_path, monkeypatch, persistent_compilation_cache):
  # The memory case's child process compiles as this process does (conftest) and finds the
  # train step the train_step case compiled in the same cache; one timed round per comparison
  # still gives every row its timing, ratio and spread fields.
  child_env = {**DISABLE_OPTIMIZATIONS_ENV,
               'JAX_COMPILATION_CACHE_DIR': persistent_compilation_cache,
               'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  for name, value in child_env.items():
    monkeypatch.setenv(name, value)
  result = run_lib.main(['--suite', 'cpu', '--quick', '--repeats', '1',
                         '--results_dir', str(tmp_path)])
  with open(tmp_path / 'cpu_quick.json') as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(result, default=float))
  assert saved['suite'] == 'cpu' and saved['quick'] is True
  assert saved['machine']['cpu_cores'] >= 1 and saved['peak']['flops_per_s'] > 0
  by_case = {}
  for row in saved['records']:
    assert row['status'] == 'ok', row
    by_case.setdefault(row['case'], set()).add(row['variant'])
    assert row['time_s']['median_s'] > 0 if 'time_s' in row else True
    if 'ratio' in row:
      assert row['ratio']['min'] <= row['ratio']['median'] <= row['ratio']['max']
      assert math.isfinite(row['ratio']['median'])
  for case, variants in EXPECTED.items():
    assert variants <= by_case.get(case, set()), (case, by_case.get(case))
  baseline_rows = [r for r in saved['records'] if r['case'] == 'moe_layer' and r['variant'] == 'dense']
  assert all(r['ratio']['median'] == 1.0 for r in baseline_rows)
  names = {t['name'] for t in saved['targets']}
  assert 'train step FLOP/s / XLA matmul peak (base-like)' in names
  assert all(t['met'] in (True, False, None) for t in saved['targets'])
  # The expert-matmuls floor is reported beside the best dispatcher, never chosen as it.
  top1 = next(t for t in saved['targets'] if t['name'] == 'MoE layer top-1 E=8: best path / dense')
  assert 'expert matmuls alone' in top1['note'] and not top1['note'].startswith('expert_matmuls')
