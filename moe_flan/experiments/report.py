"""EXPERIMENT_DIR/report.json and report.md from the runs' results.json files (and the plots).

Every score in the report is read from an evaluation's results.json (the macro average of a
mixture, overall and per category) and listed per seed with that file's path; parameter counts,
FLOPs per token and wall times come from the runs' own results.json. Over seeds: the mean and
the sample standard deviation (n - 1; none for one seed). MoE minus dense: per seed (same seed,
same data order) the sparse model's score minus the dense baseline's, then mean and standard
deviation of those differences.
"""
from __future__ import annotations

import datetime
import os
from typing import Any, Mapping, Optional, Sequence

from moe_flan import atomic_file
from moe_flan.experiments import comparisons
from moe_flan.experiments import plan as plan_lib
from moe_flan.experiments import plots
from moe_flan.experiments import preset as preset_lib
from moe_flan.experiments import runner

# The paper's finding per protocol: the sign MoE minus dense should have.
PAPER_SIGN = {1: '<= 0', 2: '> 0', 3: '> 0'}


_stats = comparisons.stats


def _scopes(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
  """('overall' | 'category:{c}', macro metrics) of one evaluation's results.json."""
  out = [('overall', results['overall']['macro'])]
  out += [(f'category:{c}', p['macro']) for c, p in sorted(results['categories'].items())]
  return out


def _scores(experiment_dir: str, runs: Sequence[plan_lib.Run],
            run_results: Mapping[str, Mapping[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
  """(model, protocol, mixture, scope, metric) -> [{seed, value, source}] from the evaluations."""
  out: dict[tuple, list[dict[str, Any]]] = {}
  for run in runs:
    for mixture, rel in sorted(run_results[run.name]['evaluations'].items()):
      path = os.path.join(run.model_dir, rel)
      results = runner.read_json(path)
      if results is None:
        raise ValueError(f'{path}: missing or unreadable, although {run.name} is finished; '
                         f'remove {os.path.join(run.model_dir, runner.RESULTS_FILE)} to redo it')
      for scope, metrics in _scopes(results):
        for metric, stat in sorted(metrics.items()):
          out.setdefault((run.model, run.protocol, mixture, scope, metric), []).append(
              {'seed': run.seed, 'value': stat['value'],
               'source': os.path.relpath(path, experiment_dir)})
  return out


def _models(experiment: preset_lib.Experiment, runs: Sequence[plan_lib.Run],
            run_results: Mapping[str, Mapping[str, Any]], experiment_dir: str
            ) -> dict[str, dict[str, Any]]:
  """Per model: sparse, params, FLOPs per token (from its first pretraining run's results)."""
  out = {}
  for model in experiment.models:
    run = next(r for r in runs if r.model == model and r.protocol is None)
    info = run_results[run.name]['model_info']
    out[model] = {**info, 'source': os.path.relpath(
        os.path.join(run.model_dir, runner.RESULTS_FILE), experiment_dir)}
  return out


def dense_baseline(experiment: preset_lib.Experiment, models: Mapping[str, Mapping[str, Any]]
                   ) -> tuple[Optional[str], str]:
  """(the dense model sparse ones are compared with, or None; why, when None)."""
  if experiment.dense_baseline:
    return experiment.dense_baseline, ''
  dense = [m for m, info in models.items() if not info['sparse']]
  if len(dense) == 1:
    return dense[0], ''
  why = ('no dense model in the preset' if not dense else
         f'several dense models {dense}: set Experiment.dense_baseline')
  return None, why


def _rows(scores: Mapping[tuple, list[dict[str, Any]]]) -> list[dict[str, Any]]:
  rows = []
  for (model, protocol, mixture, scope, metric), values in sorted(
      scores.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
    mean, std = _stats([v['value'] for v in values])
    rows.append({'model': model, 'protocol': protocol, 'mixture': mixture, 'scope': scope,
                 'metric': metric, 'mean': mean, 'std': std, 'n_seeds': len(values),
                 'values': sorted(values, key=lambda v: v['seed'])})
  return rows


def _differences(rows: Sequence[Mapping[str, Any]], models: Mapping[str, Mapping[str, Any]],
                 baseline: Optional[str]) -> list[dict[str, Any]]:
  """MoE minus dense, paired by seed, for every sparse model and score."""
  if baseline is None:
    return []
  base = {(r['protocol'], r['mixture'], r['scope'], r['metric']):
          {v['seed']: v['value'] for v in r['values']} for r in rows if r['model'] == baseline}
  out = []
  for r in rows:
    key = (r['protocol'], r['mixture'], r['scope'], r['metric'])
    if not models[r['model']]['sparse'] or key not in base:
      continue
    pairs = [{'seed': v['seed'], 'value': v['value'] - base[key][v['seed']]}
             for v in r['values'] if v['seed'] in base[key]]
    if not pairs:
      continue
    mean, std = _stats([p['value'] for p in pairs])
    out.append({'model': r['model'], 'baseline': baseline, 'protocol': r['protocol'],
                'mixture': r['mixture'], 'scope': r['scope'], 'metric': r['metric'],
                'mean': mean, 'std': std, 'n_seeds': len(pairs), 'values': pairs})
  return out


def _ordering(differences: Sequence[Mapping[str, Any]], headline: tuple[str, str]
              ) -> list[dict[str, Any]]:
  """Whether each sparse model's headline difference has the paper's sign, per protocol."""
  out = []
  for d in differences:
    if (d['mixture'], d['metric']) != headline or d['scope'] != 'overall':
      continue
    protocol = d['protocol']
    reproduced = d['mean'] <= 0 if protocol == 1 else d['mean'] > 0
    within_spread = d['std'] is not None and abs(d['mean']) <= d['std']
    out.append({'model': d['model'], 'protocol': protocol, 'paper': PAPER_SIGN[protocol],
                'difference': d['mean'], 'std': d['std'], 'reproduced': reproduced,
                'within_one_std_of_zero': within_spread})
  return out


def _variant_runs(runs: Sequence[plan_lib.Run], base: Sequence[plan_lib.Run], variant: str
                  ) -> list[plan_lib.Run]:
  """The runs of ablation `variant`: its own, and the base's it shares."""
  own = {r.name.removeprefix(f'{variant}/'): r for r in runs if r.variant == variant}
  return [own.get(r.name, r) for r in base]


def build(experiment_dir: str, experiment: preset_lib.Experiment, runs: Sequence[plan_lib.Run],
          command: str, invocation_wall_s: float, commit: Optional[str]) -> dict[str, Any]:
  """report.json's content; every run must be finished."""
  run_results = {}
  for run in runs:
    results = runner.finished(run)
    if results is None:
      raise ValueError(f'{run.name} is not finished ({run.model_dir} has no results.json)')
    run_results[run.name] = results
  base = [r for r in runs if not r.variant and r.teacher is None]
  models = _models(experiment, base, run_results, experiment_dir)
  baseline, why = dense_baseline(experiment, models)
  rows = _rows(_scores(experiment_dir, base, run_results))
  differences = _differences(rows, models, baseline)
  students = [r for r in runs if r.teacher is not None]
  distilled = comparisons.distill(
      experiment.distill, experiment.distill_score, rows,
      _rows(_scores(experiment_dir, students, run_results)), plan_lib.DISTILL
  ) if experiment.distill else None
  variant_rows = {name: _rows(_scores(experiment_dir, _variant_runs(runs, base, name),
                                      run_results)) for name in experiment.ablations}
  return {
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'command': command, 'commit': commit,
      'run_commits': sorted({str(r['commit']) for r in run_results.values()}),
      'preset': preset_lib.jsonable(experiment), 'preset_file': preset_lib.PRESET_FILE,
      'wall_time_s': {'runs_total': sum(r['wall_s'] for r in run_results.values()),
                      'this_invocation': invocation_wall_s},
      'run_wall_s': {name: r['wall_s'] for name, r in sorted(run_results.items())},
      'protocols': {str(k): v for k, v in plan_lib.PROTOCOLS.items()},
      'headline': experiment.headline, 'dense_baseline': baseline, 'no_baseline_reason': why,
      'models': models, 'results': rows, 'differences': differences,
      'ordering': _ordering(differences, experiment.headline_metric),
      'distill': distilled, 'ablations': comparisons.ablations(
          experiment.ablations, experiment.headline, rows, variant_rows),
      'std': 'sample standard deviation over seeds (n - 1); null for one seed',
      'plots': [], 'scores_are': 'percentages: macro averages over the tasks of a mixture '
                                '(overall) or of a category, from each evaluation results.json'}


def _pm(mean: float, std: Optional[float]) -> str:
  return f'{mean:.1f}' + ('' if std is None else f' ± {std:.1f}')


def _header(report: Mapping[str, Any]) -> list[str]:
  wall = report['wall_time_s']
  lines = ['# FLAN-MoE experiment: dense vs sparse under three protocols', '',
           f'- command: `{report["command"]}`',
           f'- commit: `{report["commit"]}`' + (
               f' (runs made at {", ".join(report["run_commits"])})'
               if report['run_commits'] != [str(report['commit'])] else ''),
           f'- written: {report["created"]}; wall time: {wall["runs_total"]:.0f} s over all '
           f'runs, {wall["this_invocation"]:.0f} s in the invocation that wrote this report',
           f'- preset: seeds {report["preset"]["seeds"]}, steps pretrain '
           f'{report["preset"]["pretrain_steps"]} / instruction {report["preset"]["instruction_steps"]}'
           f' / finetune {report["preset"]["finetune_steps"]}, instruction mixture '
           f'`{report["preset"]["instruction_mixture"]}`, aux loss while finetuning '
           f'{"on" if report["preset"]["finetune_aux_loss"] else "off"}, frozen while finetuning '
           f'{report["preset"]["finetune_frozen_groups"] or "nothing"} (dense models: the groups they '
           f'have; all settings: '
           f'{report["preset_file"]})',
           f'- scores: {report["scores_are"]}; mean ± {report["std"]}', '',
           '| model | sparse | parameters | forward FLOPs / token |', '|---|---|---:|---:|']
  for name, m in report['models'].items():
    lines.append(f'| {name} | {"yes" if m["sparse"] else "no"} | {m["params"]:,} | '
                 f'{m["flops_per_token"]:,.0f} |')
  return lines + ['', f'FLOPs per token: the forward pass at input/target lengths '
                  f'{next(iter(report["models"].values()))["flops_lengths"]}, divided by their '
                  'sum (moe_flan.model.flops; active experts only).']


def _headline(report: Mapping[str, Any]) -> list[str]:
  mixture, _, metric = report['headline'].partition('/')
  protocols = sorted(report['protocols'], key=int)
  lines = ['', f'## Headline: `{mixture}` {metric}', '',
           '| model | ' + ' | '.join(f'{p}: {report["protocols"][p]}' for p in protocols) + ' |',
           '|---|' + '---:|' * len(protocols)]
  cells = {(r['model'], str(r['protocol'])): _pm(r['mean'], r['std']) for r in report['results']
           if (r['mixture'], r['metric'], r['scope']) == (mixture, metric, 'overall')}
  for model in report['models']:
    lines.append(f'| {model} | ' + ' | '.join(cells.get((model, p), '') for p in protocols) +
                 ' |')
  if not report['dense_baseline']:
    why = report['no_baseline_reason']
  elif not report['ordering']:
    why = 'no sparse model in the preset'
  else:
    why = ''
  lines += ['', f'MoE minus dense: not computed ({why}).' if why else
            f'MoE minus dense (`{report["dense_baseline"]}`), paired by seed:', '']
  if report['ordering']:
    lines += ['| model | protocol | MoE − dense | paper | reproduced |', '|---|---|---:|---|---|']
    for o in report['ordering']:
      note = ' (within one std of 0)' if o['within_one_std_of_zero'] else ''
      lines.append(f'| {o["model"]} | {o["protocol"]}: {report["protocols"][str(o["protocol"])]}'
                   f' | {_pm(o["difference"], o["std"])} | {o["paper"]} | '
                   f'{"yes" if o["reproduced"] else "no"}{note} |')
  return lines


def _tables(report: Mapping[str, Any]) -> list[str]:
  """Per protocol and mixture: models x metrics (overall), then the MoE-minus-dense rows."""
  lines = ['', '## Every score (overall macro average; per category in report.json)']
  overall = [r for r in report['results'] if r['scope'] == 'overall']
  diffs = {(d['model'], d['protocol'], d['mixture'], d['metric']): d
           for d in report['differences'] if d['scope'] == 'overall'}
  for protocol in sorted({r['protocol'] for r in overall}):
    for mixture in sorted({r['mixture'] for r in overall if r['protocol'] == protocol}):
      rows = [r for r in overall if (r['protocol'], r['mixture']) == (protocol, mixture)]
      metrics = sorted({r['metric'] for r in rows})
      lines += ['', f'### Protocol {protocol} ({report["protocols"][str(protocol)]}): '
                f'`{mixture}`', '', '| model | ' + ' | '.join(metrics) + ' |',
                '|---|' + '---:|' * len(metrics)]
      cell = {(r['model'], r['metric']): _pm(r['mean'], r['std']) for r in rows}
      for model in report['models']:
        lines.append(f'| {model} | ' + ' | '.join(cell.get((model, m), '') for m in metrics) +
                     ' |')
        if (model, protocol, mixture, metrics[0]) in diffs:
          lines.append(f'| {model} − {report["dense_baseline"]} | ' + ' | '.join(
              _pm(diffs[(model, protocol, mixture, m)]['mean'],
                  diffs[(model, protocol, mixture, m)]['std'])
              if (model, protocol, mixture, m) in diffs else '' for m in metrics) + ' |')
  return lines


def markdown(report: Mapping[str, Any]) -> str:
  lines = _header(report) + _headline(report)
  if report.get('distill'):
    lines += comparisons.distill_markdown(report['distill'])
  if report.get('ablations'):
    lines += comparisons.ablations_markdown(report['ablations'], report['headline'],
                                            report['protocols'])
  lines += [''] + [f'![{p}]({p})' for p in report['plots']]
  return '\n'.join(lines + _tables(report)) + '\n'


def write(experiment_dir: str, report: dict[str, Any]) -> None:
  """The plots, report.json and report.md (in that order: the report lists the plots)."""
  report['plots'] = plots.write_all(experiment_dir, report)
  atomic_file.write_json(os.path.join(experiment_dir, 'report.json'), report)
  atomic_file.write_text(os.path.join(experiment_dir, 'report.md'), markdown(report))
