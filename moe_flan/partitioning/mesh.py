"""The device mesh: three named axes ('data', 'expert', 'model') over all devices.

* 'data'   splits the batch (and, under FSDP, the parameters' embed axis);
* 'expert' splits the experts of every MoE layer (and, as t5x contrib/moe does, the batch too,
           so a pure expert-parallel mesh still uses every device for the dense layers);
* 'model'  splits hidden/heads/vocab dimensions (Megatron-style tensor parallelism).

The same gin file runs on a laptop and on a pod: `mesh_shape` may leave one entry as -1
("all remaining devices"), e.g. `(-1, 8, 1)` = 8-way expert parallelism, data parallel over
the rest.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import gin
import jax
import numpy as np

from moe_flan import axes

MESH_AXES = axes.MESH_AXES
DATA, EXPERT, MODEL = MESH_AXES


def resolve_mesh_shape(mesh_shape: Optional[Sequence[int]],
                       num_devices: int) -> tuple[int, int, int]:
  """Fills a -1 entry and checks that the shape uses exactly `num_devices` devices.

  Raises:
    ValueError: naming the shape and device count when they do not fit.
  """
  if mesh_shape is None:
    return (num_devices, 1, 1)
  shape = tuple(int(s) for s in mesh_shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f'mesh_shape={tuple(mesh_shape)} must have {len(MESH_AXES)} entries, '
                     f'one per mesh axis {MESH_AXES}')
  if shape.count(-1) > 1:
    raise ValueError(f'mesh_shape={shape}: at most one entry may be -1 ("the rest")')
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f'mesh_shape={shape}: entries must be positive (or one -1)')
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if num_devices % known:
      raise ValueError(f'mesh_shape={shape}: the fixed axes use {known} devices, which does '
                       f'not divide the {num_devices} available devices')
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f'mesh_shape={shape} needs {math.prod(shape)} devices '
                     f'({" x ".join(f"{a}={s}" for a, s in zip(MESH_AXES, shape))}), '
                     f'but {num_devices} devices are available')
  return shape  # type: ignore[return-value]


@gin.configurable
def make_mesh(mesh_shape: Optional[Sequence[int]] = None,
              devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """Builds the ('data', 'expert', 'model') mesh.

  Args:
    mesh_shape: (data, expert, model) sizes; one entry may be -1 for "the rest";
      None puts every device on 'data' (pure data parallelism).
    devices: the devices to use (default: all devices of all processes, `jax.devices()`).
  Returns:
    A `jax.sharding.Mesh` with Auto axis types (what flax linen's logical constraints need).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if len(devices) == len(jax.devices()):
    # jax.make_mesh orders devices along the physical topology (ICI rings on TPU) and, with
    # several processes, keeps each host's devices contiguous along the leading axes.
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def mesh_axis_size(mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh,
                   axes: None | str | Sequence[str]) -> int:
  """Number of devices a dimension mapped to `axes` is split over (1 for None)."""
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return math.prod(mesh.shape[a] for a in axes)
