"""BIG-bench JSON tasks (Srivastava et al. 2022) from a directory in the published layout.

Layout: `BIGBENCH_DIR/{task}/task.json` with "examples": each either multiple choice
({"input", "target_scores": {option: score}}; the highest-scored option is correct) or
generative ({"input", "target": str or [str, ...]}). Optional "task_prefix",
"example_input_prefix" (default "\\nQ: "), "example_output_prefix" (default "\\nA: ") and
"few_shot_example_separator" (default "\\n") as in BIG-bench's JSON task API.

Tasks (split 'test', every example): `bigbench_{task}_{k}shot` for k in
`bigbench_settings.shots`; exemplars are the k examples that follow the query in file order
(cyclically), never the query itself. Multiple-choice examples are scored by rank
classification over the target_scores keys; generative ones by exact match and token F1
against the first target (a file must be all one kind). Mixtures `bigbench_{k}shot`.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import gin

from tasks import eval_metrics, eval_prompts, registry


@gin.configurable
def bigbench_settings(shots: Sequence[int] = (0, 3)) -> tuple[int, ...]:
  if any(k < 0 for k in shots):
    raise ValueError(f'bigbench_settings.shots={shots!r}: must be >= 0')
  return tuple(int(k) for k in shots)


@functools.lru_cache(maxsize=None)
def read_task(path: str) -> tuple[dict, str]:
  """(task json, kind 'rank' | 'generate'); ValueError naming the file and example."""
  data = eval_prompts.read_json_examples(path, 'BIG-bench')
  examples = data['examples']
  kinds = set()
  for i, ex in enumerate(examples):
    if not isinstance(ex, dict) or not isinstance(ex.get('input'), str):
      raise ValueError(f'{path}: example {i} has no string "input"')
    if isinstance(ex.get('target_scores'), dict) and len(ex['target_scores']) >= 2:
      kinds.add('rank')
    elif isinstance(ex.get('target'), str) or (isinstance(ex.get('target'), list)
                                               and ex['target']):
      kinds.add('generate')
    else:
      raise ValueError(f'{path}: example {i} needs "target_scores" (>= 2 options) or "target"')
  if len(kinds) > 1:
    raise ValueError(f'{path}: mixes multiple-choice and generative examples')
  return data, kinds.pop()


def _target(ex: dict) -> str:
  t = ex['target']
  return t if isinstance(t, str) else str(t[0])


def prompted(path: str, shots: int) -> list[eval_prompts.Prompted]:
  data, kind = read_task(path)
  examples = data['examples']
  q_pre = data.get('example_input_prefix', '\nQ: ')
  a_pre = data.get('example_output_prefix', '\nA: ')
  prefix = data.get('task_prefix', '')
  answer_of = (lambda e: max(e['target_scores'], key=e['target_scores'].get)) \
      if kind == 'rank' else _target
  out = []
  for i, ex in enumerate(examples):
    others = [examples[(i + j) % len(examples)] for j in range(1, len(examples))][:shots]
    exemplars = tuple(f'{q_pre}{e["input"]}{a_pre}{answer_of(e)}'.strip() for e in others)
    question = f'{q_pre}{ex["input"]}{a_pre}'.strip()
    if kind == 'rank':
      options = tuple(ex['target_scores'])
      out.append(eval_prompts.Prompted(prefix, exemplars, question, answer_of(ex), options,
                                       options.index(answer_of(ex))))
    else:
      out.append(eval_prompts.Prompted(prefix, exemplars, question, _target(ex)))
  return out


def tasks_in(bigbench_dir: str) -> list[str]:
  names = sorted(d for d in os.listdir(bigbench_dir)
                 if os.path.isfile(os.path.join(bigbench_dir, d, 'task.json'))) \
      if os.path.isdir(bigbench_dir) else []
  if not names:
    raise ValueError(f'BIGBENCH_DIR={bigbench_dir!r} has no {{task}}/task.json files')
  return names


def register(bigbench_dir: str) -> dict[str, str]:
  """Registers the tasks and mixtures of the module docstring; returns {task: category}."""
  bigbench_dir = os.path.abspath(bigbench_dir)
  mixtures: dict[str, list[str]] = {}
  cats = {}
  for task in tasks_in(bigbench_dir):
    path = os.path.join(bigbench_dir, task, 'task.json')
    data, kind = read_task(path)
    separator = data.get('few_shot_example_separator', '\n')
    for k in bigbench_settings():
      name = f'bigbench_{task}_{k}shot'
      eval_prompts.register(name, functools.partial(_load, path, k), ['test'], kind,
                            fingerprint=f'bigbench:{path}:{k}', separator=separator,
                            metric_fns=[eval_metrics.f1] if kind == 'generate' else None)
      mixtures.setdefault(f'bigbench_{k}shot', []).append(name)
      cats[name] = 'bigbench'
  for mixture, members in mixtures.items():
    registry.remove_if_different(mixture, f'bigbench:{bigbench_dir}:{members}')
    registry.add_mixture(mixture, members, fingerprint=f'bigbench:{bigbench_dir}:{members}',
                         default_rate=1.0)
  return cats


def _load(path, shots, split):
  del split
  return prompted(path, shots)
