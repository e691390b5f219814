"""Writing a small text or JSON file so that a reader never sees half of it.

Run records (model.gin, config.gin, mesh.json), evaluation results and predictions, and an
experiment's files are read by other processes while a run goes on (`moe_flan.load`, a resumed
experiment, a user's script). Each is written to a temporary file beside it, flushed to disk,
then renamed over the old one: a crash or a failing serializer leaves the old file (or none),
never a truncated one, and removes its temporary file.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Any, Callable, Iterable


def write_with(path: str, write: Callable[[IO[str]], Any]) -> str:
  """Calls `write(f)` on a temporary text file beside `path` that then replaces `path`;
  returns `path`. If `write` (or anything up to the rename) raises, `path` is untouched and the
  temporary file is removed."""
  # Beside `path` (a rename within one file system is atomic), named per process so that two
  # processes writing the same file do not share a temporary; created under the umask.
  tmp = f'{path}.{os.getpid()}.tmp'
  try:
    with open(tmp, 'w', encoding='utf-8') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())   # the rename must not land before the data does
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  return path


def write_text(path: str, text: str) -> str:
  """Replaces `path` with `text` (UTF-8) atomically; returns `path`."""
  return write_with(path, lambda f: f.write(text))


def write_json(path: str, value: Any, indent: int = 1, sort_keys: bool = True) -> str:
  """Replaces `path` with `value` as JSON atomically; returns `path`."""
  return write_with(path, lambda f: json.dump(value, f, indent=indent, sort_keys=sort_keys))


def write_jsonl(path: str, rows: Iterable[Any], ensure_ascii: bool = True) -> str:
  """Replaces `path` with one JSON value a line atomically; returns `path`."""
  return write_with(path, lambda f: f.writelines(
      json.dumps(r, ensure_ascii=ensure_ascii) + '\n' for r in rows))
