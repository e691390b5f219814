"""The end-of-run evaluation: how the trained params do on the validation split of named mixtures.

A run that sets `RunConfig.final_eval_mixtures` (the quickstart: its training mixture and the
held-out clusters) ends by evaluating the final params with the trainer's evaluator
(`TrainSetup.evaluate`: teacher-forced loss and token accuracy, eval capacity factor, no dropout)
on `final_eval_batches` batches of each mixture's validation split. It prints one line per
mixture and writes MODEL_DIR/metrics/final_eval_{mixture}.jsonl (+ TensorBoard), so the numbers
a user is told to expect can be compared with what the run measured.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax

from moe_flan.trainer import data as data_lib
from moe_flan.trainer import metrics as metrics_lib


def check_mixtures(mixtures: Sequence[str], model_vocab_size: int) -> None:
  """ValueError naming a mixture that is not registered (before any training step)."""
  for name in mixtures:
    data_lib.check_task_exists(name, model_vocab_size)


def eval_data(train_data: data_lib.DataConfig, mixture: str) -> data_lib.DataConfig:
  """The train data settings (lengths, batch size, packing) on `mixture`'s validation split."""
  return dataclasses.replace(train_data, mixture_or_task_name=mixture, split='validation',
                             shuffle=False, truncation_check_examples=0)


def format_line(mixture: str, metrics: dict[str, Any], trained_on: str) -> str:
  role = ' (training mixture)' if mixture == trained_on else ''
  return (f'  {mixture}{role}: cross entropy {metrics["cross_entropy"]:.3f}, token accuracy '
          f'{metrics["accuracy"]:.3f} over {int(metrics["num_tokens"])} target tokens')


def evaluate_at_end(setup, params: Any, step: int, mixtures: Sequence[str],
                    num_batches: int) -> dict[str, dict[str, Any]]:
  """Evaluates `params` on each mixture (see module doc); returns mixture -> metrics."""
  results = {}
  for name in mixtures:
    cfg = eval_data(setup.data, name)
    metrics = setup.evaluate(params, num_batches, cfg)
    writer = metrics_lib.MetricsWriter(setup.model_dir, f'final_eval_{name}')
    results[name] = writer.write(step, metrics)
    writer.close()
  if mixtures and jax.process_index() == 0:
    lines = [format_line(name, results[name], setup.data.mixture_or_task_name)
             for name in mixtures]
    print(f'moe_flan: final evaluation at step {step} ({num_batches} batches of '
          f'{setup.data.batch_size} from each validation split):\n' + '\n'.join(lines),
          flush=True)
  return results
