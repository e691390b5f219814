"""moe_flan.atomic_file: a file is replaced whole or not at all, and no temporary file stays
behind; the run records, evaluation results and experiment files are written through it."""
import json
import os

import jax
import numpy as np
import pytest

from moe_flan import atomic_file
from moe_flan import config as config_lib
from moe_flan import config_gin
from moe_flan.evaluation import report
from moe_flan.trainer import run_record


def _half_then_raise(value, f, **kwargs):
  """A serializer that dies half-way through its output, as a killed process would."""
  text = json.dumps(value, **kwargs)
  f.write(text[:len(text) // 2])
  f.flush()
  raise RuntimeError('serializer died')


def _listing(directory) -> list[str]:
  return sorted(os.listdir(directory))


def test_writes_replace_the_file_and_read_back(tmp_path):
  path = str(tmp_path / 'a.json')
  assert atomic_file.write_json(path, {'b': [1, 2], 'a': 'é'}) == path
  assert json.loads(open(path, encoding='utf-8').read()) == {'a': 'é', 'b': [1, 2]}
  atomic_file.write_text(path, 'second\n')
  assert open(path, encoding='utf-8').read() == 'second\n'
  rows = [{'x': 1}, {'y': 'ü'}]
  atomic_file.write_jsonl(str(tmp_path / 'r.jsonl'), rows, ensure_ascii=False)
  lines = open(tmp_path / 'r.jsonl', encoding='utf-8').read().splitlines()
  assert [json.loads(line) for line in lines] == rows and 'ü' in lines[1]
  assert _listing(tmp_path) == ['a.json', 'r.jsonl']


@pytest.mark.parametrize('fail', ['serializer', 'fsync', 'replace'])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, fail):
  path = str(tmp_path / 'results.json')
  atomic_file.write_json(path, {'old': True})
  old = open(path).read()
  if fail == 'serializer':
    monkeypatch.setattr(atomic_file.json, 'dump', _half_then_raise)
  else:
    def boom(*args):
      raise OSError(f'{fail} failed')
    monkeypatch.setattr(atomic_file.os, fail, boom)
  with pytest.raises((RuntimeError, OSError)):
    atomic_file.write_json(path, {'new': list(range(1000))})
  assert open(path).read() == old
  assert _listing(tmp_path) == ['results.json']


def test_a_failed_first_write_leaves_nothing(tmp_path):
  with pytest.raises(TypeError):
    atomic_file.write_json(str(tmp_path / 'x.json'), {'a': 1, 'z': object()})
  assert _listing(tmp_path) == []


def test_run_record_keeps_its_old_files_when_a_write_dies(tmp_path, monkeypatch):
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1),
                           ('data', 'expert', 'model'))
  model = config_lib.T5Config(moe=config_lib.MoeConfig())
  run_record.write(str(tmp_path), mesh, model)
  before = {n: open(tmp_path / n).read() for n in (run_record.CONFIG_GIN, run_record.MESH_JSON)}
  assert json.loads(before[run_record.MESH_JSON])['mesh'] == {'data': 1, 'expert': 1, 'model': 1}
  monkeypatch.setattr(run_record.gin, 'operative_config_str', lambda: 'changed = 1\n')
  monkeypatch.setattr(atomic_file.json, 'dump', _half_then_raise)
  with pytest.raises(RuntimeError):
    run_record.write(str(tmp_path), mesh, model)
  # config.gin was replaced whole before mesh.json's write died; mesh.json is the old one.
  assert open(tmp_path / run_record.CONFIG_GIN).read() == 'changed = 1\n'
  assert open(tmp_path / run_record.MESH_JSON).read() == before[run_record.MESH_JSON]
  assert _listing(tmp_path) == [run_record.CONFIG_GIN, run_record.MESH_JSON]


def test_evaluation_results_and_predictions_survive_a_dying_rewrite(tmp_path, monkeypatch):
  monkeypatch.setattr(report, 'write_tensorboard', lambda *args: None)
  results = {'checkpoint_step': 3, 'tasks': {}, 'categories': {},
             'overall': {'macro': {}, 'micro': {}}}
  report.write_all(str(tmp_path), results, {'mmlu': [{'target': 'A', 'prediction': 'é'}]})
  files = ['results.json', os.path.join('predictions', 'mmlu.jsonl')]
  before = {n: open(tmp_path / n, encoding='utf-8').read() for n in files}
  assert 'é' in before[files[1]]   # predictions keep non-ASCII text as it is
  monkeypatch.setattr(atomic_file.json, 'dump', _half_then_raise)
  with pytest.raises(RuntimeError):
    report.write_all(str(tmp_path), {**results, 'checkpoint_step': 4}, {'mmlu': []})
  assert {n: open(tmp_path / n, encoding='utf-8').read() for n in files} == before
  assert _listing(tmp_path) == ['predictions', 'results.json']
  assert _listing(tmp_path / 'predictions') == ['mmlu.jsonl']


def test_model_gin_is_written_through_it(tmp_path, monkeypatch):
  written = []
  monkeypatch.setattr(atomic_file, 'write_with',
                      lambda path, write: written.append(os.path.basename(path)) or path)
  config_gin.write_model_gin(str(tmp_path), config_lib.T5Config())
  assert written == [config_gin.MODEL_GIN] and _listing(tmp_path) == []
