"""Metrics writers: TensorBoard event files under MODEL_DIR and JSON lines under MODEL_DIR/metrics.

One JSON object per logged step in `metrics/train.jsonl` / `metrics/eval.jsonl`, always with `step`
and `loss`. Scalars go to TensorBoard as scalars; per-layer arrays (expert load
<float32>[num_layers, E]) are written to JSON as nested lists and to TensorBoard as one scalar per
layer/expert. Only process 0 writes.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np

from moe_flan import atomic_file


def to_python(metrics: Mapping[str, Any]) -> dict[str, Any]:
  """Device arrays -> floats / nested lists (JSON-able)."""
  out = {}
  for k, v in metrics.items():
    a = np.asarray(jax.device_get(v))
    out[k] = float(a) if a.ndim == 0 else a.astype(float).tolist()
  return out


def scalars_only(metrics: Mapping[str, Any]) -> dict[str, float]:
  return {k: v for k, v in metrics.items() if isinstance(v, float)}


class MetricsWriter:
  """Writes train/eval metrics for one run (no-op on processes other than 0)."""

  def __init__(self, model_dir: str, split: str = 'train', tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.split = split
    self.jsonl_path = os.path.join(model_dir, 'metrics', f'{split}.jsonl')
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(os.path.dirname(self.jsonl_path), exist_ok=True)
    if tensorboard:
      # Imported only when TensorBoard is on: clu's writers import TensorFlow (seconds).
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self._tb = metric_writers.SummaryWriter(os.path.join(model_dir, split))

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Writes one record; returns it (python floats / lists)."""
    record = {'step': int(step), **to_python(metrics)}
    if 'loss' not in record:
      raise ValueError(f'metrics for step {step} have no "loss": {sorted(record)}')
    if not self.enabled:
      return record
    with open(self.jsonl_path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      scalars = {k: v for k, v in scalars_only(record).items() if k != 'step'}
      for k, v in record.items():
        if isinstance(v, list) and k.endswith('per_layer'):
          for i, row in enumerate(v):
            for e, x in enumerate(row if isinstance(row, list) else [row]):
              scalars[f'{k}/layer_{i}/expert_{e}'] = x
      self._tb.write_scalars(int(step), scalars)
      self._tb.flush()
    return record

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """All records of a metrics file (empty if absent)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_after(path: str, step: int) -> None:
  """Drops records with step > `step` (records from beyond a resumed checkpoint are replayed)."""
  records = [r for r in read_jsonl(path) if r['step'] <= step]
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  atomic_file.write_jsonl(path, records)   # a crash here must not lose the kept records
