"""The input_pipeline case: input pipeline throughput vs the train step's consumption rate.

Times `tasks.pipeline.get_batches` on the quickstart mixture ('flan_embedded', packed, 128 -> 32,
batch 16, shuffled, repeated) after its first batch (start-up -- building the tf.data graph,
loading the vocabulary -- is reported separately), and divides its rows/s by the rows/s the
quickstart train step consumes, measured in the same process (train_step case, or here if that
case did not run). Target: headroom >= 5, i.e. the pipeline is never the bottleneck.
"""
from __future__ import annotations

import time

import numpy as np

from benchmarks import context as ctx_lib
from benchmarks import train_step as train_step_lib
from benchmarks import timing

CASE = 'input_pipeline'


def _count_examples(batch: dict) -> int:
  """Examples packed in a batch: the number of distinct non-zero segments per row."""
  seg = batch.get('encoder_segment_ids')
  if seg is None:
    return int(np.sum(np.any(batch['encoder_input_tokens'] > 0, axis=1)))
  return int(sum(len(np.unique(row[row > 0])) for row in seg))


def pipeline_rate(mixture: str, lengths: dict, batch_size: int, num_batches: int) -> dict:
  import tasks  # noqa: F401  (registers the tasks and mixtures)
  from tasks import pipeline
  start = time.perf_counter()
  it = pipeline.get_batches(mixture, 'train', lengths, batch_size, seed=0)
  next(it)
  startup = time.perf_counter() - start
  samples, examples = [], 0
  for _ in range(num_batches):
    t = time.perf_counter()
    batch = next(it)
    samples.append(time.perf_counter() - t)
    examples += _count_examples(batch)
  total = sum(samples)
  return {'startup_s': startup, 'rows_per_s': num_batches * batch_size / total,
          'packed_examples_per_s': examples / total, 'timing': timing.summarize(samples)}


def run(ctx: ctx_lib.Context) -> list[dict]:
  workload = train_step_lib.workloads(ctx.suite, ctx.quick)[0]          # the quickstart
  lengths = {'inputs': 128, 'targets': 32} if not ctx.quick else {'inputs': 32, 'targets': 8}
  batch_size = 16 if not ctx.quick else 4
  rate = pipeline_rate('flan_embedded', lengths, batch_size, 40 if not ctx.quick else 5)
  consumed = train_step_lib.MEASURED_EXAMPLES_PER_S.get(workload.name)
  if consumed is None:     # train_step did not run in this process: measure the step here
    train_step_lib.measure(ctx, workload)
    consumed = train_step_lib.MEASURED_EXAMPLES_PER_S[workload.name]
  headroom = rate['rows_per_s'] / consumed
  ctx.log(f'pipeline {rate["rows_per_s"]:.0f} rows/s vs step {consumed:.1f} rows/s: '
          f'headroom {headroom:.1f}x')
  metrics = {'rows_per_s': rate['rows_per_s'],
             'packed_examples_per_s': rate['packed_examples_per_s'],
             'startup_s': rate['startup_s'], 'train_step_rows_per_s': consumed,
             'headroom': headroom}
  params = {'mixture': 'flan_embedded', 'lengths': lengths, 'batch_size': batch_size,
            'pack': True}
  return [ctx_lib.record(CASE, 'quickstart', 'get_batches', time=rate['timing'],
                         metrics=metrics, params=params)]
