"""The spill store: examples routed to one append-only file per (unit, split), checkpointed.

The first pass of prepare streams every input row into the spill file of its unit (task,
template type) and split. Records are `<u32 length><u64 key><payload>` (little endian); the key
is the row's 64-bit content hash, which the second pass uses to drop duplicates without reading
payloads. Writes are buffered in memory up to `buffer_bytes` in total (so memory does not grow
with the number of units or the input size) and appended file by file when the budget is hit.

Resumability: `checkpoint(state)` flushes every buffer and atomically records each spill file's
length with the caller's state; `restore()` truncates each file back to its recorded length
(dropping whatever a killed run appended after the checkpoint) and returns that state. So
records are never duplicated by a restart, and files end exactly as in an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Dict, Iterator, Optional, Tuple

HEADER = struct.Struct('<IQ')
CHECKPOINT = 'checkpoint.json'


def atomic_write_json(path: str, obj: Any) -> None:
  """Writes JSON to a temporary name, then renames it over `path` (readers see old or new)."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class SpillStore:
  """Append-only record files under `directory`, one per bucket name."""

  def __init__(self, directory: str, buffer_bytes: int = 32 << 20):
    self.directory = directory
    self._buffer_bytes = buffer_bytes
    self._buffers: Dict[str, bytearray] = {}
    self._pending = 0
    self._lengths: Dict[str, int] = {}
    os.makedirs(directory, exist_ok=True)

  def path(self, bucket: str) -> str:
    return os.path.join(self.directory, f'{bucket}.spill')

  def append(self, bucket: str, key: int, payload: bytes) -> None:
    buf = self._buffers.setdefault(bucket, bytearray())
    buf += HEADER.pack(len(payload), key)
    buf += payload
    self._pending += HEADER.size + len(payload)
    if self._pending >= self._buffer_bytes:
      self.flush()

  def flush(self) -> None:
    for bucket, buf in sorted(self._buffers.items()):
      if buf:
        with open(self.path(bucket), 'ab') as f:
          f.write(buf)
        self._lengths[bucket] = self._lengths.get(bucket, 0) + len(buf)
    self._buffers.clear()
    self._pending = 0

  def checkpoint(self, state: Dict[str, Any]) -> None:
    """Makes everything appended so far durable together with `state`."""
    self.flush()
    atomic_write_json(os.path.join(self.directory, CHECKPOINT),
                      {'lengths': self._lengths, 'state': state})

  def restore(self) -> Optional[Dict[str, Any]]:
    """The state of the last checkpoint (None if none), with every file cut back to it."""
    self._buffers.clear()
    self._pending = 0
    path = os.path.join(self.directory, CHECKPOINT)
    saved = {'lengths': {}, 'state': None}
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        saved = json.load(f)
    self._lengths = {k: int(v) for k, v in saved['lengths'].items()}
    for name in os.listdir(self.directory):
      if name.endswith('.spill'):
        bucket = name[:-len('.spill')]
        length = self._lengths.get(bucket, 0)
        if length:
          os.truncate(self.path(bucket), length)
        else:
          os.remove(self.path(bucket))
    return saved['state']

  def rollback(self, state_lengths: Dict[str, int]) -> None:
    """Drops buffered records and cuts files back to `state_lengths` (a lengths() snapshot)."""
    self._buffers.clear()
    self._pending = 0
    for bucket, length in list(self._lengths.items()):
      keep = state_lengths.get(bucket, 0)
      if length != keep:
        if keep:
          os.truncate(self.path(bucket), keep)
        elif os.path.exists(self.path(bucket)):
          os.remove(self.path(bucket))
    self._lengths = dict(state_lengths)

  def lengths(self) -> Dict[str, int]:
    """Flushed bytes per bucket (buffered records are not counted)."""
    return dict(self._lengths)


def read_keys(path: str) -> Iterator[int]:
  """The key of each record of a spill file, in order, without reading payloads."""
  with open(path, 'rb') as f:
    while True:
      header = f.read(HEADER.size)
      if not header:
        return
      length, key = HEADER.unpack(header)
      f.seek(length, os.SEEK_CUR)
      yield key


def read_records(path: str) -> Iterator[Tuple[int, bytes]]:
  """(key, payload) of each record of a spill file, in order."""
  with open(path, 'rb', buffering=1 << 20) as f:
    while True:
      header = f.read(HEADER.size)
      if not header:
        return
      length, key = HEADER.unpack(header)
      yield key, f.read(length)
