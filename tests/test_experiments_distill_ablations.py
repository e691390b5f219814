"""The experiment's distillation row and ablations: which runs they add and which base runs they
reuse, the fraction of the MoE-over-dense gain a distilled student keeps (against a hand
computation) and the preset check. The distillation row end to end: test_experiments_flan_moe.py."""
import json
import os

import numpy as np
import pytest

from moe_flan.experiments import comparisons
from moe_flan.experiments import plan as plan_lib
from moe_flan.experiments import preset as preset_lib

DENSE = preset_lib.ModelSpec('models/t5_1_1_tiny.gin')
MOE = preset_lib.ModelSpec('models/flan_moe_tiny.gin')
SPARSE = {'dense': False, 'moe': True}
DISTILL = {'teacher': 'moe', 'student': 'dense'}


def _experiment(**kw):
  return preset_lib.Experiment(models={'dense': DENSE, 'moe': MOE}, seeds=[0, 1], **kw)


def _own(runs, variant):
  return sorted(r.name.removeprefix(f'{variant}/') for r in runs if r.variant == variant)


def test_ablations_reuse_the_base_runs_they_share():
  ablations = {
      'frozen_router': {'finetune_frozen_groups': ['router']},
      'no_aux': {'finetune_aux_loss': False},
      'n8': {'instruction_mixture': 'flan_embedded_n8'},
      'experts_8': {'model_bindings': {'moe': ['MoeConfig.num_experts = 8']}}}
  experiment = _experiment(ablations=ablations)
  runs = plan_lib.plan('/x', experiment, SPARSE)
  seeds = lambda model, leaves: sorted(f'{model}/seed_{s}/{leaf}' for s in (0, 1)
                                       for leaf in leaves)
  finetunes = ['p1_direct_finetune', 'p3_instruction_finetune']
  # The dense model has no router and no MoE losses: its finetuning runs are the base's.
  assert _own(runs, 'frozen_router') == seeds('moe', finetunes)
  assert _own(runs, 'no_aux') == seeds('moe', finetunes)
  # Fewer instruction tasks: instruction tuning and what starts from it, for both models.
  assert _own(runs, 'n8') == sorted(seeds('dense', ['p2_instruction_tune',
                                                    'p3_instruction_finetune']) +
                                    seeds('moe', ['p2_instruction_tune',
                                                  'p3_instruction_finetune']))
  assert _own(runs, 'experts_8') == seeds('moe', ['pretrain', 'p2_instruction_tune'] + finetunes)
  assert len(runs) == 16 + 4 + 4 + 8 + 8 and len({r.model_dir for r in runs}) == len(runs)
  by_dir = {r.model_dir: r for r in runs}
  for i, run in enumerate(runs):   # each run starts from one made before it
    assert run.init_from is None or runs.index(by_dir[run.init_from]) < i
  variants = plan_lib.variants('/x', experiment, SPARSE)
  n8_p3 = next(r for r in variants['n8'] if r.name == 'n8/moe/seed_1/p3_instruction_finetune')
  assert n8_p3.init_from == '/x/runs/n8/moe/seed_1/p2_instruction_tune'
  assert "MIXTURE_OR_TASK_NAME = 'flan_embedded_n8'" in by_dir[n8_p3.init_from].bindings
  reused = next(r for r in variants['n8'] if r.name == 'moe/seed_1/p1_direct_finetune')
  assert reused.model_dir == '/x/runs/moe/seed_1/p1_direct_finetune'
  frozen = next(r for r in variants['frozen_router'] if r.variant and r.protocol == 3)
  assert "FROZEN_GROUPS = ['router']" in frozen.bindings
  assert frozen.init_from == f'/x/runs/moe/seed_{frozen.seed}/p2_instruction_tune'
  experts = next(r for r in variants['experts_8'] if r.variant and r.protocol is None)
  assert experts.bindings[:len(MOE.bindings) + 1][-1] == 'MoeConfig.num_experts = 8'
  assert 'MoeConfig.num_experts = 8' in experts.eval_base_bindings


def test_the_distill_run_starts_from_the_students_pretraining_with_the_teachers_p2():
  experiment = _experiment(distill=DISTILL, instruction_steps=7,
                           stage_bindings={'instruction_tune': ['BATCH_SIZE = 4'],
                                           'distill': ['DISTILL_ALPHA = 0.25']})
  runs = plan_lib.plan('/x', experiment, SPARSE)
  assert len(runs) == 18
  students = runs[16:]
  assert [r.name for r in students] == ['dense/seed_0/distill_moe', 'dense/seed_1/distill_moe']
  s = students[1]
  assert s.gin_files == (DENSE.gin_file, 'runs/distill.gin')
  assert s.model_dir == '/x/runs/dense/seed_1/distill_moe'
  assert s.bindings[-4:] == ("MODEL_DIR = '/x/runs/dense/seed_1/distill_moe'", 'SEED = 1',
                             "INITIAL_CHECKPOINT_PATH = '/x/runs/dense/seed_1/pretrain'",
                             "TEACHER_CHECKPOINT_PATH = '/x/runs/moe/seed_1/p2_instruction_tune'")
  for binding in ('TRAIN_STEPS = 7', "MIXTURE_OR_TASK_NAME = 'flan_embedded'", 'BATCH_SIZE = 4'):
    assert binding in s.settings
  assert s.settings[-1] == 'DISTILL_ALPHA = 0.25'   # after instruction tuning's
  assert s.eval_mixtures == experiment.protocol2_mixtures
  assert {r.model_dir for r in runs if r.stage != 'distill'} >= {s.init_from, s.teacher_dir}


@pytest.mark.parametrize('kw,match', [
    ({'distill': {'teacher': 'moe'}}, r"missing \['student'\]"),
    ({'distill': {**DISTILL, 'alpha': 0.5}}, r"unknown \['alpha'\]"),
    ({'distill': {'teacher': 'moe', 'student': 'moe'}}, 'both'),
    ({'distill': {**DISTILL, 'score': 'nowhere/accuracy'}}, r"distill\['score'\]='nowhere"),
    ({'ablations': {'x': {'seeds': [3]}}}, r"ablations\['x'\]: unknown setting\(s\) \['seeds'\]"),
    ({'ablations': {'dense': {'finetune_aux_loss': False}}}, 'not a model name'),
    ({'ablations': {'a/b': {'finetune_aux_loss': False}}}, 'directory'),
    ({'ablations': {'x': {'finetune_frozen_groups': ['gate']}}}, r"ablations\['x'\]: .*gate"),
    ({'ablations': {'x': {'model_bindings': {'big': []}}}}, r"unknown model\(s\) \['big'\]"),
])
def test_bad_distill_and_ablation_settings_are_named(kw, match):
  with pytest.raises(ValueError, match=match):
    _experiment(**kw)


def test_a_dense_teacher_is_refused():
  experiment = _experiment(distill={'teacher': 'dense', 'student': 'moe'})
  with pytest.raises(ValueError, match="teacher \\('dense'\\) must be a sparse model"):
    plan_lib.plan('/x', experiment, SPARSE)


def test_preset_json_keeps_its_old_form_and_a_changed_ablation_is_refused(tmp_path):
  plain = preset_lib.resolved(_experiment(), {})
  assert 'distill' not in plain['experiment'] and 'ablations' not in plain['experiment']
  first = _experiment(ablations={'no_aux': {'finetune_aux_loss': False}})
  preset_lib.store_or_check(str(tmp_path), preset_lib.resolved(first, {}), '')
  preset_lib.store_or_check(str(tmp_path), preset_lib.resolved(first, {}), '')   # same: fine
  changed = _experiment(ablations={'no_aux': {'finetune_aux_loss': True}})
  with pytest.raises(ValueError, match='experiment.ablations.no_aux.finetune_aux_loss: '
                     'false -> true'):
    preset_lib.store_or_check(str(tmp_path), preset_lib.resolved(changed, {}), '')



def test_a_preset_may_gain_rows_but_not_change_them(tmp_path):
  """Adding a distillation row or a new ablation to a finished experiment keeps its runs (the
  preset.json is rewritten); changing or dropping a row already stored is refused."""
  d = str(tmp_path)
  preset_lib.store_or_check(d, preset_lib.resolved(_experiment(), {}), '')
  grown = _experiment(distill=DISTILL, ablations={'no_aux': {'finetune_aux_loss': False}})
  preset_lib.store_or_check(d, preset_lib.resolved(grown, {}), 'grown')
  with open(os.path.join(d, preset_lib.PRESET_FILE), encoding='utf-8') as f:
    stored = json.load(f)
  assert stored['experiment']['distill'] == DISTILL and stored['preset_gin'] == 'grown'
  more = _experiment(distill=DISTILL, ablations={'no_aux': {'finetune_aux_loss': False},
                                                 'frozen': {'finetune_frozen_groups': ['router']}})
  preset_lib.store_or_check(d, preset_lib.resolved(more, {}), '')
  for changed, match in [
      (_experiment(distill=DISTILL, ablations={'no_aux': {'finetune_aux_loss': True},
                                               'frozen': {'finetune_frozen_groups': ['router']}}),
       'no_aux.finetune_aux_loss: false -> true'),
      (_experiment(ablations={'no_aux': {'finetune_aux_loss': False},
                              'frozen': {'finetune_frozen_groups': ['router']}}),
       r'experiment\.distill\.student: "dense" -> "\(absent\)"'),
      (_experiment(distill=DISTILL, finetune_steps=3,
                   ablations={'no_aux': {'finetune_aux_loss': False},
                              'frozen': {'finetune_frozen_groups': ['router']}}),
       'finetune_steps')]:
    with pytest.raises(ValueError, match=match):
      preset_lib.store_or_check(d, preset_lib.resolved(changed, {}), '')


def _row(model, protocol, values, mixture='m', metric='accuracy', where=''):
  return {'model': model, 'protocol': protocol, 'mixture': mixture, 'metric': metric,
          'scope': 'overall',
          'values': [{'seed': s, 'value': v, 'source': f'{where}{model}/{protocol}/{s}'}
                     for s, v in enumerate(values)]}


def test_fraction_of_the_gain_kept_against_a_hand_computation():
  dense, moe, student = [40.0, 50.0, 30.0], [60.0, 50.0, 35.0], [45.0, 52.0, 34.0]
  rows = [_row('dense', 2, dense), _row('moe', 2, moe), _row('moe', 2, [0, 0, 0], metric='f1')]
  got = comparisons.distill({'teacher': 'moe', 'student': 'dense'}, 'm/accuracy', rows,
                            [_row('dense', 'distill', student)], 'distill')
  # Seed 0: (45 - 40) / (60 - 40) = 0.25; seed 1: no gain (50 = 50), undefined; seed 2: 4 / 5.
  assert [x['fraction'] for x in got['seeds']] == [0.25, None, pytest.approx(0.8)]
  assert got['undefined_seeds'] == [1]
  assert got['fraction']['mean'] == pytest.approx(np.mean([0.25, 0.8]))
  assert got['fraction']['std'] == pytest.approx(np.std([0.25, 0.8], ddof=1))
  assert got['fraction']['n_seeds'] == 2
  gains = np.array(moe) - np.array(dense)
  kept = np.array(student) - np.array(dense)
  assert got['fraction_of_means'] == pytest.approx(kept.mean() / gains.mean())
  assert got['moe_gain']['std'] == pytest.approx(gains.std(ddof=1))
  assert got['seeds'][2]['sources'] == {'student': 'dense/distill/2', 'dense': 'dense/2/2',
                                        'moe': 'moe/2/2'}
  text = '\n'.join(comparisons.distill_markdown(got))
  assert '| 1 | 50.0 | 50.0 | 52.0 | +0.0 | undefined (MoE − dense ≈ 0) |' in text
  assert 'Fraction kept over seeds: 0.53 ± 0.39 (2 of 3 seeds defined)' in text
  no_gain = comparisons.distill({'teacher': 'moe', 'student': 'dense'}, 'm/accuracy',
                                [_row('dense', 2, [5.0]), _row('moe', 2, [5.0])],
                                [_row('dense', 'distill', [7.0])], 'distill')
  assert no_gain['fraction'] == {'mean': None, 'std': None, 'n_seeds': 0}
  assert no_gain['fraction_of_means'] is None
  assert 'Fraction kept over seeds: undefined' in '\n'.join(comparisons.distill_markdown(no_gain))


def test_ablation_rows_against_a_hand_computation():
  rows = [_row('moe', 3, [50.0, 60.0]), _row('dense', 3, [40.0, 45.0])]
  variant = [_row('moe', 3, [53.0, 59.0], where='v/'), rows[1]]   # the dense runs are the base's
  got = comparisons.ablations({'v': {'finetune_aux_loss': False}}, 'm/accuracy', rows,
                              {'v': variant})
  moe = next(e for e in got if e['model'] == 'moe')
  assert moe['difference']['mean'] == pytest.approx(np.mean([3.0, -1.0]))
  assert moe['difference']['std'] == pytest.approx(np.std([3.0, -1.0], ddof=1))
  assert moe['variant_score']['mean'] == 56.0 and moe['base_score']['mean'] == 55.0
  assert not moe['same_runs_as_base']
  dense = next(e for e in got if e['model'] == 'dense')
  assert dense['same_runs_as_base'] and dense['difference'] == {'mean': 0.0, 'std': 0.0,
                                                                'n_seeds': 2}
  text = '\n'.join(comparisons.ablations_markdown(got, 'm/accuracy', {'3': 'p3'}))
  assert '| v | finetune_aux_loss = False | moe | 3: p3 | 55.0 ± 7.1 | 56.0 ± 4.2 | 1.0 ± 2.8 |' in text
  assert "0.0 ± 0.0 (the base's runs) |" in text

