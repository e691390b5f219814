"""Offline English text present on every machine: docstrings of Python's standard library.

Read from the stdlib's own source files with `ast` (nothing is imported or executed), in sorted
file order, so the corpus is identical wherever the same Python version is installed (setup.py
pins 3.11). Doctest lines are dropped, paragraphs are unwrapped into single lines. Documents are
split into train/validation/test by index (1 in 50 each to validation and test).
"""
from __future__ import annotations

import ast
import functools
import glob
import hashlib
import os
import re
import sysconfig
from typing import List, Tuple

MIN_DOC_CHARS = 200


def _clean(docstring: str) -> str:
  paragraphs = []
  for para in re.split(r'\n\s*\n', docstring):
    lines = [ln.strip() for ln in para.splitlines()]
    if any(ln.startswith(('>>>', '...', '$ ', '%')) for ln in lines):
      continue  # code examples, not prose
    text = ' '.join(ln for ln in lines if ln)
    if text:
      paragraphs.append(text)
  return '\n'.join(paragraphs)


def _docstrings(path: str) -> List[str]:
  with open(path, 'rb') as f:
    source = f.read()
  try:
    tree = ast.parse(source, filename=path)
  except (SyntaxError, ValueError):
    return []  # a file this interpreter cannot parse contributes nothing (deterministically)
  out = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node)
      if doc:
        doc = _clean(doc)
        if len(doc) >= MIN_DOC_CHARS:
          out.append(doc)
  return out


@functools.lru_cache(maxsize=None)
def documents() -> Tuple[str, ...]:
  """All corpus documents (cached; ~1,000 documents, ~0.6M characters on CPython 3.11)."""
  stdlib = sysconfig.get_paths()['stdlib']
  docs = []
  for path in sorted(glob.glob(os.path.join(stdlib, '*.py'))):
    docs.extend(_docstrings(path))
  if not docs:
    raise ValueError(f'No docstrings found under the Python stdlib at {stdlib!r}; the span '
                     'corruption corpus needs the stdlib .py sources')
  return tuple(docs)


def split_documents(split: str) -> Tuple[str, ...]:
  docs = documents()
  if split == 'validation':
    return docs[0::50]
  if split == 'test':
    return docs[1::50]
  if split == 'train':
    return tuple(d for i, d in enumerate(docs) if i % 50 > 1)
  raise ValueError(f'Unknown split {split!r}; choose train, validation or test')


def fingerprint() -> str:
  """Short hash of the corpus text (logged so runs on different Pythons can be compared)."""
  return hashlib.sha256('\x00'.join(documents()).encode('utf-8')).hexdigest()[:12]
