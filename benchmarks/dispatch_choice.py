"""Choosing a MoE dispatcher by name for a benchmark, including ones added by registration.

`MoeConfig.__post_init__` checks `dispatch` against the fixed tuple `config.DISPATCH_TYPES`,
so a dispatcher added through `moe_flan.moe.register_dispatcher` (here 'segmented', from
moe_flan/moe/dispatch_segmented.py) cannot be named in a MoeConfig yet. Until the config accepts
registered names, `with_dispatch` validates everything else with a built-in capacity dispatcher
and then sets the name; MoeLayer looks the name up in the DISPATCHERS registry at call time.
"""
from __future__ import annotations

import dataclasses

from moe_flan import config as config_lib
from moe_flan.moe import dispatch as dispatch_lib
import moe_flan.moe.dispatch_segmented  # noqa: F401  (registers 'segmented')

# The dispatcher the CPU train-step benchmarks use (fastest on CPU; see BENCHMARKS.md).
CPU_DISPATCH = 'segmented'
# On accelerators ragged_dot is a real grouped matmul.
GPU_DISPATCH = 'dropless'


def with_dispatch(moe: config_lib.MoeConfig, dispatch: str) -> config_lib.MoeConfig:
  """A copy of `moe` that dispatches with the registered dispatcher `dispatch`."""
  if dispatch not in dispatch_lib.DISPATCHERS:
    raise ValueError(f'with_dispatch: dispatch={dispatch!r} is not registered; known: '
                     f'{sorted(dispatch_lib.DISPATCHERS)}')
  if dispatch in config_lib.DISPATCH_TYPES:
    return dataclasses.replace(moe, dispatch=dispatch)
  cfg = dataclasses.replace(moe, dispatch='scatter')
  object.__setattr__(cfg, 'dispatch', dispatch)   # frozen dataclass; see the module docstring
  return cfg


def model_with_dispatch(model: config_lib.T5Config, dispatch: str) -> config_lib.T5Config:
  """A copy of T5Config `model` whose MoE blocks use `dispatch` (dense models unchanged)."""
  if model.moe is None:
    return model
  return dataclasses.replace(model, moe=with_dispatch(model.moe, dispatch))
