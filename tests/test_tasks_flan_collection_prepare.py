"""FLAN Collection prepare: formats agree, rows are validated and counted, duplicates dropped,
a SIGKILLed prepare resumes to byte-identical shards, bad input fails clearly."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tasks.flan_collection import index as index_lib
from tasks.flan_collection import prepare, writing
import flan_collection_fixtures as fx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(num_shards=3, min_rows_per_shard=40, validation_fraction=0.1)


def _quiet(*_):
  pass


def _read_shards(data_dir):
  """{(task_source, task_name, template_type, inputs, targets)} read back from the shards."""
  out = []
  for rel in fx.shard_bytes(data_dir):
    for rec in tf.data.TFRecordDataset(os.path.join(data_dir, rel)).as_numpy_iterator():
      ex = tf.io.parse_single_example(rec, writing.feature_description())
      out.append(tuple(ex[k].numpy().decode() for k in fx.COLUMNS))
  return out


def test_parquet_jsonl_and_gzip_give_identical_shards(tmp_path):
  rows = fx.rows()
  shards = {}
  for kind in ('parquet', 'jsonl', 'jsonl.gz'):
    src = fx.write_split(tmp_path / f'src_{kind}', rows, kind)
    index = prepare.prepare(src, str(tmp_path / f'out_{kind}'), log=_quiet, **SETTINGS)
    shards[kind] = fx.shard_bytes(tmp_path / f'out_{kind}')
  assert shards['parquet'] == shards['jsonl'] == shards['jsonl.gz']
  assert len(shards['parquet']) > len(index['units'])  # big units have several shards
  # Content: every distinct row exactly once (canonical source names), nothing else.
  canon = {'Flan2021': 'flan2021', 'P3': 't0', 'NIv2': 'niv2', 'CoT': 'cot', 'Dialog': 'dialog'}
  expected = {(canon[r['task_source']],) + tuple(r[c] for c in fx.COLUMNS[:2]) +
              (r['task_name'], r['template_type']) for r in rows}
  got = _read_shards(tmp_path / 'out_jsonl')
  assert len(got) == len(set(got)) == fx.unique_count(rows)
  assert {(s, i, t, n, tt) for i, t, s, n, tt in got} == expected
  dups = sum(s['duplicates'] for u in index['units'] for s in u['splits'].values())
  assert dups == len(rows) - fx.unique_count(rows) > 0
  # Each unit's validation slice is the same rows whatever the format, and about 10%.
  val = sum(index['sources'][s]['examples'].get('validation', 0) for s in index['sources'])
  assert 0.05 < val / len(got) < 0.15


def test_bad_rows_are_counted_by_reason(tmp_path):
  good = fx.rows(duplicates=False)[:5]
  bad = ['{"inputs": "x", ', '["a list"]',
         json.dumps(dict(good[0], inputs='   ')), json.dumps(dict(good[0], targets='')),
         json.dumps({k: v for k, v in good[0].items() if k != 'targets'}),
         json.dumps(dict(good[0], targets=3)), json.dumps(dict(good[0], inputs='\ud800')),
         json.dumps(dict(good[0], task_name=' ')),
         json.dumps(dict(good[0], task_name='all_bad_task', targets=' '))]
  src = tmp_path / 'src'
  src.mkdir()
  path = fx.write_jsonl(src / 'a.jsonl', good + bad)
  with open(path, 'ab') as f:
    f.write(b'{"inputs": "caf\xe9", "targets": "x", "task_name": "t"}\n')  # Latin-1 byte
  index = prepare.prepare(str(src), str(tmp_path / 'out'), log=_quiet)
  expected = {'bad_json': 1, 'not_an_object': 1, 'empty_inputs': 1, 'empty_targets': 2,
              'missing_field': 1, 'not_text': 1, 'bad_utf8': 2, 'empty_task_name': 1}
  assert index['inputs'][path] == {'rows': 15, 'valid': 5, 'bad_rows': expected}
  assert index['bad_rows'] == expected
  assert index['empty_tasks'] == {'all_bad_task': {'empty_targets': 1}}


def _prepare_cmd(src, out):
  return [sys.executable, '-m', 'tasks.flan_collection', 'prepare', '--src', src, '--out', out,
          '--num_shards', '3', '--min_rows_per_shard', '40', '--validation_fraction', '0.1',
          '--buffer_mb', '1']


def _kill_when(proc, ready, timeout=120):
  deadline = time.time() + timeout
  while not ready():
    assert proc.poll() is None, 'prepare finished before it could be killed'
    assert time.time() < deadline, 'prepare made no progress'
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def test_sigkilled_prepare_resumes_to_identical_shards(tmp_path):
  rows = fx.rows()  # 24 files of ~50 rows: many checkpoints to be killed between
  src = fx.write_split(tmp_path / 'src', rows, 'jsonl', parts=24)
  reference = str(tmp_path / 'reference')
  prepare.prepare(src, reference, log=_quiet, **SETTINGS)
  out = str(tmp_path / 'out')
  env = dict(os.environ, PYTHONPATH=REPO)
  checkpoint = os.path.join(out, '.prepare', 'spill', 'checkpoint.json')

  def files_done():
    try:
      with open(checkpoint) as f:
        return json.load(f)['state']['next_file']
    except (OSError, ValueError):
      return 0
  proc = subprocess.Popen(_prepare_cmd(src, out), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  _kill_when(proc, lambda: files_done() >= 3)
  assert not os.path.exists(os.path.join(out, index_lib.INDEX))
  assert 3 <= files_done() < 24
  # The same command finishes the job (in this process: a restart is a fresh call).
  logs = []
  prepare.prepare(src, out, log=logs.append, **SETTINGS)
  assert any(line.startswith('resuming: ') for line in logs)
  assert not any(f'[{i}/24]' in line for line in logs for i in range(1, 4))  # not re-read
  assert fx.shard_bytes(out) == fx.shard_bytes(reference)
  assert not os.path.exists(os.path.join(out, prepare.WORK_DIR))
  with open(os.path.join(out, 'index.json')) as f, open(os.path.join(reference, 'index.json')) as g:
    assert json.load(f)['units'] == json.load(g)['units']


def test_killed_between_shards_skips_finished_shards(tmp_path):
  """In-process: the shard pass interrupted after some shards redoes only the missing ones."""
  src = fx.write_split(tmp_path / 'src', fx.rows(), 'parquet', parts=2)
  reference = str(tmp_path / 'reference')
  prepare.prepare(src, reference, log=_quiet, **SETTINGS)
  out = str(tmp_path / 'out')
  calls = []
  real = writing.write_shard

  def crash_after_three(path, records):
    if len(calls) == 3:
      with open(path + writing.TMP_SUFFIX, 'wb') as f:
        f.write(b'partial')  # what a kill mid-write leaves
      raise KeyboardInterrupt
    calls.append(path)
    return real(path, records)
  writing.write_shard = crash_after_three
  try:
    with pytest.raises(KeyboardInterrupt):
      prepare.prepare(src, out, log=_quiet, **SETTINGS)
  finally:
    writing.write_shard = real
  done = {p: os.path.getmtime(p) for p in calls}
  prepare.prepare(src, out, log=_quiet, **SETTINGS)
  assert all(os.path.getmtime(p) == t for p, t in done.items())  # not rewritten
  assert fx.shard_bytes(out) == fx.shard_bytes(reference)
  assert not any(n.endswith('.tmp') for _, _, fs in os.walk(out) for n in fs)


def test_missing_columns_name_them_and_the_columns_found(tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  fx.write_jsonl(src / 'a.jsonl', [{'question': 'q', 'answer': 'a', 'task_name': 't'}])
  with pytest.raises(ValueError, match=r"a.jsonl: missing needed columns: inputs \(looked for "
                     r"inputs.*targets \(looked for .*columns found: \['answer', 'question', "
                     r"'task_name'\]"):
    prepare.prepare(str(src), str(tmp_path / 'out'), log=_quiet)
  assert not os.path.exists(tmp_path / 'out' / 'index.json')
  # Named columns fix it.
  index = prepare.prepare(str(src), str(tmp_path / 'out2'), log=_quiet,
                          columns=(('inputs', 'question'), ('targets', 'answer')))
  assert index['units'][0]['splits']['train']['examples'] == 1


def test_corrupt_file_stops_or_is_skipped_and_reported(tmp_path):
  rows = fx.rows(duplicates=False)
  src = fx.write_split(tmp_path / 'src', rows, 'jsonl.gz', parts=2)
  bad = os.path.join(src, 'part-001.jsonl.gz')
  with open(bad, 'rb') as f:
    data = f.read()
  with open(bad, 'wb') as f:
    f.write(data[:len(data) // 2])  # truncated gzip: its first rows read fine, then EOFError
  with open(os.path.join(src, 'part-002.parquet'), 'wb') as f:
    f.write(b'PAR1 not really parquet')
  with pytest.raises(ValueError, match=r'part-001.jsonl.gz: unreadable gzip JSONL.*'
                     '--skip_bad_files'):
    prepare.prepare(src, str(tmp_path / 'out'), log=_quiet)
  assert not os.path.exists(tmp_path / 'out' / 'index.json')
  logs = []
  index = prepare.prepare(src, str(tmp_path / 'out2'), log=logs.append, skip_bad_files=True)
  assert sorted(index['skipped_files']) == [bad, os.path.join(src, 'part-002.parquet')]
  assert 'Parquet' in index['skipped_files'][os.path.join(src, 'part-002.parquet')]
  assert any(line.startswith('SKIPPED FILE') and bad in line for line in logs)
  # No row of a skipped file is kept, even those read before the corruption.
  total = sum(s['examples'] for u in index['units'] for s in u['splits'].values())
  assert total == (len(rows) + 1) // 2


def test_no_valid_rows_and_non_empty_out_are_errors(tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  fx.write_jsonl(src / 'a.jsonl', [dict(fx.rows()[0], targets='')])
  with pytest.raises(ValueError, match=r"no valid rows in 1 files.*'empty_targets': 1"):
    prepare.prepare(str(src), str(tmp_path / 'out'), log=_quiet)
  assert not os.path.exists(tmp_path / 'out' / 'index.json')
  other = tmp_path / 'other'
  other.mkdir()
  (other / 'x.txt').write_text('x')
  with pytest.raises(ValueError, match='is not empty'):
    prepare.prepare(str(src), str(other), log=_quiet)
  with pytest.raises(ValueError, match='no .parquet/.jsonl'):
    prepare.prepare(str(tmp_path / 'nothing*'), str(tmp_path / 'o3'), log=_quiet)


def test_index_that_does_not_match_its_shards_is_an_error(tmp_path):
  src = fx.write_split(tmp_path / 'src', fx.rows(), 'jsonl', parts=1)
  out = str(tmp_path / 'out')
  index = prepare.prepare(src, out, log=_quiet, **SETTINGS)
  index_lib.load(out)  # matches
  shard = os.path.join(out, index['units'][0]['splits']['train']['shards'][0]['file'])
  with open(shard, 'ab') as f:
    f.write(b'x')
  with pytest.raises(ValueError, match=r'does not match its shards: .*has \d+ bytes, the index '
                     r'says \d+'):
    index_lib.load(out)
  os.remove(shard)
  with pytest.raises(ValueError, match='does not match its shards: .* is missing'):
    index_lib.load(out)
  os.rename(os.path.join(out, 'index.json'), os.path.join(out, 'moved.json'))
  with pytest.raises(ValueError, match='no index.json'):
    index_lib.load(out)



