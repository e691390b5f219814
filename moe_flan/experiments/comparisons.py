"""The report's sections beyond the main table: the distilled students and the ablations.

Both read the score rows report.py makes from the runs' evaluations ({model, protocol, mixture,
scope, metric, mean, std, values: [{seed, value, source}]}) and pair values by seed.

Distillation (Experiment.distill): per seed, on the score `Experiment.distill_score`,
    fraction kept = (student - dense) / (MoE - dense)
with student the distilled dense model, dense the student's model instruction-tuned
(protocol 2) and MoE the teacher's protocol 2 model. Where MoE - dense is 0 (|gain| <=
GAIN_EPSILON points) the fraction is undefined and is reported as such, not as a number.

Ablations (Experiment.ablations): per variant, model and protocol, the headline score of the
variant and of the base, and variant minus base paired by seed.
"""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Optional, Sequence

GAIN_EPSILON = 1e-6   # points: a teacher gain this small leaves the fraction undefined


def stats(values: Sequence[float]) -> tuple[float, Optional[float]]:
  """(mean, sample standard deviation (n - 1), None for one value)."""
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _by_seed(rows: Sequence[Mapping[str, Any]], model: str, protocol: Any, score: str
             ) -> dict[int, Mapping[str, Any]]:
  mixture, _, metric = score.partition('/')
  for r in rows:
    if (r['model'], r['protocol'], r['mixture'], r['metric'], r['scope']) == (
        model, protocol, mixture, metric, 'overall'):
      return {v['seed']: v for v in r['values']}
  return {}


def _summary(values: Sequence[Optional[float]]) -> dict[str, Any]:
  defined = [v for v in values if v is not None]
  mean, std = stats(defined) if defined else (None, None)
  return {'mean': mean, 'std': std, 'n_seeds': len(defined)}


def distill(spec: Mapping[str, str], score: str, rows: Sequence[Mapping[str, Any]],
            student_rows: Sequence[Mapping[str, Any]], protocol: Any) -> dict[str, Any]:
  """report.json's 'distill': the students' scores and the fraction of the teacher's gain kept.
  rows: the base runs' score rows; student_rows: the distilled students' (protocol `protocol`)."""
  teacher, student = spec['teacher'], spec['student']
  got = _by_seed(student_rows, student, protocol, score)
  dense, moe = _by_seed(rows, student, 2, score), _by_seed(rows, teacher, 2, score)
  seeds = []
  for seed in sorted(got):
    s, d, m = got[seed]['value'], dense[seed]['value'], moe[seed]['value']
    gain = m - d
    seeds.append({'seed': seed, 'student': s, 'dense': d, 'moe': m, 'moe_gain': gain,
                  'student_gain': s - d,
                  'fraction': (s - d) / gain if abs(gain) > GAIN_EPSILON else None,
                  'sources': {'student': got[seed]['source'], 'dense': dense[seed]['source'],
                              'moe': moe[seed]['source']}})
  gain = _summary([x['moe_gain'] for x in seeds])
  kept = _summary([x['student_gain'] for x in seeds])
  pooled = (kept['mean'] / gain['mean'] if gain['mean'] is not None and
            abs(gain['mean']) > GAIN_EPSILON else None)
  return {'teacher': teacher, 'student': student, 'score': score,
          'fraction': _summary([x['fraction'] for x in seeds]),
          'fraction_of_means': pooled, 'moe_gain': gain, 'student_gain': kept,
          'undefined_seeds': [x['seed'] for x in seeds if x['fraction'] is None],
          'seeds': seeds, 'results': list(student_rows),
          'fraction_is': '(student - dense) / (MoE - dense) per seed, on protocol 2 scores of '
                         'the dense and MoE models; undefined where |MoE - dense| <= '
                         f'{GAIN_EPSILON} points'}


def _pm(mean: Optional[float], std: Optional[float], digits: int = 1) -> str:
  if mean is None:
    return 'undefined'
  return f'{mean:.{digits}f}' + ('' if std is None else f' ± {std:.{digits}f}')


def distill_markdown(d: Mapping[str, Any]) -> list[str]:
  lines = ['', f'## Distillation: `{d["teacher"]}` (protocol 2) into `{d["student"]}`', '',
           f'Score `{d["score"]}` (overall); the student starts from `{d["student"]}`\'s '
           f'pretraining and is trained on the instruction mixture with the teacher\'s soft '
           f'targets; fraction of the MoE-over-dense gain kept = {d["fraction_is"]}.', '',
           '| seed | dense (p2) | MoE (p2) | student | MoE − dense | fraction kept |',
           '|---:|---:|---:|---:|---:|---:|']
  for x in d['seeds']:
    fraction = 'undefined (MoE − dense ≈ 0)' if x['fraction'] is None else f'{x["fraction"]:.2f}'
    lines.append(f'| {x["seed"]} | {x["dense"]:.1f} | {x["moe"]:.1f} | {x["student"]:.1f} | '
                 f'{x["moe_gain"]:+.1f} | {fraction} |')
  f = d['fraction']
  lines += ['', f'Fraction kept over seeds: {_pm(f["mean"], f["std"], 2)} '
            f'({f["n_seeds"]} of {len(d["seeds"])} seeds defined); of the mean gains: '
            + ('undefined (mean MoE − dense ≈ 0)' if d['fraction_of_means'] is None
               else f'{d["fraction_of_means"]:.2f}') + '.']
  if d['undefined_seeds']:
    lines.append(f'Undefined for seed(s) {d["undefined_seeds"]}: the MoE model does not beat '
                 'the dense one there, so there is no gain to keep.')
  return lines


def ablations(settings: Mapping[str, Mapping[str, Any]], headline: str,
              rows: Sequence[Mapping[str, Any]],
              variant_rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
  """report.json's 'ablations': per variant, model and protocol, the headline score of the
  variant and of the base and their difference paired by seed."""
  out = []
  for name, vrows in variant_rows.items():
    pairs = sorted({(r['model'], r['protocol']) for r in vrows}, key=str)
    for model, protocol in pairs:
      got, base = _by_seed(vrows, model, protocol, headline), _by_seed(rows, model, protocol,
                                                                       headline)
      seeds = sorted(set(got) & set(base))
      if not seeds:
        continue
      out.append({
          'variant': name, 'settings': dict(settings[name]), 'model': model,
          'protocol': protocol, 'score': headline,
          'variant_score': _summary([got[s]['value'] for s in seeds]),
          'base_score': _summary([base[s]['value'] for s in seeds]),
          'difference': _summary([got[s]['value'] - base[s]['value'] for s in seeds]),
          'same_runs_as_base': all(got[s]['source'] == base[s]['source'] for s in seeds),
          'values': [{'seed': s, 'variant': got[s]['value'], 'base': base[s]['value'],
                      'source': got[s]['source']} for s in seeds]})
  return out


def ablations_markdown(entries: Sequence[Mapping[str, Any]], headline: str,
                       protocols: Mapping[str, str]) -> list[str]:
  lines = ['', f'## Ablations: `{headline}` against the base (mean ± std over seeds)', '',
           '| variant | settings | model | protocol | base | variant | variant − base |',
           '|---|---|---|---|---:|---:|---:|']
  for e in entries:
    same = ' (the base\'s runs)' if e['same_runs_as_base'] else ''
    settings = '; '.join(f'{k} = {v}' for k, v in sorted(e['settings'].items()))
    lines.append(f'| {e["variant"]} | {settings} | {e["model"]} | {e["protocol"]}: '
                 f'{protocols[str(e["protocol"])]} | '
                 f'{_pm(e["base_score"]["mean"], e["base_score"]["std"])} | '
                 f'{_pm(e["variant_score"]["mean"], e["variant_score"]["std"])} | '
                 f'{_pm(e["difference"]["mean"], e["difference"]["std"])}{same} |')
  return lines
