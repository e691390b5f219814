"""The issue's performance targets, evaluated on a run's records (never weakened here)."""
from __future__ import annotations

from typing import Optional


# The moe_layer case's "expert matmuls alone" row: a floor to compare with, never a candidate.
MATMUL_FLOOR = 'expert_matmuls_only'
# Rows of a moe_layer comparison that are references, not dispatch paths ("best path" skips them).
REFERENCES = frozenset({'dense', MATMUL_FLOOR})


def _ok(records, case):
  return [r for r in records if r['case'] == case and r['status'] == 'ok']


def _best_ratio(records, name: str) -> tuple[Optional[str], Optional[float]]:
  rows = [r for r in _ok(records, 'moe_layer')
          if r['name'] == name and r['variant'] not in REFERENCES]
  if not rows:
    return None, None
  best = min(rows, key=lambda r: r['ratio']['median'])
  return best['variant'], best['ratio']['median']


def _ratio(records, case, name, variant) -> Optional[float]:
  for r in _ok(records, case):
    if r['name'] == name and r['variant'] == variant:
      return r['ratio']['median']
  return None


def _target(name, target, value, met, note=None) -> dict:
  row = {'name': name, 'target': target, 'value': value,
         'met': None if value is None else bool(met)}
  if note:
    row['note'] = note
  return row


def _with_floor(records, name: str, best: Optional[str]) -> Optional[str]:
  floor = _ratio(records, 'moe_layer', name, MATMUL_FLOOR)
  if best is None or floor is None:
    return best
  return f'{best}; expert matmuls alone: {floor:.2f}'


def _moe_targets(records) -> list[dict]:
  out = []
  for k in (1, 2):
    v8, r8 = _best_ratio(records, f'top-{k} E=8')
    v128, r128 = _best_ratio(records, f'top-{k} E=128')
    out.append(_target(f'MoE layer top-{k} E=8: best path / dense', '<= 1.2', r8,
                       r8 is not None and r8 <= 1.2, _with_floor(records, f'top-{k} E=8', v8)))
    out.append(_target(f'MoE layer top-{k} E=128: best path / dense', '<= 1.6', r128,
                       r128 is not None and r128 <= 1.6,
                       _with_floor(records, f'top-{k} E=128', v128)))
    growth = None
    if v128 is not None:
      base = _ratio(records, 'moe_layer', f'top-{k} E=8', v128)
      growth = r128 / base if base else None
    out.append(_target(f'MoE layer top-{k} growth E=8 -> E=128 ({v128})', '<= 1.4', growth,
                       growth is not None and growth <= 1.4, v128))
  return out


def _metric(records, case, name, variant, key) -> Optional[float]:
  for r in _ok(records, case):
    if r['name'] == name and r['variant'] == variant and key in r['metrics']:
      return float(r['metrics'][key])
  return None


def evaluate(suite: str, records: list[dict]) -> list[dict]:
  """Target rows {'name', 'target', 'value', 'met'}; met is None when not measured."""
  if suite == 'gpu':
    mfus = [m for m in (_metric(records, 'train_step', name, 'train_step', 'mfu_vs_peak')
                        for name in ('switch-base-like', 'switch-base-like dropless'))
            if m is not None]
    mfu = max(mfus, default=None)
    return [_target('GPU train step MFU (Switch-base-like, bf16; best dispatch)', '>= 0.50', mfu,
                    mfu is not None and mfu >= 0.5)]
  out = _moe_targets(records)
  mfu = _metric(records, 'train_step', 'base-like', 'train_step', 'mfu_vs_peak')
  out.append(_target('train step FLOP/s / XLA matmul peak (base-like)', '>= 0.45', mfu,
                     mfu is not None and mfu >= 0.45))
  headroom = _metric(records, 'input_pipeline', 'quickstart', 'get_batches', 'headroom')
  out.append(_target('input pipeline / train step consumption', '>= 5', headroom,
                     headroom is not None and headroom >= 5))
  for e, target, test in ((8, '<= 1.0 (not slower)', lambda r: r <= 1.0),
                          (128, '<= 1/1.3 = 0.77 (>= 1.3x faster)', lambda r: r <= 1 / 1.3)):
    for mode in ('forward', 'forward+backward'):
      r = _ratio(records, 'hf_switch', f'E={e} {mode}', 'moe_flan')
      out.append(_target(f'ours / HF SwitchTransformers time, E={e} {mode}', target, r,
                         r is not None and test(r)))
  r = _ratio(records, 'eval_rank', 'mmlu 5-shot', 'moe_flan')
  out.append(_target('ours / transformers time, MMLU 5-shot rank classification', '< 1 (faster)',
                     r, r is not None and r < 1.0))
  return out
