"""Per-example records of one evaluated task (the lines of predictions/{task}.jsonl).

Rank classification (one record per question): input, target, options, per-option
log-likelihood and per-token (normalised) score, prediction (the best option by
log-likelihood), prediction_norm, correct, correct_norm. Generation: input, target, output (the
decoded text), prediction (after the task's postprocessor; for chain-of-thought the extracted
answer, None when unparsable), correct. Benchmark tasks add num_shots and truncated.
The same functions as the metrics (`tasks.eval_metrics`) decide correctness, so the records
and the metrics agree.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import seqio
import tensorflow_datasets as tfds

from tasks import eval_metrics, eval_prompts

SCORE = seqio.metrics.ModelOutputType.SCORE
PREDICTION = seqio.metrics.ModelOutputType.PREDICTION


def _text(x: Any) -> str:
  return x.decode('utf-8') if isinstance(x, bytes) else str(x)


def _meta(ex: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  if 'num_shots' in ex:
    out['num_shots'] = int(ex['num_shots'])
  if 'truncated' in ex:
    out['truncated'] = bool(ex['truncated'])
  return out


def _postprocess(task: seqio.Task, text: str, ex, is_target: bool):
  fn = task.postprocess_fn
  return fn(text, example=ex, is_target=is_target) if fn else text


def rank_records(task: seqio.Task, rows: list, scores) -> list[dict[str, Any]]:
  """One record per question from its option rows and their scores."""
  targets = [_postprocess(task, '', ex, True) for ex in rows]
  first_row = {}
  for ex, t in zip(rows, targets):
    first_row.setdefault(t['example'], ex)
  out = []
  for r in eval_metrics.rank_choices(targets, scores):
    ex = first_row[r['example']]
    options = _text(ex['options_pretokenized']).split(eval_prompts.OPTION_SEPARATOR)
    out.append({
        'input': _text(ex['inputs_pretokenized']), 'target': _text(ex['targets_pretokenized']),
        'options': options, 'log_likelihood': r['log_likelihood'],
        'num_target_tokens': r['num_tokens'], 'normalized_score': r['normalized'],
        'prediction': options[r['choice']], 'prediction_norm': options[r['choice_norm']],
        'correct': r['choice'] in r['correct'], 'correct_norm': r['choice_norm'] in r['correct'],
        **_meta(ex)})
  return out


def generation_records(task: seqio.Task, rows: list, tokens) -> list[dict[str, Any]]:
  vocab = task.output_features['targets'].vocabulary
  out = []
  for ex, ids in zip(rows, tokens):
    output = vocab.decode(list(ids))
    target = _postprocess(task, _text(ex['targets_pretokenized']), ex, True)
    prediction = _postprocess(task, output, ex, False)
    hit = eval_metrics.exact_match([target], [prediction])['exact_match'] == 100.0
    out.append({'input': _text(ex['inputs_pretokenized']),
                'target': _text(ex['targets_pretokenized']), 'output': output,
                'prediction': prediction, 'correct': bool(hit), **_meta(ex)})
  return out


def task_records(task: seqio.Task, dataset, outputs: Mapping) -> list[dict[str, Any]]:
  """Records of `task` from its cached task dataset and the Evaluator's model outputs."""
  rows = list(tfds.as_numpy(dataset))
  if SCORE in outputs:
    return rank_records(task, rows, np.asarray(outputs[SCORE], np.float64))
  return generation_records(task, rows, outputs[PREDICTION])
