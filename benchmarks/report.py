"""Results: the JSON file of one suite run, and the table printed from it.

JSON layout (benchmarks/results/<suite>[_quick].json):
    {'suite', 'quick', 'date', 'command', 'machine': {...}, 'peak': {...},
     'records': [row, ...] (see context.py), 'targets': [{'name', 'target', 'value', 'met'}]}
"""
from __future__ import annotations

import datetime
import json
import os
import platform
from typing import Any, Iterable

import jax

from moe_flan import atomic_file

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def machine_info() -> dict[str, Any]:
  """CPU model and core count (from /proc/cpuinfo), jax version and devices."""
  model = platform.processor() or 'unknown'
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          model = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  devices = jax.devices()
  return {'cpu_model': model, 'cpu_cores': os.cpu_count(), 'platform': platform.platform(),
          'python': platform.python_version(), 'jax': jax.__version__,
          'backend': jax.default_backend(), 'devices': [str(d) for d in devices],
          'device_kind': devices[0].device_kind if devices else None}


def results_path(suite: str, quick: bool, results_dir: str = RESULTS_DIR) -> str:
  return os.path.join(results_dir, f'{suite}{"_quick" if quick else ""}.json')


def build(suite: str, quick: bool, command: str, peak: dict, records: list[dict],
          targets: list[dict]) -> dict[str, Any]:
  return {'suite': suite, 'quick': quick,
          'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
          'command': command, 'machine': machine_info(), 'peak': peak, 'records': records,
          'targets': targets}


def write(result: dict, path: str) -> None:
  """Writes atomically (a temp file renamed into place), so a killed run leaves no half file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  def dump(f):
    json.dump(result, f, indent=1, sort_keys=False, default=float)
    f.write('\n')
  atomic_file.write_with(path, dump)


def _fmt_ratio(row: dict) -> str:
  if row['status'] != 'ok':
    return row['status']
  r = row.get('ratio')
  if not r:
    return '-'
  return f'{r["median"]:.2f}x [{r["min"]:.2f}-{r["max"]:.2f}]'


def _fmt_metrics(metrics: dict) -> str:
  parts = []
  for k, v in metrics.items():
    if isinstance(v, float):
      parts.append(f'{k}={v:.4g}')
    elif isinstance(v, (int, str, bool)):
      parts.append(f'{k}={v}')
  return ', '.join(parts)


def table(records: Iterable[dict]) -> str:
  """Markdown table: case | name | variant | ratio to baseline (median [min-max]) | time | metrics."""
  lines = ['| case | name | variant | vs baseline: median [min-max] | median time | metrics |',
           '|---|---|---|---|---|---|']
  for row in records:
    t = row.get('time_s')
    time_s = f'{t["median_s"] * 1e3:.1f} ms' if t else '-'
    base = f' (vs {row["baseline"]})' if row.get('baseline') and row['status'] == 'ok' else ''
    extra = _fmt_metrics(row.get('metrics', {}))
    if row.get('reason'):
      extra = (extra + '; ' if extra else '') + row['reason']
    lines.append(f'| {row["case"]} | {row["name"]} | {row["variant"]} | {_fmt_ratio(row)}{base}'
                 f' | {time_s} | {extra} |')
  return '\n'.join(lines)


def targets_table(targets: Iterable[dict]) -> str:
  lines = ['| target | required | measured | met | note |', '|---|---|---|---|---|']
  for t in targets:
    value = t.get('value')
    shown = f'{value:.3g}' if isinstance(value, float) else str(value)
    met = {True: 'yes', False: 'NO', None: 'n/a'}[t.get('met')]
    lines.append(f'| {t["name"]} | {t["target"]} | {shown} | {met} | {t.get("note") or ""} |')
  return '\n'.join(lines)


def moe_layer_summary(records: Iterable[dict]) -> str:
  """The issue's layout: one row per (routing, dispatch path), columns E, ratio to dense."""
  rows = [r for r in records if r['case'] == 'moe_layer' and r['variant'] != 'dense']
  experts = sorted({r['params']['num_experts'] for r in rows if 'num_experts' in r['params']})
  if not experts:
    return ''
  cells: dict[tuple, dict] = {}
  for r in rows:
    routing = r['name'].split(' ')[0]
    key = (routing, r['variant'])
    cells.setdefault(key, {})[r['params'].get('num_experts')] = r
  head = '| routing | dispatch | ' + ' | '.join(f'E={e}' for e in experts)
  head += f' | growth E{experts[0]}->E{experts[-1]} |'
  lines = [head, '|' + '---|' * (len(experts) + 3)]
  for (routing, variant), by_e in sorted(cells.items()):
    shown = []
    for e in experts:
      r = by_e.get(e)
      shown.append('-' if r is None else (f'{r["ratio"]["median"]:.2f}x' if r['status'] == 'ok'
                                          else r['status']))
    first, last = by_e.get(experts[0]), by_e.get(experts[-1])
    growth = '-'
    if first and last and first['status'] == last['status'] == 'ok':
      growth = f'{last["ratio"]["median"] / first["ratio"]["median"]:.2f}x'
    lines.append(f'| {routing} | {variant} | ' + ' | '.join(shown) + f' | {growth} |')
  return '\n'.join(lines)
