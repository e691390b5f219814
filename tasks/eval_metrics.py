"""Evaluation metrics and postprocessors that seqio tasks declare (the t5x/seqio contract).

Every metric comes with its example count and standard error, so results can be pooled
(per category, overall) without the per-example values:
  `{name}` (percent), `{name}_stderr` (percent), `num_examples`.

Rank classification (FLAN's protocol, `seqio` score metrics): the task yields one row per
(prompt, option) with `idx` = [example, option] and `is_correct`; the score function returns
log p(option | prompt) per row; the option with the highest score wins. `accuracy_norm` ranks by
log-likelihood per target token (EOS included, the tokens the score sums over).

Generation: exact match (and token F1 where a benchmark defines it) after the task's
postprocessor. Chain-of-thought answers are read from the answer phrase "So the answer is X.";
a rationale without it is unparsable: counted wrong and counted in `unparsable`.
"""
from __future__ import annotations

import collections
import math
import re
import string
from typing import Any, Mapping, Optional, Sequence

import numpy as np

ANSWER_PHRASE = re.compile(r'so the answer is[:\s]*(.+?)\s*$', re.DOTALL | re.IGNORECASE)


# ---- answers -----------------------------------------------------------------------------------
def extract_answer(text: str) -> Optional[str]:
  """The answer of a chain-of-thought rationale: what follows the last 'So the answer is',
  without a final period; None when the phrase is absent or nothing follows it."""
  text = _as_str(text).strip()
  cut = text.lower().rfind('so the answer is')
  if cut < 0:
    return None
  match = ANSWER_PHRASE.match(text[cut:])
  answer = match.group(1).strip() if match else ''
  answer = answer[:-1].strip() if answer.endswith('.') else answer
  return answer or None


def normalize_answer(text: str) -> str:
  """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
  text = ''.join(ch for ch in _as_str(text).lower() if ch not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def token_f1(target: str, prediction: str) -> float:
  """SQuAD token F1 of two answers after `normalize_answer`."""
  t, p = normalize_answer(target).split(), normalize_answer(prediction).split()
  if not t or not p:
    return float(t == p)
  common = sum((collections.Counter(t) & collections.Counter(p)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(p), common / len(t)
  return 2 * precision * recall / (precision + recall)


def _as_str(x: Any) -> str:
  return x.decode('utf-8') if isinstance(x, bytes) else str(x)


# ---- postprocessors (seqio postprocess_fn(output, example=..., is_target=...)) ------------------
def strip_text(output: Any, example: Optional[Mapping] = None, is_target: bool = False) -> str:
  del example, is_target
  return _as_str(output).strip()


def cot_answer(output: Any, example: Optional[Mapping] = None,
               is_target: bool = False) -> Optional[str]:
  """Predictions: the extracted answer (None: unparsable). Targets: a CoT target's answer, or
  the target itself when it is the bare answer (as in BBH)."""
  del example
  answer = extract_answer(output)
  if is_target and answer is None:
    return _as_str(output).strip()
  return answer


def rank_row(output: Any, example: Optional[Mapping] = None,
             is_target: bool = False) -> Any:
  """Targets of a rank-classification row: its example and option index, whether it is the
  correct option, and the number of target tokens its score sums over."""
  if not is_target or example is None:
    return output
  idx = np.asarray(example['idx'])
  return {'example': int(idx[0]), 'option': int(idx[1]),
          'is_correct': bool(example['is_correct']),
          'num_tokens': int(np.count_nonzero(np.asarray(example['targets'])))}


# ---- statistics ----------------------------------------------------------------------------------
def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
  """Mean and standard error of the mean (sample std / sqrt(n)); (nan, nan) for no values."""
  v = np.asarray(values, np.float64)
  if v.size == 0:
    return float('nan'), float('nan')
  se = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
  return float(np.mean(v)), se


def _percent(name: str, values: Sequence[float]) -> dict[str, float]:
  mean, se = mean_and_stderr(values)
  return {name: 100.0 * mean, f'{name}_stderr': 100.0 * se}


# ---- rank classification ---------------------------------------------------------------------------
def rank_choices(targets: Sequence[Mapping[str, Any]], scores: Sequence[float]
                 ) -> list[dict[str, Any]]:
  """Groups rows by example: per example (in order) its option scores, token counts, the
  correct option, and the options chosen by summed and by per-token log-likelihood."""
  groups: dict[int, dict[str, list]] = {}
  for row, score in zip(targets, scores):
    g = groups.setdefault(row['example'], {'scores': {}, 'tokens': {}, 'correct': []})
    g['scores'][row['option']] = float(score)
    g['tokens'][row['option']] = int(row['num_tokens'])
    if row['is_correct']:
      g['correct'].append(row['option'])
  out = []
  for example in sorted(groups):
    g = groups[example]
    options = sorted(g['scores'])
    ll = [g['scores'][o] for o in options]
    per_token = [g['scores'][o] / max(g['tokens'][o], 1) for o in options]
    out.append({'example': example, 'log_likelihood': ll, 'num_tokens':
                [g['tokens'][o] for o in options], 'normalized': per_token,
                'correct': g['correct'], 'choice': options[int(np.argmax(ll))],
                'choice_norm': options[int(np.argmax(per_token))]})
  return out


def rank_classification(targets: Sequence[Mapping[str, Any]], scores: Sequence[float]
                        ) -> dict[str, float]:
  """accuracy and accuracy_norm (per-token log-likelihood) over examples, with stderr."""
  ranked = rank_choices(targets, scores)
  out = {'num_examples': float(len(ranked))}
  out.update(_percent('accuracy', [r['choice'] in r['correct'] for r in ranked]))
  out.update(_percent('accuracy_norm', [r['choice_norm'] in r['correct'] for r in ranked]))
  return out


# ---- generation -------------------------------------------------------------------------------------
def exact_match(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """Exact match after stripping whitespace; a None prediction (unparsable) is wrong."""
  hits = [p is not None and _as_str(t).strip() == _as_str(p).strip()
          for t, p in zip(targets, predictions)]
  return {'num_examples': float(len(hits)), **_percent('exact_match', hits)}


def f1(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """SQuAD token F1 (a None prediction scores 0)."""
  scores = [0.0 if p is None else token_f1(_as_str(t), _as_str(p))
            for t, p in zip(targets, predictions)]
  return _percent('f1', scores)


def unparsable(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """Number of chain-of-thought outputs without an extractable answer."""
  del targets
  return {'unparsable': float(sum(p is None for p in predictions))}


GENERATION_METRICS = (exact_match,)
COT_METRICS = (exact_match, unparsable)
RANK_METRICS = (rank_classification,)
