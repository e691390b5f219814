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


BBH_COT = """-----
Answer questions about which option is the largest number.

Q: Which is largest?
Options:
(A) 3
(B) 9
A: Let's think step by step.
9 is more than 3. So the answer is (B).

Q: Which is largest?
Options:
(A) 7
(B) 2
A: Let's think step by step.
7 is more than 2. So the answer is (A).

Q: Which is largest?
Options:
(A) 1
(B) 5
A: Let's think step by step.
5 is more than 1. So the answer is (B).
"""

BBH_ARITH_COT = """Add the numbers.

Q: 2 + 3 =
A: Let's think step by step.
2 plus 3 is 5. So the answer is 5.

Q: 1 + 1 =
A: Let's think step by step.
1 plus 1 is 2. So the answer is 2.

Q: 4 + 4 =
A: Let's think step by step.
4 plus 4 is 8. So the answer is 8.
"""


def write_bbh(root: str) -> str:
  os.makedirs(os.path.join(root, 'bbh'), exist_ok=True)
  os.makedirs(os.path.join(root, 'cot-prompts'), exist_ok=True)
  mc = [{'input': f'Which is largest?\nOptions:\n(A) {a}\n(B) {b}\n(C) {c}',
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
