"""The report's PNG plots (matplotlib, Agg: no display needed).

  score_vs_flops.png   the headline score against forward FLOPs per token, one panel per
                       protocol, dense and sparse models marked apart, bars = std over seeds
                       (the paper's Figure 1 style)
  moe_minus_dense.png  the headline MoE-minus-dense difference per protocol and sparse model
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import matplotlib.ticker  # noqa: E402  pylint: disable=g-import-not-at-top


def _headline_rows(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  mixture, _, metric = report['headline'].partition('/')
  return [r for r in report['results']
          if (r['mixture'], r['metric'], r['scope']) == (mixture, metric, 'overall')]


def score_vs_flops(path: str, report: Mapping[str, Any]) -> None:
  rows = _headline_rows(report)
  protocols = sorted({r['protocol'] for r in rows})
  fig, axes = plt.subplots(1, len(protocols), figsize=(4.2 * len(protocols), 3.6), sharey=True,
                           squeeze=False)
  for ax, protocol in zip(axes[0], protocols):
    for i, r in enumerate(r for r in rows if r['protocol'] == protocol):
      info = report['models'][r['model']]
      ax.errorbar(info['flops_per_token'], r['mean'], yerr=r['std'] or 0.0, capsize=3,
                  marker='^' if info['sparse'] else 'o', linestyle='none',
                  color='tab:red' if info['sparse'] else 'tab:blue')
      ax.annotate(r['model'], (info['flops_per_token'], r['mean']), fontsize=7,
                  xytext=(6, 6 - 9 * i), textcoords='offset points')   # stacked: no overlap
    _flops_axis(ax, [report['models'][r['model']]['flops_per_token'] for r in rows])
    ax.set_title(f'{protocol}: {report["protocols"][str(protocol)]}', fontsize=9)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(report['headline'] + ' (%)')
  fig.suptitle('headline score vs FLOPs per token (▲ sparse, ● dense; bars: std over seeds)',
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _flops_axis(ax: Any, flops: Sequence[float]) -> None:
  """Log scale over a wide FLOPs range (the paper's Figure 1); models of equal FLOPs per token
  (within 2x) get a linear axis in MFLOPs, whose labels do not run into each other."""
  low, high = min(flops), max(flops)
  if high > 2 * low:
    ax.set_xscale('log')
    ax.set_xlabel('forward FLOPs per token')
    return
  margin = max(0.05 * low, high - low)
  ax.set_xlim(low - margin, high + margin)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(3))
  ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f'{x / 1e6:.3g}'))
  ax.set_xlabel('forward MFLOPs per token')


def moe_minus_dense(path: str, report: Mapping[str, Any]) -> None:
  mixture, _, metric = report['headline'].partition('/')
  diffs = [d for d in report['differences']
           if (d['mixture'], d['metric'], d['scope']) == (mixture, metric, 'overall')]
  models = sorted({d['model'] for d in diffs})
  protocols = sorted({d['protocol'] for d in diffs})
  width = 0.8 / max(len(models), 1)
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for i, model in enumerate(models):
    mine = {d['protocol']: d for d in diffs if d['model'] == model}
    xs = [protocols.index(p) + (i - (len(models) - 1) / 2) * width for p in mine]
    ax.bar(xs, [d['mean'] for d in mine.values()], width,
           yerr=[d['std'] or 0.0 for d in mine.values()], capsize=3, label=model)
  ax.axhline(0.0, color='black', linewidth=0.8)
  ax.set_xticks(range(len(protocols)))
  ax.set_xticklabels([report['protocols'][str(p)] for p in protocols], fontsize=7)
  ax.set_ylabel(f'MoE − {report["dense_baseline"]} (points)')
  ax.set_title(f'{report["headline"]}: MoE minus dense (bars: std over seeds)', fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_all(experiment_dir: str, report: Mapping[str, Any]) -> list[str]:
  """Writes the plots the report has data for; their file names."""
  written = []
  if _headline_rows(report):
    score_vs_flops(os.path.join(experiment_dir, 'score_vs_flops.png'), report)
    written.append('score_vs_flops.png')
  if report['differences']:
    moe_minus_dense(os.path.join(experiment_dir, 'moe_minus_dense.png'), report)
    written.append('moe_minus_dense.png')
  return written
