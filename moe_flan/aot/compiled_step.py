"""The trainer's train step, built abstractly for a TPU slice's devices and compiled for it.

Nothing is allocated: parameters, optimizer state and the batch are ShapeDtypeStructs carrying
their shardings; `jax.jit(...).lower(...).compile()` runs libtpu's compiler on this host.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional, Sequence

import gin
import jax
import numpy as np
from jax.experimental import mesh_utils

from moe_flan import config as config_lib
from moe_flan.aot import topology
from moe_flan.partitioning import mesh as mesh_lib
from moe_flan.partitioning import partitioner as part_lib
from moe_flan.trainer import builder
from moe_flan.trainer import data as data_lib
from moe_flan.trainer import optimizers


@dataclasses.dataclass(frozen=True)
class TrainRun:
  """The settings of one `moe_flan.trainer.loop.train` call, as its gin files bind them."""
  model: config_lib.T5Config
  data: data_lib.DataConfig
  optimizer: optimizers.OptimizerConfig
  frozen_groups: Sequence[str]
  seed: int


def train_run_from_gin() -> TrainRun:
  """The model, data, optimizer and run settings gin binds for `train` (parsed gin files)."""
  from moe_flan.trainer import loop  # pylint: disable=g-import-not-at-top
  bound = gin.get_bindings(loop.train)
  if 'model' not in bound or 'data' not in bound:
    raise ValueError('the gin files bind no train.model / train.data: pass a model file '
                     '(gin/models/*.gin) and a train run file (gin/runs/*.gin)')
  run = bound.get('run') or loop.RunConfig()
  return TrainRun(bound['model'], bound['data'], bound.get('optimizer') or
                  optimizers.OptimizerConfig(), tuple(run.frozen_groups), run.seed)


def mesh_for(devices: Sequence[Any], num_slices: int = 1,
             mesh_shape: Optional[Sequence[int]] = None) -> jax.sharding.Mesh:
  """The ('data', 'expert', 'model') mesh of the overlay's `make_mesh.mesh_shape` on `devices`,
  laid out along the slice's torus as the trainer's `jax.make_mesh` lays it on a real pod;
  with several slices the 'data' axis spans them (data parallelism over DCN).

  Raises:
    ValueError: naming the mesh shape, device count or slice count when they do not fit, or
      the mesh shape when its axes do not map onto the torus's axes.
  """
  if mesh_shape is None:
    mesh_shape = gin.get_bindings(mesh_lib.make_mesh).get('mesh_shape')
  n = len(devices)
  try:
    shape = mesh_lib.resolve_mesh_shape(mesh_shape, n)
  except ValueError as e:
    raise ValueError(f'the overlay does not fit the topology\'s {n} devices: {e}') from None
  axis_types = (jax.sharding.AxisType.Auto,) * len(mesh_lib.MESH_AXES)
  if num_slices == 1:
    try:
      return jax.make_mesh(shape, mesh_lib.MESH_AXES, axis_types=axis_types, devices=devices)
    except NotImplementedError as e:   # jax's device assignment for the physical torus
      raise ValueError(f'mesh_shape={shape} (data, expert, model) does not lay out on the '
                       f"slice's torus: each axis size must be a product of some of the torus's "
                       f'axis lengths (JAX: {e})') from None
  if shape[0] % num_slices:
    raise ValueError(f'--num_slices={num_slices} must divide the data axis of mesh_shape='
                     f'{shape} (data parallelism runs over the slices)')
  ici = (shape[0] // num_slices,) + tuple(shape[1:])
  grid = mesh_utils.create_hybrid_device_mesh(ici, (num_slices, 1, 1), devices)
  return jax.sharding.Mesh(grid, mesh_lib.MESH_AXES, axis_types=axis_types)


def abstract_batch(data: data_lib.DataConfig, sharding) -> dict[str, jax.ShapeDtypeStruct]:
  """The trainer's batch as ShapeDtypeStructs: seqio's EncDecFeatureConverter features
  (packed: with segment ids and positions), int32 [batch, length]."""
  import seqio  # pylint: disable=g-import-not-at-top
  lengths = seqio.EncDecFeatureConverter(pack=data.pack).get_model_feature_lengths(
      dict(data.task_feature_lengths))
  return {k: jax.ShapeDtypeStruct((data.batch_size, n), np.int32, sharding=sharding)
          for k, n in lengths.items() if k in data_lib.MODEL_FEATURES}


@dataclasses.dataclass
class CompiledStep:
  """A compiled train step and what it was built from."""
  run: TrainRun
  parts: builder.StepParts
  batch: dict[str, jax.ShapeDtypeStruct]
  compiled: Any                       # jax.stages.Compiled
  reuse_step_buffers: bool
  lower_s: float
  compile_s: float


def compile_train_step(run: TrainRun, mesh: jax.sharding.Mesh) -> CompiledStep:
  """Builds the trainer's step on `mesh` (builder.build_step) and compiles it.

  Every check that can reject the plan (batch vs batch partitions, dimensions vs mesh axes)
  runs while building, before the compiler starts. Step buffers follow
  OptimizerConfig.reuse_step_buffers; unset, the state is donated (the trainer's default on
  TPU).
  """
  partitioner = part_lib.Partitioner(mesh)
  parts = builder.build_step(run.model, run.data, run.optimizer, run.frozen_groups, run.seed,
                             partitioner)
  reuse = bool(run.optimizer.reuse_step_buffers)
  step = parts.jit_train_step(reuse=reuse)
  batch = abstract_batch(run.data, partitioner.data_sharding)
  t0 = time.perf_counter()
  with partitioner.activate():
    lowered = step.lower(parts.abstract_state, batch)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return CompiledStep(run, parts, batch, compiled, reuse, t1 - t0, t2 - t1)


def compile_for_topology(s: topology.Slice, run: Optional[TrainRun] = None) -> CompiledStep:
  """`compile_train_step` on the devices of slice `s` (the gin-bound run by default)."""
  devices = topology.devices(s)
  return compile_train_step(run or train_run_from_gin(), mesh_for(devices, s.num_slices))
