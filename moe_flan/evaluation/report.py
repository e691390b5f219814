"""Evaluation outputs: results.json, predictions/{task}.jsonl, TensorBoard scalars, a markdown
table.

results.json:
  {"checkpoint_step", "model_gin", "settings",
   "tasks":      {task: {"category", "num_examples", "metrics": {m: {"value", "stderr", "n"}},
                         "counts": {"unparsable", "truncated", ...}, "mean_shots"}},
   "categories": {category: {"macro": {m: {...}}, "micro": {m: {...}}, "tasks": [...]}},
   "overall":    {"macro": {...}, "micro": {...}}}
Values and standard errors are percentages. Pooling uses only each task's (value, stderr, n):
macro = mean over tasks, stderr sqrt(sum se^2) / T; micro = n-weighted mean, stderr
sqrt(sum (n se)^2) / N (exact for means of independent examples).
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence

from moe_flan import atomic_file

COUNT_METRICS = ('unparsable',)


def task_entry(metrics: Mapping[str, float], records: Sequence[Mapping[str, Any]],
               category: str) -> dict[str, Any]:
  """One task's results entry from its seqio metrics and its records."""
  n = int(metrics.get('num_examples', len(records)))
  entry: dict[str, Any] = {'category': category, 'num_examples': n, 'metrics': {}, 'counts': {}}
  for name, value in metrics.items():
    if name.endswith('_stderr') or name == 'num_examples':
      continue
    if name in COUNT_METRICS:
      entry['counts'][name] = int(value)
      continue
    entry['metrics'][name] = {'value': float(value),
                              'stderr': float(metrics.get(f'{name}_stderr', float('nan'))),
                              'n': n}
  shots = [r['num_shots'] for r in records if 'num_shots' in r]
  if shots:
    entry['mean_shots'] = sum(shots) / len(shots)
  if any('truncated' in r for r in records):
    entry['counts']['truncated'] = sum(bool(r.get('truncated')) for r in records)
  return entry


def pool(entries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
  """Macro and micro averages of each metric over the entries that report it."""
  names = sorted({m for e in entries for m in e['metrics']})
  out: dict[str, dict[str, dict[str, float]]] = {'macro': {}, 'micro': {}}
  for name in names:
    stats = [e['metrics'][name] for e in entries if name in e['metrics']]
    t, total = len(stats), sum(s['n'] for s in stats)
    out['macro'][name] = {
        'value': sum(s['value'] for s in stats) / t,
        'stderr': math.sqrt(sum(s['stderr'] ** 2 for s in stats)) / t, 'n': total}
    if total:
      out['micro'][name] = {
          'value': sum(s['value'] * s['n'] for s in stats) / total,
          'stderr': math.sqrt(sum((s['n'] * s['stderr']) ** 2 for s in stats)) / total,
          'n': total}
  return out


def build_results(metrics: Mapping[str, Mapping[str, float]],
                  records: Mapping[str, Sequence[Mapping[str, Any]]],
                  category_of: Callable[[str], str], step: int, model_gin: str,
                  settings: Mapping[str, Any]) -> dict[str, Any]:
  tasks = {t: task_entry(metrics[t], records.get(t, ()), category_of(t)) for t in sorted(metrics)}
  categories: dict[str, Any] = {}
  for cat in sorted({e['category'] for e in tasks.values()}):
    members = [t for t, e in tasks.items() if e['category'] == cat]
    categories[cat] = {**pool([tasks[t] for t in members]), 'tasks': members}
  return {'checkpoint_step': int(step), 'model_gin': model_gin, 'settings': dict(settings),
          'tasks': tasks, 'categories': categories, 'overall': pool(list(tasks.values()))}


def write_predictions(directory: str, records: Mapping[str, Sequence[Mapping[str, Any]]]
                      ) -> None:
  os.makedirs(directory, exist_ok=True)
  for task, rows in records.items():
    atomic_file.write_jsonl(os.path.join(directory, f'{task}.jsonl'), rows, ensure_ascii=False)


def scalars(results: Mapping[str, Any]) -> dict[str, float]:
  """Flat TensorBoard scalars: eval/{task|category|overall}/{metric}[_micro]."""
  out = {}
  for task, e in results['tasks'].items():
    for m, s in e['metrics'].items():
      out[f'eval/{task}/{m}'] = s['value']
  for scope, pooled in [(f'category/{c}', p) for c, p in results['categories'].items()] + \
      [('overall', results['overall'])]:
    for kind in ('macro', 'micro'):
      for m, s in pooled[kind].items():
        out[f'eval/{scope}/{m}' + ('' if kind == 'macro' else '_micro')] = s['value']
  return out


def write_tensorboard(directory: str, step: int, values: Mapping[str, float]) -> None:
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  writer = metric_writers.SummaryWriter(directory)
  writer.write_scalars(int(step), dict(values))
  writer.flush()
  writer.close()


def _cell(s: Optional[Mapping[str, float]]) -> str:
  return '' if s is None else f'{s["value"]:.1f} ± {s["stderr"]:.1f}'


def markdown_table(results: Mapping[str, Any]) -> str:
  """| task | category | n | metric ± se ... | rows per task, category (macro) and overall."""
  names = sorted({m for e in results['tasks'].values() for m in e['metrics']})
  lines = ['| task | category | n | ' + ' | '.join(names) + ' |',
           '|---|---|---:|' + '---:|' * len(names)]
  for task, e in results['tasks'].items():
    lines.append(f'| {task} | {e["category"]} | {e["num_examples"]} | ' +
                 ' | '.join(_cell(e['metrics'].get(m)) for m in names) + ' |')
  rows = [(f'**{c}** (macro)', c, p) for c, p in results['categories'].items()]
  rows.append(('**overall** (macro)', '', results['overall']))
  for label, cat, pooled in rows:
    n = max((s['n'] for s in pooled['macro'].values()), default=0)
    lines.append(f'| {label} | {cat} | {n} | ' +
                 ' | '.join(_cell(pooled['macro'].get(m)) for m in names) + ' |')
  return '\n'.join(lines)


def write_all(output_dir: str, results: Mapping[str, Any],
              records: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
  """results.json, predictions/, TensorBoard events (tensorboard/) under `output_dir`."""
  os.makedirs(output_dir, exist_ok=True)
  atomic_file.write_json(os.path.join(output_dir, 'results.json'), results)
  write_predictions(os.path.join(output_dir, 'predictions'), records)
  write_tensorboard(os.path.join(output_dir, 'tensorboard'), results['checkpoint_step'],
                    scalars(results))
