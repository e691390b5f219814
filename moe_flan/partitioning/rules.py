"""The one table mapping logical axis names (moe_flan/axes.py) to mesh axes.

Rules are t5x-style `(logical_name, mesh_axes)` pairs read in order of precedence by flax
(`nn.logical_to_mesh_axes`): a dimension takes the first rule for its name whose mesh axes are
still unused by the array's other dimensions, so an activation `('batch', 'length', 'embed')`
keeps 'data' for its batch even when FSDP maps 'embed' to 'data' for parameters.
A logical name with no usable rule is replicated.

Parallelism layouts are small gin overlays (gin/partitioning/*.gin) binding the arguments below
and `make_mesh.mesh_shape`; nothing in the model names a mesh axis.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import gin

from moe_flan import axes
from moe_flan.partitioning import mesh as mesh_lib

MeshAxes = Union[None, str, tuple[str, ...]]
Rules = list[tuple[str, MeshAxes]]

# Every logical name the code base may use; anything else is a typo (see `check_known_names`).
KNOWN_LOGICAL_NAMES = frozenset({
    axes.BATCH, axes.LENGTH, axes.EMBED, axes.MLP, axes.HEADS, axes.KV, axes.JOINED_KV,
    axes.VOCAB, axes.RELPOS_BUCKETS, axes.EXPERT, axes.EXPERT_GROUP, axes.EXPERT_REPLICA,
    axes.UNMODELED, axes.CAPACITY, axes.LAYERS,
})


@gin.configurable
def logical_axis_rules(
    fsdp: bool = False,
    batch_mesh_axes: Sequence[str] = (mesh_lib.DATA, mesh_lib.EXPERT),
    additional_rules: Sequence[tuple[str, MeshAxes]] = (),
) -> Rules:
  """Returns the logical-axis rule table.

  Args:
    fsdp: also shard parameters' embed axis over 'data' (ZeRO-3/FSDP-style: each data-parallel
      replica stores 1/data of every weight; XLA all-gathers them where they are used).
    batch_mesh_axes: mesh axes the batch (and the MoE group axis) is split over. The default
      ('data', 'expert') follows t5x contrib/moe: expert-parallel devices also split the batch,
      so dense layers use every device and the token all-to-all stays within an expert row.
    additional_rules: rules placed BEFORE the defaults, so they take precedence (e.g.
      `(('length', 'model'),)` for sequence parallelism of activations).
  Returns:
    A list of `(logical_name, mesh_axes)` pairs.
  """
  batch = tuple(batch_mesh_axes) if batch_mesh_axes else None
  defaults: Rules = [
      # 'expert' first: in expert-major buffers <[E, G, C, D]> the experts take the 'expert'
      # axis and the groups fall back to 'data' (the rule after next), which is exactly the
      # layout change from <[G, T, D]> (groups over data x expert) that XLA does as an all-to-all.
      (axes.EXPERT, mesh_lib.EXPERT),
      (axes.BATCH, batch),
      (axes.EXPERT_GROUP, batch),
      (axes.EXPERT_GROUP, mesh_lib.DATA),
      (axes.EXPERT_REPLICA, mesh_lib.DATA),
      (axes.VOCAB, mesh_lib.MODEL),
      (axes.MLP, mesh_lib.MODEL),
      (axes.HEADS, mesh_lib.MODEL),
      (axes.JOINED_KV, mesh_lib.MODEL),
      (axes.EMBED, mesh_lib.DATA if fsdp else None),
      (axes.KV, None),
      (axes.LENGTH, None),
      (axes.RELPOS_BUCKETS, None),
      (axes.CAPACITY, None),
      (axes.UNMODELED, None),
      # Each scan step slices one block of layers out of the stack: sharding this axis
      # would make every step gather a block from other devices.
      (axes.LAYERS, None),
  ]
  for name, _ in additional_rules:
    if name not in KNOWN_LOGICAL_NAMES:
      raise ValueError(f'logical_axis_rules.additional_rules: unknown logical axis {name!r}; '
                       f'known names: {sorted(KNOWN_LOGICAL_NAMES)}')
  return [tuple(r) for r in additional_rules] + defaults  # type: ignore[misc]


def check_known_names(names: Sequence[Optional[str]], where: str) -> None:
  """Raises ValueError if `names` has a logical axis name missing from moe_flan/axes.py."""
  unknown = [n for n in names if isinstance(n, str) and n not in KNOWN_LOGICAL_NAMES]
  if unknown:
    raise ValueError(f'{where}: unknown logical axis name(s) {unknown} in {tuple(names)}; '
                     f'use the names of moe_flan/axes.py: {sorted(KNOWN_LOGICAL_NAMES)}')


def mesh_axes_for(name: Optional[str], rules: Rules) -> MeshAxes:
  """The mesh axes of the first rule for `name` (ignoring conflicts with other dimensions)."""
  for rule_name, mesh_axes in rules:
    if rule_name == name:
      return mesh_axes
  return None
