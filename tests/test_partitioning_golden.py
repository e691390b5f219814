"""Golden PartitionSpec listings: every gin model x partitioning overlay, on 8 CPU devices.

A changed sharding shows up as a diff of tests/golden/partition_specs/<model>__<overlay>.txt.
Regenerate after an intended change with:

  UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_partitioning_golden.py -q
"""
import dataclasses
import difflib
import glob
import os
import runpy
import sys

import gin
import pytest

from moe_flan import list_shardings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.path.join(ROOT, 'tests', 'golden', 'partition_specs')
MODELS = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(ROOT, 'gin/models/*.gin')))
OVERLAYS = ['data_parallel', 'expert_parallel', 'expert_model_parallel', 'fsdp']


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  gin.add_config_file_search_path(os.path.join(ROOT, 'gin'))
  yield
  gin.clear_config()


def test_there_are_models_to_check():
  assert len(MODELS) >= 2, MODELS


@pytest.mark.parametrize('overlay', OVERLAYS)
@pytest.mark.parametrize('model', MODELS)
def test_partition_specs_match_golden(model, overlay):
  text = list_shardings.model_listing([os.path.join(ROOT, 'gin/models', model + '.gin'),
                                       os.path.join(ROOT, 'gin/partitioning', overlay + '.gin')])
  path = os.path.join(GOLDEN_DIR, f'{model}__{overlay}.txt')
  if os.environ.get('UPDATE_GOLDEN'):
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    with open(path, 'w') as f:
      f.write(text)
  assert os.path.exists(path), f'{path} missing; run with UPDATE_GOLDEN=1 to create it'
  with open(path) as f:
    want = f.read()
  diff = ''.join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                      'golden', 'now', n=0))
  assert text == want, f'sharding of {model} under {overlay} changed:\n{diff[:4000]}'


def test_overlays_shard_what_they_promise():
  """Independent of the golden files: the overlays' layouts, read off one MoE model."""
  def spec(overlay, name):
    gin.clear_config()
    text = list_shardings.model_listing([os.path.join(ROOT, 'gin/models/flan_moe_tiny.gin'),
                                         os.path.join(ROOT, 'gin/partitioning', overlay + '.gin')])
    line = next(l for l in text.splitlines() if l.startswith(name + ' '))
    return line.split('-> ')[1], text.splitlines()[0]
  wo = 'encoder/layers_1/moe/experts/wo'
  # Rules name mesh axes even where they have size 1; the mesh line says what is really split.
  assert spec('data_parallel', wo) == ("P('expert', 'model', None)",
                                       '# mesh: data=8, expert=1, model=1')
  assert spec('expert_parallel', wo) == ("P('expert', 'model', None)",
                                         '# mesh: data=1, expert=8, model=1')
  assert spec('expert_model_parallel', wo) == ("P('expert', 'model', None)",
                                               '# mesh: data=1, expert=4, model=2')
  assert spec('fsdp', wo) == ("P('expert', 'model', 'data')", '# mesh: data=8, expert=1, model=1')
  assert spec('fsdp', 'token_embedder/embedding')[0] == "P('model', 'data')"


def test_module_entry_point_prints_the_listing(capsys, monkeypatch):
  """`python -m moe_flan.list_shardings ...` (run in-process as `python -m` runs it)."""
  monkeypatch.setattr(sys, 'argv', ['list_shardings', '--gin_file=models/t5_1_1_tiny.gin',
                                    '--gin_file=partitioning/data_parallel.gin'])
  monkeypatch.delitem(sys.modules, 'moe_flan.list_shardings')   # run it afresh, as python -m
  with pytest.raises(SystemExit) as exit_info:
    runpy.run_module('moe_flan.list_shardings', run_name='__main__')
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  with open(os.path.join(GOLDEN_DIR, 't5_1_1_tiny__data_parallel.txt')) as f:
    assert out == f.read()


def test_shard_map_overlay_selects_the_explicit_dispatcher():
  from moe_flan import config as config_lib  # pylint: disable=g-import-not-at-top
  from moe_flan.partitioning import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  gin.parse_config_files_and_bindings(
      [os.path.join(ROOT, 'gin/models/flan_moe_tiny.gin'),
       os.path.join(ROOT, 'gin/partitioning/expert_parallel_shard_map.gin')],
      ['EXPERT_PARTITIONS = 4'])
  assert config_lib.T5Config().moe.dispatch == 'expert_parallel'
  assert tuple(mesh_lib.make_mesh().shape.values()) == (2, 4, 1)


def test_entry_point_help_and_a_mesh_too_big_for_the_devices(capsys, monkeypatch):
  """--help prints the usage; an overlay asking for more devices than there are (16 expert
  partitions on 8) is the trainer's one-line error, exit 2, without a traceback."""
  monkeypatch.setattr(sys, 'argv', ['list_shardings', '--help'])
  with pytest.raises(SystemExit) as exit_info:
    list_shardings.console_main()
  assert exit_info.value.code == 0
  assert capsys.readouterr().out.startswith('usage: moe_flan.list_shardings')
  monkeypatch.setattr(sys, 'argv', ['list_shardings', '--gin_file=models/flan_moe_tiny.gin',
                                    '--gin_file=partitioning/expert_parallel.gin',
                                    '--gin.EXPERT_PARTITIONS=16'])
  with pytest.raises(SystemExit) as exit_info:
    list_shardings.console_main()
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1, err
  assert err.startswith('moe_flan.list_shardings: error: mesh_shape=(-1, 16, 1): the fixed axes '
                        'use 16 devices, which does not divide the 8 available devices'), err


def test_shard_map_overlay_refuses_groups_that_would_fall_back_to_scatter():
  """The quickstart's 512-token groups on EXPERT_PARTITIONS=8: 4 encoder groups and 1 decoder
  group cannot split over 8 devices, so the all-to-all would never run; the trainer's start-up
  check names the stack and a group_size that works, and accepts that group_size."""
  from moe_flan import config as config_lib  # pylint: disable=g-import-not-at-top
  from moe_flan.partitioning import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from moe_flan.partitioning import partitioner as part_lib  # pylint: disable=g-import-not-at-top
  from moe_flan.partitioning import rules as rules_lib  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import builder, data as data_lib  # pylint: disable=g-import-not-at-top
  gin.parse_config_files_and_bindings(
      [os.path.join(ROOT, 'gin/models/flan_moe_tiny.gin'),
       os.path.join(ROOT, 'gin/partitioning/expert_parallel_shard_map.gin')],
      ['EXPERT_PARTITIONS = 8'])
  partitioner = part_lib.Partitioner(mesh_lib.make_mesh(), rules_lib.logical_axis_rules())
  data = data_lib.DataConfig('flan_embedded', {'inputs': 128, 'targets': 32}, batch_size=16)
  model = config_lib.T5Config()
  assert model.moe.group_size == 512
  with pytest.raises(ValueError, match=r"dispatch='expert_parallel': the encoder \(inputs length "
                                       r'128, batch 16\) forms 4 routing group\(s\) .* \(8 '
                                       r'partitions\).*--gin.MoeConfig.group_size=256'):
    builder.check_expert_parallel_groups(model, data, partitioner)
  small = dataclasses.replace(model, moe=dataclasses.replace(model.moe, group_size=256))
  with pytest.raises(ValueError, match=r'the decoder \(targets length 32, batch 16\) forms 2 '
                                       r'.*group_size=64'):
    builder.check_expert_parallel_groups(small, data, partitioner)
  builder.check_expert_parallel_groups(
      dataclasses.replace(model, moe=dataclasses.replace(model.moe, group_size=64)), data,
      partitioner)
