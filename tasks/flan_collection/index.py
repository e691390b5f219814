"""DATA_DIR/index.json: what prepare wrote, the only thing registration reads.

Layout (format 'moe_flan.flan_collection/1'):
  settings      the prepare settings (sources, shards, validation fraction, column names)
  inputs        {file: {'rows', 'valid', 'bad_rows': {reason: n}}}; skipped_files {file: error}
  bad_rows      {reason: n} over all files
  vocabulary    null (text only) or tokens.describe() of the vocabulary whose ids the shards
                also hold (`inputs_ids`, `targets_ids`)
  units         one per (task source, task, template type), sorted by name:
                {'name', 'task_source', 'task_name', 'template_type',
                 'splits': {split: {'examples', 'duplicates', 'shards': [{'file', 'examples',
                 'bytes'}]}}} (file paths relative to DATA_DIR)
  tasks         {task source: {task name: {template type: {split: examples}}}}
  sources       {source: {'tasks', 'examples': {split: n}, 'template_types': {type: n}}}
  empty_tasks   {task name: {reason: n}}: tasks whose every row was rejected
The index is written last (atomically), so a DATA_DIR with an index.json is complete.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any, Dict, List

FORMAT = 'moe_flan.flan_collection/1'
INDEX = 'index.json'


def summarise(units: List[Dict[str, Any]]) -> Dict[str, Any]:
  """The 'tasks' and 'sources' sections, from the units."""
  tasks: Dict[str, Any] = {}
  sources: Dict[str, Any] = {}
  for unit in units:
    counts = {split: s['examples'] for split, s in unit['splits'].items()}
    by_task = tasks.setdefault(unit['task_source'], {})
    by_task.setdefault(unit['task_name'], {})[unit['template_type']] = counts
    src = sources.setdefault(unit['task_source'], {'tasks': set(), 'examples':
                                                   collections.Counter(),
                                                   'template_types': collections.Counter()})
    src['tasks'].add(unit['task_name'])
    src['examples'].update(counts)
    src['template_types'][unit['template_type']] += sum(counts.values())
  for src in sources.values():
    src['tasks'] = len(src['tasks'])
    src['examples'] = dict(sorted(src['examples'].items()))
    src['template_types'] = dict(sorted(src['template_types'].items()))
  tasks = {src: dict(sorted(t.items())) for src, t in sorted(tasks.items())}
  return {'tasks': tasks, 'sources': dict(sorted(sources.items()))}


def load(data_dir: str, verify: bool = True) -> Dict[str, Any]:
  """The index of a prepared DATA_DIR; ValueError naming what is wrong when it is missing,
  unfinished, of another format, or (verify=True) does not match the shard files on disk."""
  path = os.path.join(data_dir, INDEX)
  if not os.path.exists(path):
    hint = (' (an unfinished prepare is there: rerun the same prepare command to finish it)'
            if os.path.isdir(os.path.join(data_dir, '.prepare')) else '')
    raise ValueError(f'FLAN_COLLECTION_DIR={data_dir!r}: no {INDEX}{hint}; run '
                     '`python -m tasks.flan_collection prepare --src ... --out DATA_DIR`')
  try:
    with open(path, encoding='utf-8') as f:
      index = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e.msg} at line {e.lineno})') from None
  if index.get('format') != FORMAT:
    raise ValueError(f'{path}: format {index.get("format")!r}, expected {FORMAT!r}')
  if verify:
    check_shards(data_dir, index)
  return index


def check_shards(data_dir: str, index: Dict[str, Any]) -> None:
  """ValueError naming the first shard that is missing or whose size differs from the index,
  and any shard file on disk the index does not list."""
  listed = set()
  for unit in index['units']:
    for split, info in unit['splits'].items():
      for shard in info['shards']:
        path = os.path.join(data_dir, shard['file'])
        listed.add(os.path.normpath(path))
        if not os.path.exists(path):
          raise ValueError(f'{data_dir}/{INDEX} does not match its shards: {shard["file"]} '
                           f'({unit["name"]} {split}) is missing; rerun prepare into a new '
                           'directory')
        size = os.path.getsize(path)
        if size != shard['bytes']:
          raise ValueError(f'{data_dir}/{INDEX} does not match its shards: {shard["file"]} has '
                           f'{size} bytes, the index says {shard["bytes"]}; rerun prepare into '
                           'a new directory')
  for root, _, files in os.walk(data_dir):
    for name in files:
      path = os.path.normpath(os.path.join(root, name))
      if '.tfrecord-' in name and path not in listed:
        raise ValueError(f'{data_dir}/{INDEX} does not match its shards: '
                         f'{os.path.relpath(path, data_dir)} is not in the index')
