"""BIG-Bench Hard (Suzgun et al. 2022) from a directory in its published layout.

Layout: `BBH_DIR/bbh/{task}.json` = {"examples": [{"input", "target"}, ...]} and
`BBH_DIR/cot-prompts/{task}.txt` (a task description, then 3 exemplars
"Q: ...\\nA: Let's think step by step.\\n... So the answer is X.", blank-line separated).

Tasks (split 'test': every example of the file):
  bbh_{task}_3shot_cot  the CoT exemplars, then "Q: {input}\\nA: Let's think step by step.";
                        the answer is read from "So the answer is X." (exact match).
  bbh_{task}_3shot      answer-only exemplars ("Q: ...\\nA: X"), then "Q: {input}\\nA:". A task
                        whose inputs list their options ("Options:\\n(A) ...") and whose
                        targets are among them is scored by rank classification over the
                        options' labels; any other by exact match of the generated answer.
Mixtures `bbh_3shot`, `bbh_3shot_cot`. Categories: the BBH paper's NLP / algorithmic split.
"""
from __future__ import annotations

import functools
import os
import re

from tasks import eval_metrics, eval_prompts, registry

COT_CUE = "Let's think step by step."
_OPTION_LINE = re.compile(r'^\(([A-Z])\)', re.MULTILINE)
# The 27 task files of the published BBH data (suzgunmirac/BIG-Bench-Hard, `bbh/{task}.json`;
# 23 tasks, three of them in 3 / 5 / 7-object variants). Any other task file in BBH_DIR is
# evaluated the same way.
TASKS = (
    'boolean_expressions', 'causal_judgement', 'date_understanding', 'disambiguation_qa',
    'dyck_languages', 'formal_fallacies', 'geometric_shapes', 'hyperbaton',
    'logical_deduction_five_objects', 'logical_deduction_seven_objects',
    'logical_deduction_three_objects', 'movie_recommendation', 'multistep_arithmetic_two',
    'navigate', 'object_counting', 'penguins_in_a_table', 'reasoning_about_colored_objects',
    'ruin_names', 'salient_translation_error_detection', 'snarks', 'sports_understanding',
    'temporal_sequences', 'tracking_shuffled_objects_five_objects',
    'tracking_shuffled_objects_seven_objects', 'tracking_shuffled_objects_three_objects',
    'web_of_lies', 'word_sorting')
# The BBH paper's algorithmic tasks; the others of TASKS are its NLP tasks. Source: the per-task
# results table of Suzgun et al. 2022 (arXiv:2210.09261), whose rows marked lambda (11 of 23
# tasks; 15 of the 27 files with the object-count variants) are averaged as "Algorithmic Task
# (avg)" and the other 12 as "NLP Task (avg)". tests/test_evaluation_metrics.py holds a literal
# copy of that table.
ALGORITHMIC = frozenset((
    'boolean_expressions', 'dyck_languages', 'geometric_shapes', 'logical_deduction_five_objects',
    'logical_deduction_seven_objects', 'logical_deduction_three_objects',
    'multistep_arithmetic_two', 'navigate', 'object_counting', 'temporal_sequences',
    'tracking_shuffled_objects_five_objects', 'tracking_shuffled_objects_seven_objects',
    'tracking_shuffled_objects_three_objects', 'web_of_lies', 'word_sorting'))


def category(task: str) -> str:
  return 'bbh/algorithmic' if task in ALGORITHMIC else 'bbh/nlp'


@functools.lru_cache(maxsize=None)
def read_examples(path: str) -> tuple[tuple[str, str], ...]:
  """(input, target) pairs of a bbh/{task}.json; ValueError naming the file."""
  examples = eval_prompts.read_json_examples(
      path, 'BBH', ' (BBH files are {"examples": [{"input", "target"}, ...]})')['examples']
  out = []
  for i, ex in enumerate(examples):
    if not isinstance(ex, dict) or not isinstance(ex.get('input'), str) or \
        not isinstance(ex.get('target'), str):
      raise ValueError(f'{path}: example {i} needs string "input" and "target" fields')
    out.append((ex['input'], ex['target']))
  return tuple(out)


@functools.lru_cache(maxsize=None)
def read_cot_prompt(path: str) -> tuple[str, tuple[tuple[str, str, str], ...]]:
  """(task description, exemplars (question, rationale, answer)) of a cot-prompts/{task}.txt."""
  if not os.path.isfile(path):
    raise ValueError(f'BBH CoT prompt {path!r} does not exist')
  with open(path, encoding='utf-8') as f:
    text = f.read()
  lines = text.strip().split('\n')
  if lines and set(lines[0].strip()) == {'-'}:   # the canary line
    lines = lines[1:]
  blocks = re.split(r'\n\s*\n(?=Q: )', '\n'.join(lines).strip())
  description, exemplars = blocks[0].strip(), []
  if description.startswith('Q: '):
    description, blocks = '', [''] + blocks
  for j, block in enumerate(blocks[1:], start=1):
    question, sep, answer_part = block.strip().partition(f'\nA: {COT_CUE}')
    answer = eval_metrics.extract_answer(answer_part)
    if not sep or not question.startswith('Q: ') or answer is None:
      raise ValueError(f'{path}: exemplar {j} is not "Q: ...\\nA: {COT_CUE} ... So the answer '
                       'is X."')
    exemplars.append((question[len('Q: '):], answer_part.strip(), answer))
  if not exemplars:
    raise ValueError(f'{path}: no exemplars ("Q: ...\\nA: {COT_CUE} ...")')
  return description, tuple(exemplars)


def options_of(question: str) -> tuple[str, ...]:
  """Labels '(A)', '(B)', ... of the options listed after 'Options:' in a BBH input."""
  _, sep, tail = question.partition('Options:')
  return tuple(f'({m})' for m in _OPTION_LINE.findall(tail)) if sep else ()


def is_multiple_choice(examples) -> bool:
  return all(t.strip() in options_of(q) for q, t in examples)


def prompted(bbh_dir: str, task: str, cot: bool) -> list[eval_prompts.Prompted]:
  examples = read_examples(os.path.join(bbh_dir, 'bbh', f'{task}.json'))
  description, shots = read_cot_prompt(os.path.join(bbh_dir, 'cot-prompts', f'{task}.txt'))
  prefix = f'{description}\n\n' if description else ''
  if cot:
    exemplars = tuple(f'Q: {q}\nA: {COT_CUE} {r}' for q, r, _ in shots)
  else:
    exemplars = tuple(f'Q: {q}\nA: {a}' for q, _, a in shots)
  mc = not cot and is_multiple_choice(examples)
  out = []
  for q, t in examples:
    question = f'Q: {q}\nA:' + (f' {COT_CUE}' if cot else '')
    options = options_of(q) if mc else ()
    answer = options.index(t.strip()) if mc else -1
    out.append(eval_prompts.Prompted(prefix, exemplars, question, t.strip(), options, answer))
  return out


def tasks_in(bbh_dir: str) -> list[str]:
  folder = os.path.join(bbh_dir, 'bbh')
  names = sorted(f[:-len('.json')] for f in os.listdir(folder) if f.endswith('.json')) \
      if os.path.isdir(folder) else []
  if not names:
    raise ValueError(f'BBH_DIR={bbh_dir!r} has no bbh/{{task}}.json files')
  return names


def register(bbh_dir: str) -> dict[str, str]:
  """Registers the tasks and mixtures of the module docstring; returns {task: category}."""
  bbh_dir = os.path.abspath(bbh_dir)
  mixtures: dict[str, list[str]] = {'bbh_3shot': [], 'bbh_3shot_cot': []}
  cats = {}
  for task in tasks_in(bbh_dir):
    mc = is_multiple_choice(read_examples(os.path.join(bbh_dir, 'bbh', f'{task}.json')))
    for cot in (False, True):
      name = f'bbh_{task}_3shot' + ('_cot' if cot else '')
      kind = 'cot' if cot else ('rank' if mc else 'generate')
      eval_prompts.register(name, functools.partial(_load, bbh_dir, task, cot), ['test'], kind,
                            fingerprint=f'bbh:{bbh_dir}:{task}:{cot}')
      mixtures['bbh_3shot' + ('_cot' if cot else '')].append(name)
      cats[name] = category(task)
  for mixture, members in mixtures.items():
    registry.remove_if_different(mixture, f'bbh:{bbh_dir}:{members}')
    registry.add_mixture(mixture, members, fingerprint=f'bbh:{bbh_dir}:{members}',
                         default_rate=1.0)
  return cats


def _load(bbh_dir, task, cot, split):
  del split
  return prompted(bbh_dir, task, cot)
