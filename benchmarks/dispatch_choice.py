"""Choosing a MoE dispatcher by name for a benchmark (the CPU and GPU defaults live here)."""
from __future__ import annotations

import dataclasses

from moe_flan import config as config_lib
from moe_flan.kernels import grouped_matmul as grouped_matmul_lib
from moe_flan.moe import dispatch as dispatch_lib

# The dispatcher the CPU train-step benchmarks use: capacity semantics (like HF Switch) on the
# opt-in C++ grouped-matmul kernels (on a host where they cannot run: the per-expert loop).
CPU_DISPATCH = 'segmented cpu_ffi'
# On NVIDIA GPUs XLA expands jax.lax.ragged_dot (the grouped matmul of 'dropless' and
# 'segmented' by default) into a dense dot over all experts, so the GPU default is the capacity
# path whose experts run as one batched matmul per weight. The GPU suite also measures
# 'dropless' on JAX's Hopper kernels (MoeConfig.grouped_matmul = 'mosaic_gpu').
GPU_DISPATCH = 'scatter'


def for_suite(suite: str) -> str:
  """The dispatcher a suite's MoE train steps use unless a workload names its own."""
  return GPU_DISPATCH if suite == 'gpu' else CPU_DISPATCH


def with_dispatch(moe: config_lib.MoeConfig, dispatch: str) -> config_lib.MoeConfig:
  """A copy of `moe` that dispatches with the registered dispatcher `dispatch`; 'NAME IMPL'
  (e.g. 'dropless mosaic_gpu', 'segmented cpu_ffi') also sets MoeConfig.grouped_matmul = IMPL
  and readies it now, outside any trace (the C++ kernels are built here)."""
  dispatch, _, grouped_matmul = dispatch.partition(' ')
  if dispatch not in dispatch_lib.dispatcher_names():
    raise ValueError(f'with_dispatch: dispatch={dispatch!r} is unknown; known: '
                     f'{dispatch_lib.dispatcher_names()}')
  moe = dataclasses.replace(moe, dispatch=dispatch, grouped_matmul=grouped_matmul or 'auto')
  grouped_matmul_lib.prepare(moe.grouped_matmul)
  return moe


def model_with_dispatch(model: config_lib.T5Config, dispatch: str) -> config_lib.T5Config:
  """A copy of T5Config `model` whose MoE blocks use `dispatch` (dense models unchanged)."""
  if model.moe is None:
    return model
  return dataclasses.replace(model, moe=with_dispatch(model.moe, dispatch))
