"""Small FLAN Collection exports in the published schema (inputs, targets, task_source,
task_name, template_type), written by the tests as Parquet, JSONL and JSONL.gz."""
import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ('inputs', 'targets', 'task_source', 'task_name', 'template_type')
# (task_source as exported, task_name, template types, rows per template type)
TASKS = (('Flan2021', 'anli_r1:0.1.0', ('zs_opt', 'fs_noopt'), 30),
         ('Flan2021', 'trivia_qa:1.1.0', ('zs_opt', 'zs_noopt', 'fs_opt', 'fs_noopt'), 25),
         ('P3', 'adversarial_qa_dbert_answer_the_following_q', ('zs_opt', 'fs_opt'), 40),
         ('NIv2', 'task001_quoref_question_generation', ('zs_opt', 'fs_opt'), 300),
         ('CoT', 'cot_gsm8k', ('cot_zs_opt', 'cot_fs_opt'), 20),
         ('Dialog', 'wiki_dialog_ii', ('zs_opt',), 12))


def rows(duplicates=True):
  """Deterministic rows; every 7th row repeats an earlier one of its task (a duplicate)."""
  out = []
  for source, task, types, n in TASKS:
    for ttype in types:
      for i in range(n):
        j = i - 3 if duplicates and i % 7 == 6 else i
        out.append({'inputs': f'{task} {ttype} question {j}: what is {j} + {j % 5}?',
                    'targets': f'{ttype}-{task[:6]}-{j + j % 5}',
                    'task_source': source, 'task_name': task, 'template_type': ttype})
  return out


def unique_count(rs):
  return len({tuple(r[c] for c in COLUMNS) for r in rs})


def write_jsonl(path, rs, gz=False):
  opener = gzip.open if gz else open
  with opener(path, 'wt', encoding='utf-8') as f:
    for r in rs:
      f.write((r if isinstance(r, str) else json.dumps(r)) + '\n')
  return str(path)


def write_parquet(path, rs, row_group_size=50):
  table = pa.table({c: [r[c] for r in rs] for c in COLUMNS})
  pq.write_table(table, str(path), row_group_size=row_group_size)
  return str(path)


def write_split(directory, rs, kind, parts=3):
  """`rs` over `parts` files of one kind ('parquet', 'jsonl', 'jsonl.gz')."""
  os.makedirs(directory, exist_ok=True)
  chunk = (len(rs) + parts - 1) // parts
  for p in range(parts):
    part = rs[p * chunk:(p + 1) * chunk]
    path = os.path.join(directory, f'part-{p:03d}.{kind}')
    if kind == 'parquet':
      write_parquet(path, part)
    else:
      write_jsonl(path, part, gz=kind.endswith('.gz'))
  return str(directory)


def shard_bytes(data_dir):
  """{relative path: bytes} of every TFRecord shard under data_dir."""
  out = {}
  for root, _, files in os.walk(data_dir):
    for name in files:
      if '.tfrecord-' in name:
        path = os.path.join(root, name)
        with open(path, 'rb') as f:
          out[os.path.relpath(path, data_dir)] = f.read()
  return out


def unregister(data_dir):
  """Removes the unprefixed tasks and mixtures that the gin overlay or `tasks.inspect` registered
  from `data_dir`, so another test module can register another collection under those names."""
  from tasks import registry  # pylint: disable=g-import-not-at-top
  from tasks.flan_collection import registration  # pylint: disable=g-import-not-at-top
  names = registration.register(data_dir)   # the names registered (same definition: no-op)
  for name in names['tasks'] + names['mixtures']:
    registry.remove_if_different(name, fingerprint='')
