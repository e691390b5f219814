"""The paper's experiment end to end at toy size (gin/experiments/tiny.gin: 1 dense + 1 Switch
model, 2 seeds, 2 steps per run): every run, the report's numbers against the results.json files
and an independent mean / std, a SIGTERM-stopped run resumed, finished runs skipped, a changed
preset refused."""
import json
import os
import shutil

import gin
import jax
import numpy as np
import pytest

from moe_flan.experiments import flan_moe
from moe_flan.experiments import plan as plan_lib
from moe_flan.experiments import preset as preset_lib

pytestmark = pytest.mark.usefixtures('persistent_compilation_cache')

PRESET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gin',
                      'experiments', 'tiny.gin')
RUN_NAMES = [f'{m}/seed_{s}/{n}' for m in ('dense', 'switch_top1') for s in (0, 1)
             for n in ('pretrain', 'p1_direct_finetune', 'p2_instruction_tune',
                       'p3_instruction_finetune')]


def _main(experiment_dir, *extra):
  return flan_moe.main([f'--gin_file={PRESET}', f"--gin.EXPERIMENT_DIR='{experiment_dir}'",
                        *extra])


def _load(path):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _run_results(experiment_dir):
  return {name: _load(os.path.join(experiment_dir, 'runs', name, 'results.json'))
          for name in RUN_NAMES}


@pytest.fixture(scope='module', autouse=True)
def clear_gin_after_module():
  """The in-process runs leave their last gin configuration (e.g. the preset's T5Config
  bindings); later test modules must not build their models from it."""
  yield
  gin.clear_config()


# Ahead-of-time compiles of train steps while the experiment fixture ran.
TRAIN_STEP_COMPILES = []


@pytest.fixture(scope='module')
def experiment(tmp_path_factory):
  experiment_dir = str(tmp_path_factory.mktemp('experiment'))
  real_compile = jax.stages.Lowered.compile
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(jax.stages.Lowered, 'compile', lambda self, *a, **k: (
        TRAIN_STEP_COMPILES.append(1), real_compile(self, *a, **k))[1])
    assert _main(experiment_dir) == 0
  return experiment_dir


def test_runs_of_equal_settings_compile_their_train_step_once(experiment):
  """16 runs, 5 train-step programs: per model its pretraining step (rsqrt schedule, inputs
  64) and its fine-tuning step (constant schedule, inputs 128), and the sparse model's
  instruction-tuning step (expert dropout changes its MoE config). A run of settings seen
  before reuses the executable; other shapes or settings compile their own."""
  del experiment
  assert len(TRAIN_STEP_COMPILES) == 5


def _score(results, scope, metric):
  pooled = results['overall'] if scope == 'overall' else \
      results['categories'][scope.removeprefix('category:')]
  return pooled['macro'][metric]['value']


def test_report_numbers_come_from_the_runs_results(experiment):
  report = _load(os.path.join(experiment, 'report.json'))
  runs = _run_results(experiment)
  assert {r['run'] for r in runs.values()} == set(RUN_NAMES)
  assert all(r['train']['step'] == 2 for r in runs.values())
  # Model facts: from each model's pretraining results.json.
  for model, info in report['models'].items():
    source = _load(os.path.join(experiment, info['source']))
    assert source['model'] == model and source['protocol'] is None
    assert (info['params'], info['flops_per_token']) == (
        source['model_info']['params'], source['model_info']['flops_per_token'])
  assert report['models']['switch_top1']['sparse'] and not report['models']['dense']['sparse']
  assert report['wall_time_s']['runs_total'] == pytest.approx(
      sum(r['wall_s'] for r in runs.values()))
  # Every score: each seed's value is the one in its results.json; mean and std recomputed.
  expected_cells = {(m, p, mix) for m in ('dense', 'switch_top1') for p in (1, 2, 3)
                    for mix in ['flan_embedded_downstream_scoring'] + (
                        ['flan_embedded_heldout_cot'] if p == 2 else [])}
  assert {(r['model'], r['protocol'], r['mixture']) for r in report['results']} == expected_cells
  for row in report['results']:
    assert [v['seed'] for v in row['values']] == [0, 1]
    for v in row['values']:
      assert v['source'].startswith(f'runs/{row["model"]}/seed_{v["seed"]}/'
                                    f'{plan_lib.RUN_NAMES[row["protocol"]]}/eval/{row["mixture"]}/')
      assert v['value'] == _score(_load(os.path.join(experiment, v['source'])), row['scope'],
                                  row['metric'])
    values = np.array([v['value'] for v in row['values']])
    assert row['mean'] == pytest.approx(values.mean())
    assert row['std'] == pytest.approx(values.std(ddof=1))
  _check_differences(report)


def _check_differences(report):
  by_key = {(r['model'], r['protocol'], r['mixture'], r['scope'], r['metric']): r
            for r in report['results']}
  assert report['dense_baseline'] == 'dense'
  assert len(report['differences']) == len(by_key) // 2
  for d in report['differences']:
    key = (d['protocol'], d['mixture'], d['scope'], d['metric'])
    sparse = np.array([v['value'] for v in by_key[('switch_top1',) + key]['values']])
    dense = np.array([v['value'] for v in by_key[('dense',) + key]['values']])
    assert d['mean'] == pytest.approx((sparse - dense).mean())
    assert d['std'] == pytest.approx((sparse - dense).std(ddof=1))
  headline = [o for o in report['ordering']]
  assert sorted(o['protocol'] for o in headline) == [1, 2, 3]
  for o in headline:
    assert o['reproduced'] == (o['difference'] <= 0 if o['protocol'] == 1 else
                               o['difference'] > 0)


def test_report_files(experiment):
  report = _load(os.path.join(experiment, 'report.json'))
  assert report['plots'] == ['score_vs_flops.png', 'moe_minus_dense.png']
  for name in report['plots']:
    with open(os.path.join(experiment, name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(os.path.join(experiment, 'report.md'), encoding='utf-8') as f:
    text = f.read()
  assert report['commit'] is None or report['commit'].split('-')[0] in text
  assert 'python -m moe_flan.experiments.flan_moe' in text and 'wall time' in text
  for line in ('## Headline: `flan_embedded_downstream_scoring` accuracy',
               '| switch_top1 − dense |', '### Protocol 2 (instruction tuning (zero/few-shot)): '
               '`flan_embedded_heldout_cot`', '![score_vs_flops.png](score_vs_flops.png)'):
    assert line in text


def test_stopped_run_resumes_and_finished_runs_are_skipped(experiment, monkeypatch, capsys):
  victim = 'switch_top1/seed_1/p3_instruction_finetune'
  before = _run_results(experiment)
  shutil.rmtree(os.path.join(experiment, 'runs', victim))
  # SIGTERM as the trainer sees it (preemption.agreed) after the victim's first step.
  from moe_flan.trainer import preemption  # pylint: disable=g-import-not-at-top
  calls = []
  real = preemption.agreed

  def stop_after_first_step(stop):
    calls.append(1)
    return len(calls) == 2 or real(stop)
  monkeypatch.setattr(preemption, 'agreed', stop_after_first_step)
  assert _main(experiment) == 75
  assert not os.path.exists(os.path.join(experiment, 'runs', victim, 'results.json'))
  assert os.path.isdir(os.path.join(experiment, 'runs', victim, 'checkpoints', '1'))
  monkeypatch.setattr(preemption, 'agreed', real)
  capsys.readouterr()
  assert _main(experiment) == 0
  out = capsys.readouterr().out
  assert f'moe_flan: resuming from step 1 of 2 in {os.path.join(experiment, "runs", victim)}' in out
  after = _run_results(experiment)
  for name in RUN_NAMES:
    if name == victim:
      assert after[name]['started_unix'] > before[name]['finished_unix']
      assert after[name]['train']['step'] == 2
    else:
      assert after[name] == before[name], name   # skipped: not even rewritten
      assert f'{name}: finished, skipped' in out
  report = _load(os.path.join(experiment, 'report.json'))
  assert report['run_wall_s'][victim] == after[victim]['wall_s']


def test_a_changed_preset_is_refused(experiment):
  with pytest.raises(ValueError, match=r'another preset .*changed: experiment\.finetune_steps: '
                     r'2 -> 3; experiment\.models\.switch_top1\.bindings: .*; '
                     r'models\.switch_top1\.moe\.num_experts: 4 -> 8\. Use a new') as e:
    _main(experiment, '--gin.Experiment.finetune_steps=3',
          "--gin.switch/ModelSpec.bindings=['T5Config.emb_dim = 32', 'T5Config.num_heads = 2', "
          "'T5Config.head_dim = 16', 'T5Config.mlp_dim = 64', 'MoeConfig.num_selected_experts = 1', "
          "'MoeConfig.expert_mlp_dim = 64']")
  assert '\n' not in str(e.value)



def test_a_distillation_row_added_to_the_finished_experiment(experiment, capsys):
  """The preset grows by the distillation row: only the students run (every finished run is
  skipped), each from its seed's dense pretraining with that seed's Switch protocol-2 model as
  teacher; the report's distillation numbers against the evaluations' results.json files."""
  from moe_flan.experiments import comparisons  # pylint: disable=g-import-not-at-top
  before = _run_results(experiment)
  capsys.readouterr()
  assert _main(experiment,
               "--gin.Experiment.distill={'teacher': 'switch_top1', 'student': 'dense'}") == 0
  out = capsys.readouterr().out
  assert _run_results(experiment) == before
  assert all(f'{name}: finished, skipped' in out for name in RUN_NAMES)
  mixture, _, metric = 'flan_embedded_downstream_scoring/accuracy'.partition('/')
  for seed in (0, 1):
    student = _load(os.path.join(experiment, 'runs', 'dense', f'seed_{seed}',
                                 'distill_switch_top1', 'results.json'))
    assert student['train']['step'] == 2 and student['teacher'] == 'switch_top1'
    assert student['init_from'] == os.path.join(experiment, 'runs', 'dense', f'seed_{seed}',
                                                'pretrain')
    assert student['teacher_dir'] == os.path.join(experiment, 'runs', 'switch_top1',
                                                  f'seed_{seed}', 'p2_instruction_tune')
    assert os.path.isfile(os.path.join(experiment, 'runs', 'dense', f'seed_{seed}',
                                       'distill_switch_top1', 'teacher.gin'))
  d = _load(os.path.join(experiment, 'report.json'))['distill']
  assert [s['seed'] for s in d['seeds']] == [0, 1]
  for seed in d['seeds']:
    s = seed['seed']
    assert seed['sources'] == {
        'student': f'runs/dense/seed_{s}/distill_switch_top1/eval/{mixture}/results.json',
        'dense': f'runs/dense/seed_{s}/p2_instruction_tune/eval/{mixture}/results.json',
        'moe': f'runs/switch_top1/seed_{s}/p2_instruction_tune/eval/{mixture}/results.json'}
    for key in ('student', 'dense', 'moe'):
      assert seed[key] == _score(_load(os.path.join(experiment, seed['sources'][key])),
                                 'overall', metric)
    gain = seed['moe'] - seed['dense']
    assert seed['fraction'] == (None if abs(gain) <= comparisons.GAIN_EPSILON else
                                pytest.approx((seed['student'] - seed['dense']) / gain))

def test_differences_and_settings_checks():
  assert preset_lib.differences({'a': {'b': 1, 'c': [1]}}, {'a': {'b': 2, 'c': [1]}, 'd': 0}) == [
      'a.b: 1 -> 2', 'd: "(absent)" -> 0']
  spec = {'m': preset_lib.ModelSpec('models/t5_1_1_tiny.gin')}
  with pytest.raises(ValueError, match='Experiment.headline=.*downstream_eval_mixtures'):
    preset_lib.Experiment(models=spec, headline='flan_embedded_heldout_cot/exact_match')
  with pytest.raises(ValueError, match=r"stage_bindings: unknown stage\(s\) \['finetuning'\]"):
    preset_lib.Experiment(models=spec, stage_bindings={'finetuning': []})
  with pytest.raises(ValueError, match='unknown group'):
    preset_lib.Experiment(models=spec, finetune_frozen_groups=['gate'])
  with pytest.raises(ValueError, match='seeds=.*no repeats'):
    preset_lib.Experiment(models=spec, seeds=[0, 0])


@pytest.mark.parametrize('name,num_runs', [('tiny', 16), ('cpu_small', 39)])
def test_presets_resolve_with_equal_flops_per_token(name, num_runs):
  from moe_flan.experiments import runner  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import cli  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(PRESET), f'{name}.gin')
  cli.configure_gin(cli.parse_flags([f'--gin_file={path}', "--gin.EXPERIMENT_DIR='/x'"]))
  experiment_dir, experiment = preset_lib.flan_moe_experiment()
  infos = {m: runner.model_info(preset_lib.resolve_model(spec), experiment.task_feature_lengths)
           for m, spec in experiment.models.items()}
  dense = [i for i in infos.values() if not i['sparse']]
  assert len(dense) == 1 and len(infos) >= 2 and len(experiment.seeds) >= (2 if name == 'tiny' else 3)
  for info in infos.values():
    assert info['flops_per_token'] == pytest.approx(dense[0]['flops_per_token'], rel=0.05)
    if info['sparse']:
      assert info['params'] > dense[0]['params']
  runs = plan_lib.plan(experiment_dir, experiment, {m: i['sparse'] for m, i in infos.items()})
  assert len(runs) == num_runs
  by_dir = {r.model_dir: r for r in runs}
  for i, run in enumerate(runs):   # each run starts from one made before it
    assert run.init_from is None or runs.index(by_dir[run.init_from]) < i


def test_a_dense_baseline_freezes_only_the_groups_it_has():
  spec = preset_lib.ModelSpec('models/t5_1_1_tiny.gin')
  experiment = preset_lib.Experiment(models={'dense': spec, 'moe': spec}, seeds=[0],
                                     finetune_frozen_groups=['router', 'non_expert'])
  frozen = {(r.model, r.protocol): [b for b in r.bindings if b.startswith('FROZEN_GROUPS')]
            for r in plan_lib.plan('/x', experiment, {'dense': False, 'moe': True})
            if r.stage == 'finetune'}
  assert frozen == {('dense', 1): ["FROZEN_GROUPS = ['non_expert']"],
                    ('dense', 3): ["FROZEN_GROUPS = ['non_expert']"],
                    ('moe', 1): ["FROZEN_GROUPS = ['router', 'non_expert']"],
                    ('moe', 3): ["FROZEN_GROUPS = ['router', 'non_expert']"]}
