"""MMLU (Hendrycks et al. 2021) from a directory in its published layout, as seqio eval tasks.

Layout: `MMLU_DIR/{dev,val,test}/{subject}_{split}.csv`, rows `question,A,B,C,D,answer` with no
header (answer one of A-D). Splits: 'validation' reads val/, 'test' reads test/; exemplars
always come from dev/ (5 per subject in the release).

Prompt (the paper's `evaluate.py`): "The following are multiple choice questions (with
answers) about {subject}.\\n\\n", then k exemplars "{question}\\nA. ..\\nD. ..\\nAnswer: X", then the
question ending in "Answer:", joined by blank lines. Scored by rank classification over the
letters A-D (`options='letters'`, default) or over the option texts (`options='texts'`).
Chain-of-thought (`mmlu_{subject}_0shot_cot`): the zero-shot question, FLAN's CoT trigger, the
letter read from "So the answer is X."

Tasks: `mmlu_{subject}_{k}shot` for k in `mmlu_settings.shots`; mixtures `mmlu_{k}shot`,
`mmlu_0shot_cot`. Categories: the paper's four (STEM, humanities, social sciences, other).
"""
from __future__ import annotations

import csv
import functools
import glob
import os
from typing import Sequence

from absl import logging
import gin

from tasks import eval_prompts, registry, templates

LETTERS = ('A', 'B', 'C', 'D')
DIRS = {'dev': 'dev', 'validation': 'val', 'test': 'test'}
OPTION_STYLES = ('letters', 'texts')

_SUBCATEGORY = {
    'abstract_algebra': 'math', 'anatomy': 'health', 'astronomy': 'physics',
    'business_ethics': 'business', 'clinical_knowledge': 'health', 'college_biology': 'biology',
    'college_chemistry': 'chemistry', 'college_computer_science': 'computer science',
    'college_mathematics': 'math', 'college_medicine': 'health', 'college_physics': 'physics',
    'computer_security': 'computer science', 'conceptual_physics': 'physics',
    'econometrics': 'economics', 'electrical_engineering': 'engineering',
    'elementary_mathematics': 'math', 'formal_logic': 'philosophy', 'global_facts': 'other',
    'high_school_biology': 'biology', 'high_school_chemistry': 'chemistry',
    'high_school_computer_science': 'computer science',
    'high_school_european_history': 'history', 'high_school_geography': 'geography',
    'high_school_government_and_politics': 'politics', 'high_school_macroeconomics': 'economics',
    'high_school_mathematics': 'math', 'high_school_microeconomics': 'economics',
    'high_school_physics': 'physics', 'high_school_psychology': 'psychology',
    'high_school_statistics': 'math', 'high_school_us_history': 'history',
    'high_school_world_history': 'history', 'human_aging': 'health',
    'human_sexuality': 'culture', 'international_law': 'law', 'jurisprudence': 'law',
    'logical_fallacies': 'philosophy', 'machine_learning': 'computer science',
    'management': 'business', 'marketing': 'business', 'medical_genetics': 'health',
    'miscellaneous': 'other', 'moral_disputes': 'philosophy', 'moral_scenarios': 'philosophy',
    'nutrition': 'health', 'philosophy': 'philosophy', 'prehistory': 'history',
    'professional_accounting': 'other', 'professional_law': 'law',
    'professional_medicine': 'health', 'professional_psychology': 'psychology',
    'public_relations': 'politics', 'security_studies': 'politics', 'sociology': 'culture',
    'us_foreign_policy': 'politics', 'virology': 'health', 'world_religions': 'philosophy',
}
_CATEGORY_OF_SUBCATEGORY = {
    'STEM': ('physics', 'chemistry', 'biology', 'computer science', 'math', 'engineering'),
    'humanities': ('history', 'philosophy', 'law'),
    'social sciences': ('politics', 'culture', 'economics', 'geography', 'psychology'),
    'other': ('other', 'business', 'health'),
}
CATEGORIES = tuple(_CATEGORY_OF_SUBCATEGORY)


def category(subject: str) -> str:
  """One of the paper's four categories ('other' for a subject outside the 57)."""
  sub = _SUBCATEGORY.get(subject)
  if sub is None:
    logging.warning('MMLU subject %r is not one of the 57; reported under "other"', subject)
    return 'other'
  return next(c for c, subs in _CATEGORY_OF_SUBCATEGORY.items() if sub in subs)


@gin.configurable
def mmlu_settings(shots: Sequence[int] = (0, 5), options: str = 'letters'
                  ) -> tuple[tuple[int, ...], str]:
  """Which k-shot variants to register, and what rank classification scores: the letters A-D
  or the option texts."""
  if options not in OPTION_STYLES:
    raise ValueError(f'mmlu_settings.options={options!r}: choose one of {OPTION_STYLES}')
  if any(k < 0 for k in shots):
    raise ValueError(f'mmlu_settings.shots={shots!r}: must be >= 0')
  return tuple(int(k) for k in shots), options


def csv_path(mmlu_dir: str, subject: str, split: str) -> str:
  return os.path.join(mmlu_dir, DIRS[split], f'{subject}_{DIRS[split]}.csv')


@functools.lru_cache(maxsize=None)
def read_csv(path: str) -> tuple[tuple[str, tuple[str, ...], int], ...]:
  """(question, 4 options, answer index) per row; ValueError naming file and row."""
  if not os.path.isfile(path):
    raise ValueError(f'MMLU file {path!r} does not exist')
  rows = []
  with open(path, newline='', encoding='utf-8') as f:
    for i, row in enumerate(csv.reader(f), start=1):
      if len(row) != 6:
        raise ValueError(f'{path}: row {i} has {len(row)} columns; MMLU rows are '
                         'question,A,B,C,D,answer (6 columns, no header)')
      answer = row[5].strip()
      if answer not in LETTERS:
        raise ValueError(f'{path}: row {i}: answer {row[5]!r} is not one of A, B, C, D')
      rows.append((row[0], tuple(row[1:5]), LETTERS.index(answer)))
  return tuple(rows)


def format_question(question: str, options: Sequence[str], answer: int = -1) -> str:
  text = question + ''.join(f'\n{l}. {o}' for l, o in zip(LETTERS, options)) + '\nAnswer:'
  return text + (f' {LETTERS[answer]}' if answer >= 0 else '')


def prompted(mmlu_dir: str, subject: str, split: str, shots: int, options: str,
             cot: bool = False) -> list[eval_prompts.Prompted]:
  """The split's examples with `shots` dev exemplars each (MMLU's fixed first-k dev rows)."""
  rows = read_csv(csv_path(mmlu_dir, subject, split))
  exemplars = ()
  if shots:
    dev_path = csv_path(mmlu_dir, subject, 'dev')
    if not os.path.isfile(dev_path):
      raise ValueError(f'MMLU {shots}-shot needs the dev split: {dev_path!r} does not exist '
                       '(or use 0 shots)')
    dev = read_csv(dev_path)
    if len(dev) < shots:
      raise ValueError(f'{dev_path}: {len(dev)} rows, fewer than the {shots} shots asked for')
    exemplars = tuple(format_question(q, o, a) for q, o, a in dev[:shots])
  header = f'The following are multiple choice questions (with answers) about ' \
           f'{subject.replace("_", " ")}.\n\n'
  out = []
  for q, opts, answer in rows:
    question = format_question(q, opts)
    if cot:
      out.append(eval_prompts.Prompted(header, (), f'{question}\n\n{templates.COT_TRIGGER}',
                                       LETTERS[answer]))
      continue
    choices = LETTERS if options == 'letters' else opts
    out.append(eval_prompts.Prompted(header, exemplars, question, choices[answer],
                                     tuple(choices), answer))
  return out


def subjects(mmlu_dir: str) -> list[str]:
  """Subjects with a test or val file; ValueError when there are none."""
  found = set()
  for split in ('validation', 'test'):
    suffix = f'_{DIRS[split]}.csv'
    for path in glob.glob(os.path.join(mmlu_dir, DIRS[split], f'*{suffix}')):
      found.add(os.path.basename(path)[:-len(suffix)])
  if not found:
    raise ValueError(f'MMLU_DIR={mmlu_dir!r} has no {{val,test}}/{{subject}}_{{split}}.csv files')
  return sorted(found)


def register(mmlu_dir: str) -> dict[str, str]:
  """Registers the tasks and mixtures of the module docstring; returns {task: category}."""
  mmlu_dir = os.path.abspath(mmlu_dir)
  shots, options = mmlu_settings()
  names: dict[str, list[str]] = {}
  cats: dict[str, str] = {}
  for subject in subjects(mmlu_dir):
    splits = [s for s in ('validation', 'test') if os.path.isfile(csv_path(mmlu_dir, subject, s))]
    variants = [(f'{k}shot', k, False) for k in shots] + [('0shot_cot', 0, True)]
    for suffix, k, cot in variants:
      name = f'mmlu_{subject}_{suffix}'
      load = functools.partial(_load, mmlu_dir, subject, k, options, cot)
      eval_prompts.register(name, load, splits, 'cot' if cot else 'rank',
                            fingerprint=f'mmlu:{mmlu_dir}:{subject}:{suffix}:{options}')
      names.setdefault(f'mmlu_{suffix}', []).append(name)
      cats[name] = f'mmlu/{category(subject)}'
  for mixture, members in names.items():
    registry.remove_if_different(mixture, f'mmlu:{mmlu_dir}:{members}')
    registry.add_mixture(mixture, members, fingerprint=f'mmlu:{mmlu_dir}:{members}',
                         default_rate=1.0)
  return cats


def _load(mmlu_dir, subject, shots, options, cot, split):
  return prompted(mmlu_dir, subject, split, shots, options, cot)
