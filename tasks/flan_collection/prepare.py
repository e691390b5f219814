"""prepare: published FLAN Collection files -> deduplicated, split TFRecord shards + index.json.

Two passes, both restartable:
  1. spill: stream each input file (sorted order), validate every row, hash it (64-bit
     blake2b of source, task, template type, inputs, targets), pick its split from the hash
     (the validation slice of each task is deterministic and duplicates land together), and
     append the encoded example to the spill file of its unit and split. A checkpoint after
     each file records the spill lengths; a restart cuts the spill back to it and continues
     with the next file.
  2. shard: per unit and split, read the keys only (8 bytes per row, the one in-memory
     structure that grows with a task's size), keep each key's first row, and write the kept
     rows in input order into contiguous shards; each shard is written under a temporary name
     and renamed, and a restart skips shards that exist.
The index is written last, then the spill is deleted. Memory is bounded by the spill buffer,
one record batch and one task's keys, not by the input size.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import shutil
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging
import numpy as np

from tasks.flan_collection import index as index_lib
from tasks.flan_collection import reading, sources, spill, tokens, validation, writing

WORK_DIR = '.prepare'
SPLITS = ('train', 'validation')


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a prepare run depends on; a restart must use the same."""
  src: str
  num_shards: int = 16
  min_rows_per_shard: int = 1000
  validation_fraction: float = 0.01
  columns: Tuple[Tuple[str, str], ...] = ()
  skip_bad_files: bool = False
  batch_rows: int = 4096
  buffer_bytes: int = 32 << 20
  vocabulary: str = ''   # '' text only; 'default', 'byte' or a SentencePiece model: store ids

  def __post_init__(self):
    if self.num_shards < 1:
      raise ValueError(f'--num_shards={self.num_shards}: must be >= 1')
    if self.min_rows_per_shard < 1:
      raise ValueError(f'--min_rows_per_shard={self.min_rows_per_shard}: must be >= 1')
    if not 0.0 <= self.validation_fraction < 1.0:
      raise ValueError(f'--validation_fraction={self.validation_fraction}: must be in [0, 1)')

  def fingerprint(self, files: List[str]) -> Dict[str, Any]:
    """Settings that change the output, plus each input file's size (a changed input
    invalidates an unfinished run)."""
    keep = dataclasses.asdict(self)
    for volatile in ('batch_rows', 'buffer_bytes', 'skip_bad_files'):
      keep.pop(volatile)
    keep['columns'] = dict(self.columns)
    # The vocabulary's identity (not its path) decides the stored ids.
    keep['vocabulary'] = (tokens.describe(tokens.load(self.vocabulary)) if self.vocabulary
                          else None)
    keep['inputs'] = {p: os.path.getsize(p) for p in files}
    return keep


def row_key(source: str, row: validation.Row) -> int:
  """<uint64> content hash of a row within its unit."""
  h = hashlib.blake2b(digest_size=8)
  for text in (source, row.task_name, row.template_type, row.inputs, row.targets):
    h.update(text.encode('utf-8'))
    h.update(b'\x00')
  return int.from_bytes(h.digest(), 'little')


def split_of(key: int, validation_fraction: float) -> str:
  return 'validation' if (key >> 11) * 2.0 ** -53 < validation_fraction else 'train'


def _unit_id(source: str, task: str, template_type: str) -> str:
  h = hashlib.blake2b(f'{source}\x00{task}\x00{template_type}'.encode('utf-8'), digest_size=8)
  return h.hexdigest()


def _encode(row: validation.Row, tokenizer: Optional[tokens.Tokenizer]) -> bytes:
  if tokenizer is None:
    return writing.encode(row)
  return writing.encode(row, {f: tokenizer(getattr(row, k))
                             for k, f in tokens.ID_FEATURES.items()})


def _spill_file(path: str, settings: Settings, store: spill.SpillStore,
                units: Dict[str, List[str]]) -> Dict[str, Any]:
  """Streams one file into the spill; returns its stats {'rows', 'valid', 'bad_rows',
  'bad_by_task'}. Raises reading.BadFileError if the file cannot be read."""
  bad = collections.Counter()
  bad_by_task: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  rows = valid = 0
  ids: Dict[Tuple[str, str, str], str] = {}
  tokenizer = tokens.Tokenizer(tokens.load(settings.vocabulary)) if settings.vocabulary else None
  for item in reading.iter_rows(path, dict(settings.columns), settings.batch_rows):
    rows += 1
    if isinstance(item, str):
      bad[item] += 1
      continue
    row, reason = validation.check(item)
    if reason:
      bad[reason] += 1
      task = item.get('task_name')
      if isinstance(task, str) and task.strip():
        bad_by_task[task.strip()][reason] += 1
      continue
    source = sources.canonical_source(row.task_source)
    triple = (source, row.task_name, row.template_type)
    uid = ids.get(triple)
    if uid is None:
      uid = ids[triple] = _unit_id(*triple)
      units.setdefault(uid, list(triple))
    key = row_key(source, row)
    store.append(f'{uid}.{split_of(key, settings.validation_fraction)}', key,
                 _encode(dataclasses.replace(row, task_source=source), tokenizer))
    valid += 1
  return {'rows': rows, 'valid': valid, 'bad_rows': dict(sorted(bad.items())),
          'bad_by_task': {t: dict(c) for t, c in sorted(bad_by_task.items())}}


def spill_pass(files: List[str], settings: Settings, store: spill.SpillStore,
               log=print) -> Dict[str, Any]:
  """Pass 1 (resumes from the spill's checkpoint); returns the final state."""
  state = store.restore() or {'next_file': 0, 'inputs': {}, 'skipped_files': {}, 'units': {}}
  if state['next_file']:
    log(f'resuming: {state["next_file"]} of {len(files)} input files already read')
  for i in range(state['next_file'], len(files)):
    path = files[i]
    before = store.lengths()
    units = dict(state['units'])
    try:
      stats = _spill_file(path, settings, store, units)
    except reading.BadFileError as e:
      if not settings.skip_bad_files:
        raise ValueError(f'{e} (pass --skip_bad_files to prepare the other files and report '
                         'this one)') from None
      store.rollback(before)  # rows already spilled from this file are dropped with it
      state['skipped_files'][path] = str(e)
      log(f'skipping bad file: {e}')
    else:
      state['inputs'][path] = stats
      state['units'] = units
      log(f'[{i + 1}/{len(files)}] {path}: {stats["valid"]} of {stats["rows"]} rows valid')
    state['next_file'] = i + 1
    store.checkpoint(state)
  return state


def _unit_names(units: Mapping[str, List[str]]) -> Dict[str, str]:
  """{unit id: 'source.task.template_type'} in slug form; colliding slugs get '_2', '_3'..."""
  names, taken = {}, collections.Counter()
  for uid, (source, task, ttype) in sorted(units.items(), key=lambda kv: (kv[1], kv[0])):
    base = f'{sources.slug(source)}.{sources.slug(task)}.{sources.slug(ttype)}'
    taken[base] += 1
    names[uid] = base if taken[base] == 1 else f'{base}_{taken[base]}'
  return names


def _first_occurrences(path: str) -> np.ndarray:
  """<bool>[num records] True for the first record of each key."""
  keys = np.fromiter(spill.read_keys(path), dtype=np.uint64)
  keep = np.zeros(keys.shape, dtype=bool)
  keep[np.unique(keys, return_index=True)[1]] = True
  return keep


def shard_split(out: str, stem: str, spill_path: str, settings: Settings) -> Dict[str, Any]:
  """Pass 2 for one unit and split; skips shards that already exist."""
  keep = _first_occurrences(spill_path)
  kept = int(keep.sum())
  num = max(1, min(settings.num_shards, kept // settings.min_rows_per_shard))
  bounds = [s * kept // num for s in range(num + 1)]
  names = writing.shard_names(stem, num)
  records = (payload for (_, payload), k in zip(spill.read_records(spill_path), keep) if k)
  shards = []
  for s, name in enumerate(names):
    path = os.path.join(out, name)
    chunk = (next(records) for _ in range(bounds[s + 1] - bounds[s]))
    if os.path.exists(path):
      collections.deque(chunk, maxlen=0)  # done by an earlier run: skip its rows
      size = os.path.getsize(path)
    else:
      size = writing.write_shard(path, chunk)
    shards.append({'file': name, 'examples': bounds[s + 1] - bounds[s], 'bytes': size})
  return {'examples': kept, 'duplicates': int(keep.size - kept), 'shards': shards}


def shard_pass(out: str, state: Dict[str, Any], settings: Settings,
               store: spill.SpillStore) -> List[Dict[str, Any]]:
  """Pass 2 over every unit; returns the index's 'units'."""
  writing.remove_temporaries(out)
  names = _unit_names(state['units'])
  units = []
  for uid, name in sorted(names.items(), key=lambda kv: kv[1]):
    source, task, ttype = state['units'][uid]
    splits = {}
    for split in SPLITS:
      path = store.path(f'{uid}.{split}')
      if os.path.exists(path):
        stem = os.path.join(sources.slug(source), f'{name.split(".", 1)[1]}.{split}')
        splits[split] = shard_split(out, stem, path, settings)
    if splits:
      units.append({'name': name, 'task_source': source, 'task_name': task,
                    'template_type': ttype, 'splits': splits})
  return units


def _empty_tasks(state: Dict[str, Any], units: List[Dict[str, Any]]) -> Dict[str, Any]:
  have = {u['task_name'] for u in units}
  empty: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for stats in state['inputs'].values():
    for task, by_reason in stats['bad_by_task'].items():
      if task not in have:
        empty[task].update(by_reason)
  return {t: dict(sorted(c.items())) for t, c in sorted(empty.items())}


def _check_out_dir(out: str, fingerprint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
  """The existing index when `out` is already prepared with these settings, else None;
  ValueError when `out` holds something else."""
  work = os.path.join(out, WORK_DIR)
  if os.path.exists(os.path.join(out, index_lib.INDEX)):
    existing = index_lib.load(out)
    if dict({'vocabulary': None}, **existing['settings']) != fingerprint:
      raise ValueError(f'--out {out!r} already holds a prepared collection made with other '
                       'settings or inputs; choose a new --out')
    return existing
  saved = os.path.join(work, 'settings.json')
  if os.path.exists(saved):
    with open(saved, encoding='utf-8') as f:
      import json  # pylint: disable=g-import-not-at-top
      if dict({'vocabulary': None}, **json.load(f)) != fingerprint:
        raise ValueError(f'--out {out!r} holds an unfinished prepare with other settings or '
                         f'inputs; rerun that command, or delete {work} to start over')
  elif os.path.isdir(out) and any(n != WORK_DIR for n in os.listdir(out)):
    raise ValueError(f'--out {out!r} is not empty and holds no prepare of ours; choose an '
                     'empty or new directory')
  return None


def prepare(src: str, out: str, log=print, **kwargs) -> Dict[str, Any]:
  """Runs (or finishes) a prepare; returns the index. kwargs: Settings fields."""
  settings = Settings(src=src, **kwargs)
  files = reading.list_files(src)
  fingerprint = settings.fingerprint(files)
  existing = _check_out_dir(out, fingerprint)
  if existing is not None:
    log(f'{out} is already prepared with these settings ({len(existing["units"])} units)')
    return existing
  work = os.path.join(out, WORK_DIR)
  os.makedirs(work, exist_ok=True)
  spill.atomic_write_json(os.path.join(work, 'settings.json'), fingerprint)
  store = spill.SpillStore(os.path.join(work, 'spill'), settings.buffer_bytes)
  state = spill_pass(files, settings, store, log)
  units = shard_pass(out, state, settings, store)
  bad = validation.BadRowCounts({p: s['bad_rows'] for p, s in state['inputs'].items()})
  if not units:
    raise ValueError(f'--src {src!r}: no valid rows in {len(files)} files (rejected rows by '
                     f'reason: {bad.by_reason()}; skipped files: {sorted(state["skipped_files"])})')
  index = {'format': index_lib.FORMAT, 'settings': fingerprint,
           'vocabulary': fingerprint['vocabulary'],
           'inputs': {p: {k: s[k] for k in ('rows', 'valid', 'bad_rows')}
                      for p, s in sorted(state['inputs'].items())},
           'skipped_files': state['skipped_files'], 'bad_rows': bad.by_reason(),
           'units': units, 'empty_tasks': _empty_tasks(state, units),
           **index_lib.summarise(units)}
  spill.atomic_write_json(os.path.join(out, index_lib.INDEX), index)
  shutil.rmtree(work)
  _report(index, log)
  return index


def _report(index: Dict[str, Any], log) -> None:
  for source, info in index['sources'].items():
    log(f'{source}: {info["tasks"]} tasks, examples {info["examples"]}, template types '
        f'{info["template_types"]}')
  dups = sum(s['duplicates'] for u in index['units'] for s in u['splits'].values())
  log(f'duplicates removed: {dups}; rejected rows: {index["bad_rows"] or "none"}')
  for path, error in index['skipped_files'].items():
    log(f'SKIPPED FILE {path}: {error}')
  if index['empty_tasks']:
    log(f'tasks with no valid rows (not registered): {index["empty_tasks"]}')
  logging.info('prepared %d units', len(index['units']))
  sys.stdout.flush()
