"""Held-out benchmarks a user brings (MMLU, BBH, BIG-bench) and the paper's evaluation suite.

Nothing is downloaded: the benchmarks' tasks exist once their directories are given, in gin
(bound to the macros of gin/runs/eval.gin):
    tasks.benchmarks.register_benchmarks.mmlu_dir = %MMLU_DIR        # tasks/mmlu.py
    tasks.benchmarks.register_benchmarks.bbh_dir = %BBH_DIR          # tasks/bbh.py
    tasks.benchmarks.register_benchmarks.bigbench_dir = %BIGBENCH_DIR  # tasks/bigbench.py
The evaluation engine calls `register_benchmarks()` before it builds its datasets.

Always registered (the embedded held-out clusters, scored as the paper scores them):
  emb_{task}_scoring               held-out tasks with options: rank classification over the
                                   FLAN option block of the zero-shot prompt
  flan_embedded_heldout_scoring    those tasks; `flan_embedded_heldout[_fs|_cot]` (generation)
                                   are the embedded mixtures themselves
  flan_embedded_downstream_scoring those of the downstream finetuning tasks
With MMLU_DIR and BBH_DIR: `heldout_suite` = MMLU 5-shot (rank classification), BBH 3-shot
direct and CoT, embedded held-out (rank classification and CoT), for split 'test'.
"""
from __future__ import annotations

import functools
from typing import Optional

import gin

from tasks import bbh, bigbench, embedded, eval_prompts, mmlu, registry, templates
from tasks.generators import DOWNSTREAM_TASKS, HELDOUT_TASKS

_CATEGORIES: dict[str, str] = {}
NEEDS = {'mmlu_': 'MMLU_DIR', 'bbh_': 'BBH_DIR', 'bigbench_': 'BIGBENCH_DIR',
         'heldout_suite': 'MMLU_DIR and BBH_DIR'}
SUITE_PARTS = ('mmlu_5shot', 'bbh_3shot', 'bbh_3shot_cot', 'flan_embedded_heldout_scoring',
               'flan_embedded_heldout_cot')


def category(task_name: str) -> str:
  """Reporting category of an eval task: MMLU's four, BBH's NLP/algorithmic, the embedded
  cluster, else the task's own name."""
  if task_name in _CATEGORIES:
    return _CATEGORIES[task_name]
  if task_name.startswith('emb_'):
    try:
      return f'embedded/{embedded.spec_of(task_name.removesuffix("_scoring")).cluster}'
    except ValueError:
      pass
  return task_name


def _scoring_examples(spec_name: str, split: str) -> list[eval_prompts.Prompted]:
  cols = embedded.rendered_now(spec_name, 'zs', split)
  out = []
  for inputs, target in zip(cols['inputs'], cols['targets']):
    options = tuple(templates.parse_options(inputs))
    answer = options.index(target) if target in options else -1
    out.append(eval_prompts.Prompted('', (), inputs, target, options, answer))
  return out


def register_embedded_scoring() -> None:
  """emb_{task}_scoring for the held-out tasks that have options, and their mixtures (all of
  them; the downstream ones)."""
  names, downstream = [], []
  for spec_name in HELDOUT_TASKS:
    examples = embedded.generate_examples(spec_name, embedded.generation_seed())
    if not all(ex.get('options') for split in ('validation', 'test') for ex in examples[split]):
      continue
    name = f'{embedded.task_name(spec_name)}_scoring'
    eval_prompts.register(name, functools.partial(_scoring_examples, spec_name),
                          ('validation', 'test'), 'rank', fingerprint=f'scoring:{spec_name}')
    names.append(name)
    if spec_name in DOWNSTREAM_TASKS:
      downstream.append(name)
  registry.add_mixture('flan_embedded_heldout_scoring', names,
                       fingerprint=f'scoring:{names}', default_rate=1.0)
  registry.add_mixture('flan_embedded_downstream_scoring', downstream,
                       fingerprint=f'scoring:{downstream}', default_rate=1.0)


@gin.configurable
def register_benchmarks(mmlu_dir: Optional[str] = None, bbh_dir: Optional[str] = None,
                        bigbench_dir: Optional[str] = None) -> None:
  """Registers the benchmarks whose directories are set (see the module docstring)."""
  register_embedded_scoring()
  for directory, module in ((mmlu_dir, mmlu), (bbh_dir, bbh), (bigbench_dir, bigbench)):
    if directory:
      _CATEGORIES.update(module.register(directory))
  if mmlu_dir and bbh_dir:
    registry.remove_if_different('heldout_suite', f'suite:{mmlu_dir}:{bbh_dir}')
    registry.add_mixture('heldout_suite', list(SUITE_PARTS),
                         fingerprint=f'suite:{mmlu_dir}:{bbh_dir}', default_rate=1.0)


def missing_directory(name: str) -> Optional[str]:
  """For an unregistered benchmark name, the gin macro that would register it."""
  if name in registry.all_names():
    return None
  return next((macro for prefix, macro in NEEDS.items() if name.startswith(prefix)), None)
