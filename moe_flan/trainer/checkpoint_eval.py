"""`python -m moe_flan.evaluate`: restore a checkpoint, run the engine, write the outputs.

    python -m moe_flan.evaluate --gin_file=gin/models/flan_moe_tiny.gin \\
      --gin_file=gin/runs/eval.gin --gin.MODEL_DIR="'/tmp/run'" \\
      --gin.MIXTURE_OR_TASK_NAME="'mmlu_5shot'" --gin.MMLU_DIR="'/data/mmlu'" \\
      --gin.SPLIT="'test'" --gin.EVAL_OUTPUT_DIR="'/tmp/run/eval_mmlu'"

Datasets are read and checked first (bad benchmark files fail before the checkpoint is
loaded); then the params are restored sharded over the mesh and every task is scored.
On several hosts (the same command on each; launch/README.md) each process feeds its data
shard of every batch and logs its share; process 0 writes EVAL_OUTPUT_DIR/results.json,
predictions/{task}.jsonl and TensorBoard events, and prints the markdown table.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Optional

import gin
import jax

from moe_flan import config as config_lib
from moe_flan.evaluation import engine as engine_lib
from moe_flan.evaluation import report
from moe_flan.trainer import data as data_lib
from moe_flan.trainer import gin_checks
from moe_flan.trainer import model_setup
from tasks import benchmarks


def check_vocabulary(model: config_lib.T5Config, vocab_size: int) -> None:
  if vocab_size > model.vocab_size:
    raise ValueError(f'the tasks\' vocabulary has {vocab_size} ids but the model\'s embedding '
                     f'has {model.vocab_size} (T5Config.vocab_size); the vocabulary must follow '
                     'the checkpoint (tasks.vocab.default_vocabulary.spm_path)')


def step_of(step_dir: str) -> int:
  name = os.path.basename(os.path.normpath(step_dir))
  return int(name) if name.isdigit() else 0


def share_line(partitioner, result: engine_lib.EvalResult) -> str:
  """This process's part of the model work, for its log (each host prints its own)."""
  shard, shards = partitioner.data_shard_info()
  mesh = ' x '.join(f'{k}={v}' for k, v in partitioner.mesh.shape.items())
  return (f'moe_flan.evaluate: process {jax.process_index()} of {jax.process_count()} '
          f'(data shard {shard} of {shards}, mesh {mesh}) fed {result.rows_fed} of '
          f'{result.rows_total} example rows to the model')


def headline(step_dir: str, settings: engine_lib.EvalSettings) -> str:
  """What was evaluated, for the console."""
  name = os.path.basename(os.path.normpath(step_dir))
  which = f'step {name} ({step_dir})' if name.isdigit() else step_dir
  return (f'moe_flan.evaluate: checkpoint {which} on {settings.mixture_or_task_name!r} '
          f'(split {settings.split!r})')


@gin.configurable
def evaluate(model_dir: str = gin.REQUIRED, model: config_lib.T5Config = gin.REQUIRED,
             checkpoint_path: Optional[str] = None,
             settings: engine_lib.EvalSettings = engine_lib.EvalSettings(),
             output_dir: Optional[str] = None, partitioner=None) -> dict[str, Any]:
  """Evaluates the checkpoint (default: latest in MODEL_DIR) on `settings`; writes results.json,
  predictions and TensorBoard events to `output_dir` (default MODEL_DIR/eval/{mixture}) and
  returns the results dict."""
  engine = engine_lib.Engine.shared(settings)
  check_vocabulary(model, engine.vocab_size())
  # Warns when the lengths cut many targets, measured on the examples evaluated: each task's
  # first ones in order, at most NUM_EXAMPLES questions (not a shuffled sample of the split).
  from tasks import eval_prompts  # pylint: disable=g-import-not-at-top  (TensorFlow: data.py)
  with eval_prompts.limit_examples(settings.num_examples):
    data_lib.report_truncation(data_lib.DataConfig(
        settings.mixture_or_task_name, settings.task_feature_lengths,
        batch_size=settings.batch_size, split=settings.split, shuffle=False))
  setup = model_setup.build_model_setup(model, partitioner)
  path = checkpoint_path or model_dir
  params, step_dir = setup.restore_params(path)
  step = step_of(step_dir)
  if jax.process_index() == 0:
    print(headline(step_dir, settings), flush=True)
  gin_checks.check_built()
  result = engine.evaluate(setup.model, params, setup.partitioner, step)
  print(share_line(setup.partitioner, result), file=sys.stderr, flush=True)
  results = report.build_results(
      result.metrics, result.records, benchmarks.category, step, gin.config_str(),
      {**dataclasses.asdict(settings), 'checkpoint_path': os.path.abspath(step_dir)})
  output_dir = output_dir or os.path.join(model_dir, 'eval', settings.mixture_or_task_name)
  if jax.process_index() == 0:
    report.write_all(output_dir, results, result.records)
    print(report.markdown_table(results), flush=True)
  return results
