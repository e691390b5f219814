"""Evaluation: teacher-forced loss/accuracy on a mixture; rank classification and generation.

Rank classification decodes each example's prompt, reads its FLAN option block
(`tasks.templates.parse_options`), scores every option as the target with
`moe_flan.decoding.score_targets` and predicts the highest-scoring one. Generation decodes greedily
and compares the decoded text with the target text (exact match).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import gin
import jax
import numpy as np

from moe_flan import config as config_lib
from moe_flan import decoding
from moe_flan.trainer import data as data_lib
from moe_flan.trainer import metrics as metrics_lib
from moe_flan.trainer import model_setup


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate: `num_batches` batches for loss/accuracy, and on the first `num_examples`
  unpacked examples rank classification and/or greedy generation."""
  num_batches: int = 4
  num_examples: int = 16
  rank_classification: bool = True
  generation: bool = True
  max_decode_length: int = 32


def _pad_rows(rows: list[list[int]], length: int) -> np.ndarray:
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    r = list(r)[:length]
    out[i, :len(r)] = r
  return out


def rank_classify(model, params, vocab, inputs: np.ndarray, options: list[list[str]],
                  target_length: int, batch_size: int) -> list[int]:
  """Index of the best-scoring option per example (score = sum log p(option | prompt)).

  (prompt, option) rows are scored `batch_size` at a time, the last chunk padded with empty
  rows, so every call has the shape of an eval batch (MoE routing groups must divide it).
  """
  enc_rows, tgt_rows, owner = [], [], []
  for i, opts in enumerate(options):
    for opt in opts:
      enc_rows.append(inputs[i])
      tgt_rows.append(list(vocab.encode(opt)) + [1])
      owner.append(i)
  scores = []
  for start in range(0, len(enc_rows), batch_size):
    enc = np.zeros((batch_size, inputs.shape[1]), np.int32)
    chunk = enc_rows[start:start + batch_size]
    enc[:len(chunk)] = np.stack(chunk)
    tgt = _pad_rows(tgt_rows[start:start + batch_size] + [[]] * (batch_size - len(chunk)),
                    target_length)
    out = decoding.score_targets(model, params, {'encoder_input_tokens': enc,
                                                 'decoder_target_tokens': tgt})
    scores.extend(np.asarray(out)[:len(chunk)].tolist())
  best: dict[int, tuple[float, int]] = {}
  counts: dict[int, int] = {}
  for s, i in zip(scores, owner):
    j = counts.get(i, 0)
    counts[i] = j + 1
    if i not in best or s > best[i][0]:
      best[i] = (float(s), j)
  return [best[i][1] for i in range(len(options)) if i in best]


def example_metrics(model, params, cfg: data_lib.DataConfig, settings: EvalConfig
                    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """Rank-classification accuracy and generation exact match on the first examples."""
  # Imported here, not at the top: `tasks` imports TensorFlow (seconds); importing it also
  # registers the seqio tasks.
  from tasks import templates, vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocab = vocab_lib.default_vocabulary()
  unpacked = dataclasses.replace(cfg, pack=False, shuffle=False)
  it = data_lib.batches(unpacked, repeat=False)
  records, ranked, ranked_ok, exact = [], 0, 0, 0
  while len(records) < settings.num_examples:
    batch = next(it, None)
    if batch is None:
      break
    inputs = batch['encoder_input_tokens']
    prompts = [vocab.decode([int(t) for t in row if t > 1]) for row in inputs]
    targets = [vocab.decode([int(t) for t in row if t > 1])
               for row in batch['decoder_target_tokens']]
    outputs = [''] * len(prompts)
    if settings.generation:
      out = np.asarray(decoding.greedy_decode(model, params, inputs, settings.max_decode_length))
      outputs = [vocab.decode([int(t) for t in row if t > 1]) for row in out]
    options = [templates.parse_options(p) for p in prompts]
    picks = [None] * len(prompts)
    with_opts = [i for i, o in enumerate(options) if o]
    if settings.rank_classification and with_opts:
      chosen = rank_classify(model, params, vocab, inputs[with_opts],
                             [options[i] for i in with_opts],
                             batch['decoder_target_tokens'].shape[1], cfg.batch_size)
      for i, c in zip(with_opts, chosen):
        picks[i] = options[i][c]
    for p, t, o, pick in zip(prompts, targets, outputs, picks):
      if len(records) == settings.num_examples or not t:   # cap; skip padding rows
        break
      records.append({'input': p, 'target': t, 'output': o, 'rank_choice': pick})
      exact += int(o.strip() == t.strip())
      if pick is not None:
        ranked += 1
        ranked_ok += int(pick.strip() == t.strip())
  n = max(len(records), 1)
  metrics = {'num_examples': float(len(records))}
  if settings.generation:
    metrics['exact_match'] = exact / n
  if settings.rank_classification and ranked:
    metrics['rank_classification_accuracy'] = ranked_ok / ranked
    metrics['num_rank_classification_examples'] = float(ranked)
  return metrics, records


def summary(step_dir: str, cfg: data_lib.DataConfig, num_batches: int,
            result: dict[str, Any]) -> str:
  """What was evaluated and how many examples/tokens each metric counted, for the console."""
  name = os.path.basename(os.path.normpath(step_dir))
  which = f'step {name} ({step_dir})' if name.isdigit() else step_dir
  lines = [f'moe_flan.evaluate: checkpoint {which} on {cfg.mixture_or_task_name!r} '
           f'(split {cfg.split!r})',
           f'  loss, accuracy: {int(result.get("num_tokens", 0))} target tokens in '
           f'{num_batches} batch{"es" if num_batches != 1 else ""} of {cfg.batch_size}']
  if 'exact_match' in result:
    lines.append(f'  exact_match: {int(result["num_examples"])} examples')
  if 'rank_classification_accuracy' in result:
    lines.append(f'  rank_classification_accuracy: '
                 f'{int(result["num_rank_classification_examples"])} examples with options')
  return '\n'.join(lines)


@gin.configurable
def evaluate(model_dir: str = gin.REQUIRED, model: config_lib.T5Config = gin.REQUIRED,
             data: data_lib.DataConfig = gin.REQUIRED, checkpoint_path: Optional[str] = None,
             settings: EvalConfig = EvalConfig()) -> dict[str, float]:
  """Evaluates the checkpoint (default: latest in MODEL_DIR) on `data`; writes eval.jsonl and
  MODEL_DIR/eval_examples.jsonl; returns the metrics."""
  path = checkpoint_path or model_dir
  data_lib.check_task_exists(data.mixture_or_task_name, model.vocab_size)
  setup = model_setup.build_model_setup(model)
  setup.partitioner.check_batch_size(data.batch_size)
  params, step_dir = setup.restore_params(path)
  result = setup.mean_metrics(params, data, settings.num_batches)
  ex_metrics, records = example_metrics(setup.model, params, data, settings)
  result.update(ex_metrics)
  step = int(os.path.basename(step_dir)) if os.path.basename(step_dir).isdigit() else 0
  result['checkpoint_step'] = step
  if jax.process_index() == 0:
    print(summary(step_dir, data, settings.num_batches, result), flush=True)
  writer = metrics_lib.MetricsWriter(model_dir, 'eval')
  writer.write(step, result)
  writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, 'eval_examples.jsonl'), 'w') as f:
      for r in records:
        f.write(json.dumps(r) + '\n')
  return result
