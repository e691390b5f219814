"""Row checks: what makes a published row unusable, and counts of rejected rows per reason.

A row is kept when `inputs` and `targets` are non-empty (after stripping whitespace) UTF-8
strings and `task_name` is non-empty; `task_source` and `template_type` may be empty (they
default to 'unknown' and 'unspecified'). Every rejected row is counted under one reason, per
input file; nothing is dropped without a count.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

# Reasons a row is rejected (the reading module adds the two per-line JSON reasons).
BAD_JSON = 'bad_json'                 # a JSONL line that does not parse
NOT_AN_OBJECT = 'not_an_object'       # a JSONL line that is not a JSON object
MISSING_FIELD = 'missing_field'       # a needed column absent (or null) in this row
NOT_TEXT = 'not_text'                 # a field that is not a string (number, list, ...)
BAD_UTF8 = 'bad_utf8'                 # bytes that are not valid UTF-8
EMPTY_INPUTS = 'empty_inputs'         # inputs empty or whitespace only
EMPTY_TARGETS = 'empty_targets'       # targets empty or whitespace only
EMPTY_TASK_NAME = 'empty_task_name'   # task_name empty or whitespace only
REASONS = (BAD_JSON, NOT_AN_OBJECT, MISSING_FIELD, NOT_TEXT, BAD_UTF8, EMPTY_INPUTS,
           EMPTY_TARGETS, EMPTY_TASK_NAME)

TEXT_FIELDS = ('inputs', 'targets', 'task_source', 'task_name', 'template_type')
REQUIRED_FIELDS = ('inputs', 'targets', 'task_name')
DEFAULTS = {'task_source': 'unknown', 'template_type': 'unspecified'}


@dataclasses.dataclass(frozen=True)
class Row:
  """One valid example, with its canonical metadata strings."""
  inputs: str
  targets: str
  task_source: str
  task_name: str
  template_type: str


def _text(value: Any) -> Tuple[Optional[str], Optional[str]]:
  """(text, None) or (None, reason)."""
  if isinstance(value, str):
    return value, None
  if isinstance(value, (bytes, bytearray)):
    try:
      return bytes(value).decode('utf-8'), None
    except UnicodeDecodeError:
      return None, BAD_UTF8
  return None, NOT_TEXT


def check(raw: Mapping[str, Any]) -> Tuple[Optional[Row], Optional[str]]:
  """(Row, None) for a usable row `{field: value}` (canonical field names), else (None, reason).

  Strings that came from JSON may hold lone surrogates ('\\ud800'), which are not UTF-8;
  they count as bad_utf8.
  """
  values: Dict[str, str] = {}
  for field in TEXT_FIELDS:
    value = raw.get(field)
    if value is None:
      if field in REQUIRED_FIELDS:
        return None, MISSING_FIELD
      values[field] = DEFAULTS[field]
      continue
    text, reason = _text(value)
    if reason:
      return None, reason
    try:
      text.encode('utf-8')
    except UnicodeEncodeError:
      return None, BAD_UTF8
    values[field] = text
  if not values['inputs'].strip():
    return None, EMPTY_INPUTS
  if not values['targets'].strip():
    return None, EMPTY_TARGETS
  if not values['task_name'].strip():
    return None, EMPTY_TASK_NAME
  for field in ('task_source', 'template_type'):
    values[field] = values[field].strip() or DEFAULTS[field]
  values['task_name'] = values['task_name'].strip()
  return Row(**values), None


class BadRowCounts:
  """Rejected rows per input file and reason."""

  def __init__(self, counts: Optional[Mapping[str, Mapping[str, int]]] = None):
    self._counts = collections.defaultdict(collections.Counter)
    for path, by_reason in (counts or {}).items():
      self._counts[path].update(by_reason)

  def add(self, path: str, reason: str, n: int = 1) -> None:
    self._counts[path][reason] += n

  def by_file(self) -> Dict[str, Dict[str, int]]:
    return {p: dict(sorted(c.items())) for p, c in sorted(self._counts.items()) if c}

  def by_reason(self) -> Dict[str, int]:
    total = collections.Counter()
    for c in self._counts.values():
      total.update(c)
    return dict(sorted(total.items()))

  def total(self) -> int:
    return sum(self.by_reason().values())
