"""Loads the human-written examples shipped in tasks/data/*.tsv and splits them by line index."""
from __future__ import annotations

import functools
import os
from typing import List, Tuple

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data')


@functools.lru_cache(maxsize=None)
def load_tsv(filename: str) -> Tuple[Tuple[str, str], ...]:
  """Rows (col0, col1) of a two-column TSV; '#' lines are comments. Bad rows name file and line."""
  path = os.path.join(DATA_DIR, filename)
  rows = []
  with open(path, encoding='utf-8') as f:
    for lineno, line in enumerate(f, 1):
      line = line.rstrip('\n')
      if not line.strip() or line.startswith('#'):
        continue
      cols = line.split('\t')
      if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
        raise ValueError(f'{path}:{lineno}: expected two non-empty tab-separated columns, '
                         f'got {line!r}')
      rows.append((cols[0].strip(), cols[1].strip()))
  return tuple(rows)


def split_rows(rows, split: str) -> List[Tuple[str, str]]:
  """Deterministic 80/10/10 split by row index: test = i % 10 == 0, validation = i % 10 == 1."""
  if split == 'test':
    return [r for i, r in enumerate(rows) if i % 10 == 0]
  if split == 'validation':
    return [r for i, r in enumerate(rows) if i % 10 == 1]
  if split == 'train':
    return [r for i, r in enumerate(rows) if i % 10 > 1]
  raise ValueError(f'Unknown split {split!r}; choose train, validation or test')
