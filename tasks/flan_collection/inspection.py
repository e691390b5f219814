"""What a prepared DATA_DIR holds: examples per source and template type, rejected rows, token
length percentiles and rendered samples (read from the shards). Used by `python -m
tasks.inspect --data_dir DATA_DIR`."""
from __future__ import annotations

import sys
from typing import Any, Dict, List

import numpy as np
import tensorflow as tf

from tasks import vocab
from tasks.flan_collection import index as index_lib
from tasks.flan_collection import writing


def _rows(data_dir: str, files: List[str], limit: int) -> List[Dict[str, str]]:
  paths = [f'{data_dir}/{f}' for f in files]
  ds = tf.data.TFRecordDataset(paths).take(limit).map(tf.autograph.experimental.do_not_convert(
      lambda r: tf.io.parse_single_example(r, writing.feature_description())))
  return [{k: v.decode('utf-8') for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def percentiles(lengths: List[int]) -> Dict[str, int]:
  if not lengths:
    return {'p50': 0, 'p90': 0, 'p99': 0, 'max': 0}
  p = np.percentile(lengths, [50, 90, 99])
  return {'p50': int(p[0]), 'p90': int(p[1]), 'p99': int(p[2]), 'max': int(max(lengths))}


def describe(data_dir: str, samples: int = 2, max_examples: int = 500, out=None
             ) -> Dict[str, Any]:
  """Prints the report; returns {source: {'examples', 'template_types', 'inputs_tokens',
  'targets_tokens'}} (token percentiles over up to `max_examples` train rows per source)."""
  out = out or sys.stdout   # looked up per call, so redirected output is followed
  index = index_lib.load(data_dir)
  voc = vocab.default_vocabulary()
  print(f'== {data_dir}: {len(index["units"])} units (task x template type), '
        f'{sum(len(t) for t in index["tasks"].values())} tasks', file=out)
  print(f'rejected rows: {index["bad_rows"] or "none"}; skipped files: '
        f'{sorted(index["skipped_files"]) or "none"}', file=out)
  summary = {}
  for source, info in index['sources'].items():
    files = [s['file'] for u in index['units'] if u['task_source'] == source
             for s in u['splits'].get('train', {}).get('shards', [])]
    rows = _rows(data_dir, files, max_examples) if files else []
    stats = {'examples': info['examples'], 'template_types': info['template_types']}
    print(f'\n-- {source}: {info["tasks"]} tasks, examples {info["examples"]}', file=out)
    print(f'   template types: {info["template_types"]}', file=out)
    for key in ('inputs', 'targets'):
      lens = [len(ids) + 1 for ids in vocab.encode_batch(voc, [r[key] for r in rows])]
      stats[f'{key}_tokens'] = percentiles(lens)
      print(f'   {key} tokens (with EOS, {len(rows)} rows): {stats[f"{key}_tokens"]}', file=out)
    for row in rows[:samples]:
      print(f'   [{row["task_name"]} / {row["template_type"]}]', file=out)
      print(f'   INPUTS : {row["inputs"]!r}', file=out)
      print(f'   TARGETS: {row["targets"]!r}', file=out)
    summary[source] = stats
  return summary
