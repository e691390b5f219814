"""What every benchmark case receives (suite, quick mode, dtype, measured peak) and the record
format every case returns.

A record is one row of the results table:

    {'case': 'moe_layer', 'name': 'E=8 k=1', 'variant': 'segmented', 'status': 'ok',
     'time_s': {'median_s', 'min_s', 'max_s', 'repeats'},          # absolute, for reference
     'baseline': 'dense', 'ratio': {'median', 'min', 'max'},       # per-round time / baseline
     'metrics': {...},   # case-specific numbers (tokens/s, MFU, bytes, ...)
     'params': {...},    # the shapes and settings measured
     'reason': str}      # only when status is 'skipped' or 'failed'
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Optional

from benchmarks import timing


@dataclasses.dataclass(frozen=True)
class Context:
  """suite: 'cpu' or 'gpu'; quick: tiny shapes (CI); dtype: activation dtype of the models;
  repeats: timed rounds per comparison; peak: the matmul peak record (see peak.py)."""
  suite: str
  quick: bool
  dtype: str
  repeats: int
  peak: dict

  @property
  def peak_flops(self) -> float:
    return float(self.peak['flops_per_s'])

  def log(self, message: str) -> None:
    print(f'[{self.suite}{"/quick" if self.quick else ""}] {message}', file=sys.stderr,
          flush=True)


def record(case: str, name: str, variant: str, *, status: str = 'ok',
           time: Optional[timing.Timing] = None, baseline: Optional[str] = None,
           ratio: Optional[timing.Timing] = None, metrics: Optional[dict] = None,
           params: Optional[dict] = None, reason: Optional[str] = None) -> dict[str, Any]:
  """Builds one result row (see the module docstring)."""
  if status not in ('ok', 'skipped', 'failed'):
    raise ValueError(f'record: status={status!r} must be ok, skipped or failed')
  row: dict[str, Any] = {'case': case, 'name': name, 'variant': variant, 'status': status}
  if time is not None:
    row['time_s'] = time.as_dict()
  if baseline is not None:
    row['baseline'] = baseline
  if ratio is not None:
    row['ratio'] = {'median': ratio.median_s, 'min': ratio.min_s, 'max': ratio.max_s}
  row['metrics'] = dict(metrics or {})
  row['params'] = dict(params or {})
  if reason is not None:
    row['reason'] = reason
  return row


def comparison_records(case: str, name: str, comparison: timing.Comparison,
                       params: dict, metrics: Optional[dict[str, dict]] = None) -> list[dict]:
  """One 'ok' row per candidate of a round-robin comparison."""
  metrics = metrics or {}
  return [record(case, name, variant, time=comparison.timings[variant],
                 baseline=comparison.baseline, ratio=comparison.ratios[variant],
                 metrics=metrics.get(variant), params=params)
          for variant in comparison.timings]
