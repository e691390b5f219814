"""Token <-> expert resharding by logical constraints, which XLA lowers to an all-to-all.

Dispatched tokens leave the routing step group-major, <[G, E, C, D]> with the groups split over
the batch mesh axes (data x expert). The experts want them expert-major, <[E, G, C, D]> with E
split over 'expert' (groups over what is left, 'data'). Constraining the same tensor first
group-major and then, transposed, expert-major is a pure layout change that the SPMD partitioner
turns into one all-to-all over 'expert'. Constraining only the expert-major result of the
dispatch einsum instead lets XLA all-gather the dispatch mask (same numbers, much more traffic).
Outside a mesh / without logical-axis rules the constraints are no-ops.

Every constraint here goes through `constrain`, which leaves a dimension that does not divide
its mesh axes to XLA (e.g. 4 routing groups on 8 data-parallel devices): a padded constraint
there has no efficient layout change from the reshaped batch, and XLA's SPMD partitioner then
replicates the whole tensor and splits it again ("Involuntary full rematerialization").

    expert_in = to_expert_major(jnp.einsum('GTEC,GTD->GECD', dispatch, x))   # [E, G, C, D]
    expert_out = ffn.batched(expert_in)
    y = jnp.einsum('GTEC,GECD->GTD', combine, to_group_major(expert_out))

Lives in moe_flan.moe (not moe_flan.partitioning) because dispatchers use it and
moe_flan.partitioning imports moe_flan.moe; it only needs flax and the names in moe_flan/axes.py.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from moe_flan import axes

# The expert axis of group-major buffers stays unsplit: the groups already use 'expert'.
GROUP_MAJOR = (axes.EXPERT_GROUP, axes.UNMODELED, axes.CAPACITY, axes.EMBED)
EXPERT_MAJOR = (axes.EXPERT, axes.EXPERT_GROUP, axes.CAPACITY, axes.EMBED)


def _unfit(x: jax.Array, names: Sequence[Optional[str]]) -> Optional[list[bool]]:
  """Per dimension: True where the mesh axes the rules map it to do not divide its size; None
  outside a mesh or without rules (constraints are no-ops there)."""
  mesh = jax.sharding.get_abstract_mesh()
  rules = nn.get_logical_axis_rules()
  if mesh.empty or not rules:
    return None
  spec = nn.logical_to_mesh_axes(names, rules)
  return [bool(size % math.prod(mesh.shape[a] for a in
                                ((m,) if isinstance(m, str) else (m or ()))))
          for size, m in zip(x.shape, spec)]


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
  """`nn.with_logical_constraint(x, names)`, except that a dimension whose size the mesh axes
  it maps to do not divide is left unconstrained (XLA picks its layout; see the module doc)."""
  unfit = _unfit(x, names)
  if unfit is None:
    return nn.with_logical_constraint(x, names)
  return nn.with_logical_constraint(x, tuple(PartitionSpec.UNCONSTRAINED if u else n
                                             for u, n in zip(unfit, names)))


def _group_major(x: jax.Array) -> jax.Array:
  """<dtype>[G, E, C, D] constrained GROUP_MAJOR; left as it is when the groups do not divide
  their mesh axes: the experts then stay split where XLA has them (an unsplit E beside
  unsplittable groups has no efficient layout change from the expert-major buffers)."""
  unfit = _unfit(x, GROUP_MAJOR)
  return x if unfit and unfit[0] else constrain(x, GROUP_MAJOR)


def to_expert_major(x: jax.Array) -> jax.Array:
  """<dtype>[G, E, C, D] (groups split) -> <dtype>[E, G, C, D] (experts split): an all-to-all."""
  x = _group_major(x)
  return constrain(jnp.swapaxes(x, 0, 1), EXPERT_MAJOR)


def to_group_major(x: jax.Array) -> jax.Array:
  """<dtype>[E, G, C, D] (experts split) -> <dtype>[G, E, C, D] (groups split): the reverse."""
  x = constrain(x, EXPERT_MAJOR)
  return _group_major(jnp.swapaxes(x, 0, 1))
