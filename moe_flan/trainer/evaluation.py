"""Evaluation: teacher-forced loss/accuracy on a mixture; rank classification and generation.

Rank classification scores every FLAN answer option of an example with
`moe_flan.decoding.score_targets` and predicts the best one; generation decodes greedily and
compares the text with the target (exact match).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from moe_flan.trainer import data as data_lib


def mean_metrics(setup, params: Any, cfg: data_lib.DataConfig, num_batches: int
                 ) -> dict[str, Any]:
  """Token-weighted mean of the eval-step metrics over up to `num_batches` batches."""
  shard_id, num_shards = setup.partitioner.data_shard_info()
  it = data_lib.batches(cfg, shard_id, num_shards, repeat=True, shuffle=False)
  totals: dict[str, float] = {}
  weight_sum = 0.0
  for _ in range(num_batches):
    batch = setup.partitioner.shard_batch(next(it), cfg.batch_size)
    with setup.partitioner.activate():
      m = jax.device_get(setup._eval_step(params, batch))  # pylint: disable=protected-access
    w = float(m['num_tokens'])
    weight_sum += w
    for k, v in m.items():
      if np.ndim(v) == 0 and k != 'num_tokens':
        totals[k] = totals.get(k, 0.0) + float(v) * w
  out = {k: v / max(weight_sum, 1.0) for k, v in totals.items()}
  out['num_tokens'] = weight_sum
  return out
