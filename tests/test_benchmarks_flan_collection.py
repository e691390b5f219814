"""The FLAN Collection benchmark's own arithmetic and generated export (its timings are
measured by `python -m benchmarks.flan_collection`, see BENCHMARKS.md, never asserted)."""
import collections
import json

import pyarrow.parquet as pq
import pytest

from benchmarks import flan_collection as bench
import flan_collection_fixtures as fx


def test_generated_export_has_the_published_schema_and_its_defects(tmp_path):
  n = bench.generate(str(tmp_path), 400_000, tasks_per_source=3)
  with open(tmp_path / 'export.jsonl', encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  table = pq.read_table(tmp_path / 'export.parquet')
  rows += table.to_pylist()
  assert len(rows) == n and set(table.column_names) == set(fx.COLUMNS)
  assert all(set(r) == set(fx.COLUMNS) for r in rows)
  good = [r for r in rows if r['inputs']]
  assert {r['task_source'] for r in good} == set(bench.SOURCES)
  assert {r['template_type'] for r in good} == set(bench.TEMPLATES)
  per_source = collections.defaultdict(set)
  for r in good:
    per_source[r['task_source']].add(r['task_name'])
  assert all(len(t) <= 3 for t in per_source.values())
  counts = collections.Counter(json.dumps(r, sort_keys=True) for r in good)
  assert 0 < sum(c - 1 for c in counts.values()) < 0.05 * n       # ~1% exact duplicates
  # Few-shot inputs are the long ones.
  mean = lambda k: sum(len(r['inputs']) for r in good if r['template_type'].startswith(k)) / max(
      1, sum(r['template_type'].startswith(k) for r in good))
  assert mean('fs') > 2.5 * mean('zs')


def test_pipeline_summary_is_per_round_medians():
  rounds = [{'p_s': 2.0, 'p_cpu_s': 1.0, 'p_tokens': 4000, 'p_examples': 100, 'b_s': 1.0,
             'b_examples': 200, 't_s': 10.0, 't_cpu_s': 8.0, 't_tokens': 4000, 't_examples': 100,
             's_s': 4.0, 's_cpu_s': 3.0},
            {'p_s': 1.0, 'p_cpu_s': 0.5, 'p_tokens': 3000, 'p_examples': 90, 'b_s': 2.0,
             'b_examples': 100, 't_s': 20.0, 't_cpu_s': 16.0, 't_tokens': 3000, 't_examples': 90,
             's_s': 3.0, 's_cpu_s': 1.0},
            {'p_s': 4.0, 'p_cpu_s': 4.0, 'p_tokens': 8000, 'p_examples': 200, 'b_s': 1.0,
             'b_examples': 400, 't_s': 8.0, 't_cpu_s': 6.0, 't_tokens': 8000, 't_examples': 200,
             's_s': 6.0, 's_cpu_s': 6.0}]
  out = bench.summarise_pipeline({'rounds': rounds, 'batch_size': 2, 'batches_per_round': 5})
  # Per-round ratios: (100/2)/(200/1)=0.25, (90/1)/(100/2)=1.8, (200/4)/(400/1)=0.125.
  assert out['ratio'] == pytest.approx(0.25)
  assert (out['ratio_min'], out['ratio_max']) == pytest.approx((0.125, 1.8))
  assert out['pipeline_examples_per_s'] == pytest.approx(50.0)       # median of 50, 90, 50
  assert out['pipeline_token_slots_per_s'] == pytest.approx(5 * 2 * 2560 / 2.0)
  assert out['pipeline_tokens_per_s'] == pytest.approx(2000.0)       # median of 2000, 3000, 2000
  # Per CPU second: 5 batches x 2 x 2560 slots over 1.0, 0.5, 4.0 CPU-s; median at 1.0 CPU-s.
  assert out['pipeline_token_slots_per_cpu_s'] == pytest.approx(5 * 2 * 2560 / 1.0)
  # p over s, same batches per round: wall 4/2, 3/1, 6/4 -> median 2; CPU 3/1, 1/0.5, 6/4 -> 2.
  paired = bench.paired_ratios({'rounds': rounds}, 'p', 's')
  assert (paired['wall'], paired['wall_min'], paired['wall_max']) == pytest.approx((2.0, 1.5, 3.0))
  assert (paired['cpu'], paired['cpu_min'], paired['cpu_max']) == pytest.approx((2.0, 1.5, 3.0))
  text = bench.summarise_pipeline({'rounds': rounds, 'batch_size': 2, 'batches_per_round': 5},
                                  who='t')
  # Text-path ratios: (100/10)/200=0.05, (90/20)/50=0.09, (200/8)/400=0.0625.
  assert text['ratio'] == pytest.approx(0.0625)
  assert text['pipeline_batches_per_s'] == pytest.approx(5 / 10.0)   # median of 0.5, .25, .625
