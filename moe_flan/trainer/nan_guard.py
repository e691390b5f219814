"""Stop training on a non-finite loss or gradient, naming the step and the metric.

The loop checks every step's metrics before anything (in particular a checkpoint) is written
for that step, so no checkpoint ever holds the NaN state.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

GUARDED = ('loss', 'grad_norm')


class NonFiniteError(FloatingPointError):
  """Raised when a guarded metric is NaN or Inf."""


def check_finite(step: int, metrics: Mapping[str, Any], names=GUARDED) -> None:
  """Raises NonFiniteError if any of `names` in `metrics` is NaN/Inf at `step`."""
  for name in names:
    if name not in metrics:
      continue
    value = float(metrics[name])
    if not math.isfinite(value):
      raise NonFiniteError(
          f'Training stopped at step {step}: {name} is {value} (not finite). '
          'No checkpoint was written for this step; the last good checkpoint is kept.')


@jax.jit
def tree_all_finite(tree: Any) -> jax.Array:
  """<bool>[] whether every float leaf of `tree` is finite (used before saving)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
