"""Checksums of a committed checkpoint step, so a damaged file is named instead of restored.

Orbax/TensorStore store arrays zstd-compressed without a content checksum: a truncated data file
fails deep inside TensorStore with a message that names no file, and an overwritten block can
restore silently as wrong numbers. Once a step is committed, `seal` records every file's size
and CRC-32 in `<step>/checksums.json`; `problem` re-reads them before a restore and names the
first file that is missing, truncated, longer than written or fails its checksum.

A step without `checksums.json` (killed between commit and sealing, or written by another tool)
cannot be verified; orbax's own errors are then the only signal.
"""
from __future__ import annotations

import json
import os
import zlib
from typing import Optional

from moe_flan import atomic_file

MANIFEST = 'checksums.json'
_CHUNK = 1 << 24


class CorruptCheckpointError(ValueError):
  """A checkpoint step that cannot be restored; the message names the step, file and reason."""


def _files(step_dir: str) -> list[str]:
  """Paths of every regular file under `step_dir`, relative to it, except the manifest."""
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != MANIFEST:
        out.append(rel)
  return sorted(out)


def _crc32(path: str) -> int:
  crc = 0
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def seal(step_dir: str) -> None:
  """Writes `step_dir/checksums.json` (size and CRC-32 of every file), atomically."""
  files = {rel: {'size': os.path.getsize(os.path.join(step_dir, rel)),
                 'crc32': _crc32(os.path.join(step_dir, rel))} for rel in _files(step_dir)}
  atomic_file.write_json(os.path.join(step_dir, MANIFEST), {'algorithm': 'crc32', 'files': files},
                         indent=0)


def is_sealed(step_dir: str) -> bool:
  return os.path.exists(os.path.join(step_dir, MANIFEST))


def problem(step_dir: str) -> Optional[str]:
  """None if every file recorded in the manifest is intact (or there is no manifest), else a
  reason naming the first damaged file, e.g. 'state/d/ab12 is truncated (10 of 20 bytes)'."""
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      files = json.load(f)['files']
  except (OSError, ValueError, KeyError) as e:
    return f'{MANIFEST} is unreadable ({e})'
  for rel, rec in sorted(files.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.isfile(full):
      return f'{rel} is missing'
    size = os.path.getsize(full)
    if size < rec['size']:
      return f'{rel} is truncated ({size} of {rec["size"]} bytes)'
    if size > rec['size']:
      return f'{rel} is longer than written ({size} bytes, {rec["size"]} written)'
    crc = _crc32(full)
    if crc != rec['crc32']:
      return (f'{rel} fails its checksum (CRC-32 {crc:08x}, {rec["crc32"]:08x} when written): '
              'its contents were overwritten')
  return None


def first_line(error: BaseException) -> str:
  """The first line of an exception's message (TensorStore's run to dozens of lines)."""
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'
