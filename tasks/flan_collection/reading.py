"""Streaming readers for the published FLAN Collection exports: Parquet, JSONL, JSONL.gz.

Rows come out one at a time as `{canonical field: value}` dicts (fields of
`validation.TEXT_FIELDS`), with memory bounded by one Parquet record batch or one JSON line,
so a file larger than RAM streams. Column names are resolved per file: an explicit
`{field: column}` mapping wins, else the first of the common spellings in `COLUMN_ALIASES`
present in the file.

Errors: a file without a needed column, or one that cannot be read (corrupt Parquet footer,
truncated gzip, ...), raises `BadFileError` naming the file (and the missing and found
columns). A JSONL line that does not parse is yielded as the reason string
`validation.BAD_JSON` / `validation.NOT_AN_OBJECT`, to be counted.
"""
from __future__ import annotations

import glob
import gzip
import json
import os
import zlib
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from tasks.flan_collection import validation

COLUMN_ALIASES: Dict[str, Sequence[str]] = {
    'inputs': ('inputs', 'input', 'prompt', 'source', 'inputs_pretokenized'),
    'targets': ('targets', 'target', 'output', 'completion', 'response',
                'targets_pretokenized'),
    'task_source': ('task_source', '_task_source', 'source_collection'),
    'task_name': ('task_name', '_task_name', 'task'),
    'template_type': ('template_type', '_template_type'),
}
SUFFIXES = ('.parquet', '.jsonl', '.jsonl.gz', '.json', '.json.gz')
Item = Union[Dict[str, Any], str]


class BadFileError(ValueError):
  """An input file that cannot be used as a whole; the message names it."""


def list_files(src: str) -> List[str]:
  """Input files of `src` (a directory, searched recursively, a glob, or a file), sorted so the
  processing order, and so the output, does not depend on the file system's listing order."""
  if os.path.isdir(src):
    paths = [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs]
  else:
    paths = glob.glob(src, recursive=True)
  paths = sorted(p for p in paths if os.path.isfile(p) and p.endswith(SUFFIXES))
  if not paths:
    raise ValueError(f'--src {src!r}: no {"/".join(SUFFIXES)} files found')
  return paths


def resolve_columns(path: str, found: Sequence[str],
                    overrides: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
  """{canonical field: column in this file}; BadFileError naming missing and found columns."""
  overrides = dict(overrides or {})
  unknown = set(overrides) - set(COLUMN_ALIASES)
  if unknown:
    raise ValueError(f'--columns: unknown fields {sorted(unknown)}; known: {list(COLUMN_ALIASES)}')
  mapping, missing = {}, []
  for field, aliases in COLUMN_ALIASES.items():
    candidates = [overrides[field]] if field in overrides else aliases
    column = next((c for c in candidates if c in found), None)
    if column is not None:
      mapping[field] = column
    elif field in validation.REQUIRED_FIELDS or field in overrides:
      missing.append(f'{field} (looked for {", ".join(candidates)})')
  if missing:
    raise BadFileError(f'{path}: missing needed columns: {"; ".join(missing)}; columns found: '
                       f'{sorted(found)}')
  return mapping


def _parquet_rows(path: str, overrides, batch_rows: int) -> Iterator[Item]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  try:
    pfile = pq.ParquetFile(path)
    mapping = resolve_columns(path, pfile.schema_arrow.names, overrides)
    columns = sorted(set(mapping.values()))
    for batch in pfile.iter_batches(batch_size=batch_rows, columns=columns):
      data = {field: batch.column(batch.schema.get_field_index(column)).to_pylist()
              for field, column in mapping.items()}
      for i in range(batch.num_rows):
        yield {field: values[i] for field, values in data.items()}
  except (pa.ArrowException, OSError) as e:
    raise BadFileError(f'{path}: unreadable Parquet ({type(e).__name__}: {e})') from None


def _open_text(path: str):
  return gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')


def _jsonl_rows(path: str, overrides) -> Iterator[Item]:
  mapping = None
  try:
    with _open_text(path) as f:
      for raw in f:
        if not raw.strip():
          continue
        try:
          text = raw.decode('utf-8')
        except UnicodeDecodeError:
          yield validation.BAD_UTF8
          continue
        try:
          obj = json.loads(text)
        except json.JSONDecodeError:
          yield validation.BAD_JSON
          continue
        if not isinstance(obj, dict):
          yield validation.NOT_AN_OBJECT
          continue
        if mapping is None:  # the first object fixes the column names of the file
          mapping = resolve_columns(path, list(obj), overrides)
        yield {field: obj.get(column) for field, column in mapping.items()}
  except (OSError, EOFError, zlib.error) as e:
    raise BadFileError(f'{path}: unreadable {"gzip " if path.endswith(".gz") else ""}JSONL '
                       f'({type(e).__name__}: {e})') from None


def iter_rows(path: str, columns: Optional[Mapping[str, str]] = None,
              batch_rows: int = 4096) -> Iterator[Item]:
  """Rows of one file, in file order: field dicts, or reason strings for unparseable lines."""
  if path.endswith('.parquet'):
    return _parquet_rows(path, columns, batch_rows)
  return _jsonl_rows(path, columns)
