"""Tiny benchmark directories in the published layouts (MMLU, BBH, BIG-bench), written by tests."""
import csv
import json
import os

MMLU_SUBJECTS = ('anatomy', 'philosophy', 'sociology', 'college_physics')


def mmlu_rows(subject: str, n: int, offset: int = 0) -> list[list[str]]:
  """`n` rows question,A,B,C,D,answer with answers cycling through A-D."""
  return [[f'Which {subject} item is number {i + offset}?', f'item {i}', f'thing {i + 1}',
           f'piece {i + 2}', f'part {i + 3}', 'ABCD'[(i + offset) % 4]] for i in range(n)]


def write_mmlu(root: str, subjects=MMLU_SUBJECTS, test_rows: int = 3, dev: bool = True) -> str:
  for split, n in (('dev', 5), ('val', 2), ('test', test_rows)):
    if split == 'dev' and not dev:
      continue
    os.makedirs(os.path.join(root, split), exist_ok=True)
    for k, subject in enumerate(subjects):
      with open(os.path.join(root, split, f'{subject}_{split}.csv'), 'w', newline='') as f:
        csv.writer(f).writerows(mmlu_rows(subject, n, offset=k))
  return root


def largest_question(*numbers: int) -> str:
  """A BBH-style multiple-choice question: which option is the largest number."""
  options = '\n'.join(f'({"ABC"[i]}) {n}' for i, n in enumerate(numbers))
  return f'Which is largest?\nOptions:\n{options}'


def cot_prompt(description: str, shots, header: str = '') -> str:
  """A cot-prompts/{task}.txt file: `header` (some published files open with a '-----' line),
  the task description, then each (question, reasoning, answer) shot."""
  return header + description + '\n' + ''.join(
      f"\nQ: {q}\nA: Let's think step by step.\n{why} So the answer is {answer}.\n"
      for q, why, answer in shots)


BBH_COT = cot_prompt(
    'Answer questions about which option is the largest number.',
    [(largest_question(a, b), f'{max(a, b)} is more than {min(a, b)}.', '(' + 'AB'[b > a] + ')')
     for a, b in ((3, 9), (7, 2), (1, 5))],
    header='-----\n')

BBH_ARITH_COT = cot_prompt(
    'Add the numbers.',
    [(f'{a} + {b} =', f'{a} plus {b} is {a + b}.', str(a + b))
     for a, b in ((2, 3), (1, 1), (4, 4))])


def write_bbh(root: str) -> str:
  os.makedirs(os.path.join(root, 'bbh'), exist_ok=True)
  os.makedirs(os.path.join(root, 'cot-prompts'), exist_ok=True)
  mc = [{'input': largest_question(a, b, c),
         'target': '(' + 'ABC'[[a, b, c].index(max(a, b, c))] + ')'}
        for a, b, c in ((1, 8, 3), (9, 2, 4), (5, 6, 7))]
  gen = [{'input': f'{a} + {b} =', 'target': str(a + b)} for a, b in ((1, 2), (3, 3))]
  for name, examples, prompt in (('largest_option', mc, BBH_COT),
                                 ('multistep_arithmetic_two', gen, BBH_ARITH_COT)):
    with open(os.path.join(root, 'bbh', f'{name}.json'), 'w') as f:
      json.dump({'canary': 'x', 'examples': examples}, f)
    with open(os.path.join(root, 'cot-prompts', f'{name}.txt'), 'w') as f:
      f.write(prompt)
  return root


def write_bigbench(root: str) -> str:
  mc = {'name': 'pick', 'examples': [
      {'input': f'Pick the colour of {x}.', 'target_scores': {'red': int(c == 'red'),
                                                               'green': int(c == 'green'),
                                                               'blue': int(c == 'blue')}}
      for x, c in (('blood', 'red'), ('grass', 'green'), ('sky', 'blue'))]}
  gen = {'name': 'echo', 'examples': [{'input': f'Repeat {w}.', 'target': [w, w.upper()]}
                                      for w in ('cat', 'dog')]}
  for name, data in (('pick', mc), ('echo', gen)):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    with open(os.path.join(root, name, 'task.json'), 'w') as f:
      json.dump(data, f)
  return root
