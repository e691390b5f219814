"""FLAN Collection registration and the FLAN 2022 mixtures: host shards are disjoint and
complete, rates follow the published recipe and are what sampling gives, held-out tasks never
reach a training mixture, the gin overlay registers from FLAN_COLLECTION_DIR."""
import collections
import math
import os

import gin
import numpy as np
import pytest
import seqio

import tasks  # pylint: disable=unused-import  (registers the built-in tasks)
from tasks import registry, vocab
from tasks.flan_collection import mixtures, prepare, registration, sources
import flan_collection_fixtures as fx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('flan_collection')
  src = fx.write_split(root / 'src', fx.rows(duplicates=False), 'parquet', parts=2)
  out = str(root / 'data')
  prepare.prepare(src, out, log=lambda *_: None, num_shards=4, min_rows_per_shard=50,
                  validation_fraction=0.1)
  return out


@pytest.fixture(scope='module')
def registered(data_dir):
  return registration.register(data_dir, name_prefix='t1_')


def _examples(task, shard_info=None):
  ds = task.get_dataset(sequence_length=None, split='train', shuffle=False, num_epochs=1,
                        shard_info=shard_info, trim_output_features=False,
                        try_in_mem_cache=False)
  return [tuple(ex['inputs'].tolist()) for ex in ds.as_numpy_iterator()]


@pytest.mark.parametrize('unit', ['niv2.task001_quoref_question_generation.zs_opt',  # 3 shards
                                  'dialog.wiki_dialog_ii.zs_opt'])                    # 1 shard
def test_two_hosts_read_disjoint_examples_whose_union_is_the_task(registered, unit):
  task = seqio.get_mixture_or_task(f't1_flan_collection.{unit}')
  whole = _examples(task)
  assert len(whole) == len(set(whole)) == task.num_input_examples('train')
  host0 = _examples(task, seqio.ShardInfo(index=0, num_shards=2))
  host1 = _examples(task, seqio.ShardInfo(index=1, num_shards=2))
  assert not set(host0) & set(host1)
  assert sorted(host0 + host1) == sorted(whole)
  assert abs(len(host0) - len(host1)) <= max(2, len(whole) // 3)


def test_rates_follow_the_published_recipe():
  def group(source, task, ttype, n):
    return {'units': [{'task_source': source, 'task_name': task, 'template_type': ttype}],
            'examples': {'train': n}}
  groups = {
      'f_a_zs': group('flan2021', 'a', 'zs_opt', 50000), 'f_b_zs': group('flan2021', 'b', 'zs_opt', 10000),
      'f_a_fs': group('flan2021', 'a', 'fs_opt', 70000),
      'n_c_zs': group('niv2', 'c', 'zs_opt', 8000), 'n_d_zs': group('niv2', 'd', 'zs_opt', 1000),
      'c_e_zs': group('cot', 'e', 'cot_zs_opt', 7), 'p_f_zs': group('program_synthesis', 'f', 'zs_opt', 9),
      'empty': group('niv2', 'g', 'zs_opt', 0),
  }
  got = mixtures.rates(groups, mixtures.flan2022_settings())
  # By hand: flan2021 0.4 split over its 2 template types; caps 30000 (flan2021), 5000 (niv2).
  want = {'f_a_zs': 0.4 / 2 * 30000 / 40000, 'f_b_zs': 0.4 / 2 * 10000 / 40000,
          'f_a_fs': 0.4 / 2, 'n_c_zs': 0.2 * 5000 / 6000, 'n_d_zs': 0.2 * 1000 / 6000,
          'c_e_zs': 0.05}
  total = sum(want.values())
  assert got == pytest.approx({k: v / total for k, v in want.items()}, rel=1e-12)
  # Weights and caps are configurable; an unknown source must be given a weight.
  got = mixtures.rates(groups, mixtures.flan2022_settings(source_weights={'program_synthesis': 1.0},
                                                          source_caps={'niv2': 10}))
  assert got['n_c_zs'] == pytest.approx(got['n_d_zs'])
  assert got['p_f_zs'] > 0
  with pytest.raises(ValueError, match="task source 'mystery' .* flan2022_settings.source_weights"):
    mixtures.rates({'m': group('mystery', 'x', 'zs_opt', 5)}, mixtures.flan2022_settings())
  with pytest.raises(ValueError, match="unknown clusters \\['cluster:nope'\\]"):
    mixtures.flan2022_settings(heldout=['cluster:nope'])


def test_sampled_mixture_matches_its_rates(registered):
  mixture = seqio.get_mixture_or_task('t1_flan2022')
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  total = sum(rates.values())
  rates = {k: v / total for k, v in rates.items()}
  # Identify each drawn example's unit by its target text ('{template type}-{task[:6]}-...').
  by_target = {}
  for name in rates:
    _, task, ttype = name.split('.', 1)[1].split('.')
    by_target[(ttype, task[:6])] = name
  voc = vocab.default_vocabulary()
  n = 3000
  # No in-task shuffling (rates do not depend on it) and in-memory caching: tiny tasks repeat
  # every few hundred draws, and re-reading them would dominate the test.
  ds = mixture.get_dataset({'inputs': 64, 'targets': 16}, split='train', shuffle=False, seed=3,
                           num_epochs=None, trim_output_features=False,
                           try_in_mem_cache=True).take(n)
  counts = collections.Counter()
  for ex in ds.as_numpy_iterator():
    ttype, head, _ = voc.decode(ex['targets'].tolist()).rsplit('-', 2)
    counts[by_target[(ttype, head)]] += 1
  # Tolerance: 4.5 binomial standard deviations per task (a false alarm about once in 10^5).
  for name, rate in rates.items():
    tol = 4.5 * math.sqrt(rate * (1 - rate) / n)
    assert abs(counts[name] / n - rate) <= tol, (name, counts[name] / n, rate, tol)
  assert sum(counts.values()) == n


def test_heldout_tasks_never_reach_a_training_mixture(registered):
  # Default held-out: the FLAN 2021 NLI cluster, which holds 'anli_r1' (exported as
  # 'anli_r1:0.1.0').
  heldout = seqio.get_mixture_or_task('t1_flan2022_heldout')
  assert {t.name for t in heldout.tasks} == {'t1_flan_collection.flan2021.anli_r1_0_1_0.zs_opt',
                                             't1_flan_collection.flan2021.anli_r1_0_1_0.fs_noopt'}
  training = seqio.get_mixture_or_task('t1_flan2022_no_heldout')
  assert not {t.name for t in training.tasks} & {t.name for t in heldout.tasks}
  assert len(training.tasks) == len(seqio.get_mixture_or_task('t1_flan2022').tasks) - 2
  # Patterns and clusters by name.
  patterns = mixtures.heldout_patterns(mixtures.flan2022_settings(
      heldout=['trivia*', 'cluster:mine'], clusters={'mine': ['cot_gsm8k']}))
  assert mixtures.is_heldout('trivia_qa:1.1.0', patterns)
  assert mixtures.is_heldout('COT_GSM8K', patterns)
  assert not mixtures.is_heldout('anli_r1:0.1.0', patterns)


def test_template_type_mixtures_select_their_units(data_dir, registered):
  def units(name):
    return {t.name.split('.')[-1] for t in seqio.get_mixture_or_task(name).tasks}
  assert units('t1_flan2022_zs') == {'zs_opt', 'zs_noopt', 'cot_zs_opt'}
  assert units('t1_flan2022_fs') == {'fs_opt', 'fs_noopt', 'cot_fs_opt'}
  assert {t.name.split('.')[1] for t in seqio.get_mixture_or_task('t1_flan2022_cot').tasks} == \
      {'cot'}
  assert set(registered['mixtures']) >= {'t1_flan2022', 't1_flan2022_niv2', 't1_flan2022_t0'}
  # Registration is idempotent; 'task' grouping gives one task per task name.
  assert registration.register(data_dir, name_prefix='t1_') == registered
  by_task = registration.groups({'units': [
      {'name': 'a.b.zs', 'task_source': 'a', 'task_name': 'b', 'template_type': 'zs',
       'splits': {'train': {'examples': 3, 'shards': [{'file': 'x'}]}}},
      {'name': 'a.b.fs', 'task_source': 'a', 'task_name': 'b', 'template_type': 'fs',
       'splits': {'train': {'examples': 4, 'shards': [{'file': 'y'}]}}}]}, 'task')
  assert list(by_task) == ['flan_collection.a.b']
  assert by_task['flan_collection.a.b']['examples']['train'] == 7


def test_gin_overlay_registers_from_flan_collection_dir(data_dir, tmp_path):
  from moe_flan.trainer import cli, data as data_lib  # pylint: disable=g-import-not-at-top
  cli.configure_gin(cli.Flags(
      (os.path.join(REPO, 'gin/models/flan_moe_tiny.gin'),
       os.path.join(REPO, 'gin/runs/instruction_tune.gin'),
       os.path.join(REPO, 'gin/data/flan_collection.gin')),
      (f"MODEL_DIR = '{tmp_path}'", f"FLAN_COLLECTION_DIR = '{data_dir}'",
       "MIXTURE_OR_TASK_NAME = 'flan2022_zs'", 'BATCH_SIZE = 2',
       "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 16}"), ()))
  try:
    cfg = data_lib.DataConfig()
    assert cfg.mixture_or_task_name == 'flan2022_zs'
    data_lib.check_task_exists(cfg.mixture_or_task_name, model_vocab_size=vocab.default_vocabulary().vocab_size)
    batch = next(data_lib.batches(cfg))
    assert batch['encoder_input_tokens'].shape == (2, 64)
    assert batch['encoder_segment_ids'].max() >= 1  # packed
  finally:
    gin.clear_config()
    fx.unregister(data_dir)   # the overlay registers without a name prefix


def test_register_errors_name_the_problem(tmp_path):
  with pytest.raises(ValueError, match="FLAN_COLLECTION_DIR=.*no index.json.*run `python -m "
                     "tasks.flan_collection prepare"):
    registration.register(str(tmp_path))
  (tmp_path / '.prepare').mkdir()
  with pytest.raises(ValueError, match='unfinished prepare is there: rerun the same prepare'):
    registration.register(str(tmp_path))
  with pytest.raises(ValueError, match="group_by='x'"):
    registration.groups({'units': []}, 'x')
