"""Explicit expert parallelism: `jax.shard_map` with `jax.lax.all_to_all` over the 'expert' axis.

Dispatcher 'expert_parallel' (same interface and numbers as 'scatter'):

    expert_parallel_dispatch(routing, x <dtype>[G, T, D], ffn) -> <dtype>[G, T, D]

Layout (P = size of the 'expert' mesh axis; groups G are split over the batch mesh axes, which
must include 'expert', as the default rules do):

  1. each device gathers its G_l local groups into expert buffers <[E, G_l, C, D]> (no mask
     einsum; index gather as in 'scatter');
  2. all-to-all over 'expert': device i sends the buffers of its experts' slice to device i and
     receives every device's tokens for its own experts  -> <[E/P, P * G_l, C, D]>;
  3. the local experts run on the received tokens (weights never move: each device holds only
     its experts' shards, split further over 'model' along F, with a psum over 'model');
  4. the reverse all-to-all returns the outputs to the tokens' devices, which combine them.

num_experts vs P: E > P puts E/P experts on each device (E % P == 0 required); E == P one each;
E < P (P % E == 0) gives each expert r = P/E replicas: the expert's C slots are split into r
parts, one per replica device, and the replicated weights are sliced locally (no weight
traffic). Under FSDP rules (embed -> 'data') the expert weights are all-gathered over 'data'
inside the step, which is FSDP's usual trade.

Without a mesh or logical axis rules (both set by `moe_flan.partitioning.Partitioner.activate`),
or when G does not divide over the batch mesh axes (e.g. one decoding step), this falls back to
the numerically identical 'scatter' path, leaving sharding to XLA. The mesh and the rules are
read from the context, so this module needs nothing from the partitioning package.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec

from moe_flan import axes
from moe_flan.moe.dispatch_scatter import buffer_slots, scatter_dispatch, slot_sources
from moe_flan.moe.experts import ExpertFFN
from moe_flan.moe.routing import Routing

# The name of the token buffers after each all-to-all, for remat policies that keep them
# (T5Config.remat_policy='save_moe_exchanges': the backward pass does not exchange them again).
EXCHANGE = 'moe_exchange'
_IN_KERNEL_AXES = (axes.EXPERT, axes.EMBED, axes.MLP)
_OUT_KERNEL_AXES = (axes.EXPERT, axes.MLP, axes.EMBED)


def _as_tuple(mesh_axes) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Static layout of one expert-parallel call (all sizes are Python ints)."""
  num_experts: int          # E
  capacity: int             # C
  partitions: int           # P, size of the 'expert' mesh axis
  replicas: int             # r = P / E when E < P, else 1
  embed_axes: tuple         # mesh axes the weights' D is split over (all-gathered)
  hidden_axes: tuple        # mesh axes the weights' F is split over (psum of outputs)

  @property
  def slots_per_replica(self) -> int:
    return -(-self.capacity // self.replicas)


def _to_buffers(routing: Routing, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """x: [G, T, D] -> (buffers <[E, G, C, D]>, slots <int32>[G, T, S])."""
  g, _, d = x.shape
  e, c = routing.num_experts, routing.capacity
  slots = buffer_slots(routing)
  sources = slot_sources(slots, e * c)                                      # [G, E*C]
  x_padded = jnp.concatenate([x, jnp.zeros((g, 1, d), x.dtype)], axis=1)    # row T = zeros
  buffers = jnp.take_along_axis(x_padded, sources[..., None], axis=1)       # [G, E*C, D]
  return jnp.transpose(buffers.reshape(g, e, c, d), (1, 0, 2, 3)), slots


def _combine(y: jax.Array, slots: jax.Array, combine_weight: jax.Array) -> jax.Array:
  """y: <[E, G, C, D]> expert outputs -> <[G, T, D]> weighted sums over each token's slots."""
  e, g, c, d = y.shape
  t, s = slots.shape[1:]
  y = jnp.transpose(y, (1, 0, 2, 3)).reshape(g, e * c, d)
  y = jnp.concatenate([y, jnp.zeros((g, 1, d), y.dtype)], axis=1)          # slot E*C = none
  picked = jnp.take_along_axis(y, slots.reshape(g, t * s, 1), axis=1).reshape(g, t, s, d)
  return jnp.einsum('GTSD,GTS->GTD', picked, combine_weight.astype(y.dtype))


def _split_replicas(buffers: jax.Array, plan: _Plan) -> jax.Array:
  """<[E, G, C, D]> -> <[E * r, G, ceil(C / r), D]>: replica j of expert e gets slot part j."""
  r = plan.replicas
  if r == 1:
    return buffers
  e, g, c, d = buffers.shape
  cr = plan.slots_per_replica
  buffers = jnp.pad(buffers, ((0, 0), (0, 0), (0, r * cr - c), (0, 0)))
  buffers = buffers.reshape(e, g, r, cr, d).transpose(0, 2, 1, 3, 4)
  return buffers.reshape(e * r, g, cr, d)


def _merge_replicas(y: jax.Array, plan: _Plan) -> jax.Array:
  """Inverse of `_split_replicas`: <[E * r, G, ceil(C / r), D]> -> <[E, G, C, D]>."""
  r = plan.replicas
  if r == 1:
    return y
  er, g, cr, d = y.shape
  y = y.reshape(er // r, r, g, cr, d).transpose(0, 2, 1, 3, 4)
  return y.reshape(er // r, g, r * cr, d)[:, :, :plan.capacity]


def _local_experts(ffn: ExpertFFN, buffers: jax.Array, plan: _Plan) -> jax.Array:
  """Runs this device's experts on <[E_local, G', C', D]> buffers (inside shard_map)."""
  weights = ffn.weights
  if plan.replicas > 1:  # weights replicated over 'expert': keep this device's expert
    expert = jax.lax.axis_index(axes.MESH_EXPERT) // plan.replicas
    weights = {k: jax.lax.dynamic_slice_in_dim(w, expert, 1, axis=0) for k, w in weights.items()}
  if plan.embed_axes:  # FSDP: gather D (axis 1 of wi, axis 2 of wo)
    weights = {k: jax.lax.all_gather(w, plan.embed_axes, axis=2 if k == 'wo' else 1, tiled=True)
               for k, w in weights.items()}
  rng = ffn.dropout_rng
  if rng is not None:  # different dropout masks on different devices
    for name in (axes.MESH_DATA, axes.MESH_EXPERT, axes.MESH_MODEL):
      rng = jax.random.fold_in(rng, jax.lax.axis_index(name))
  local = dataclasses.replace(ffn, weights=weights, dropout_rng=rng)
  with nn.logical_axis_rules(()):  # inside shard_map everything is manual: no constraints
    y = local.batched(buffers)
  if plan.hidden_axes:  # F was split: each device holds a partial sum over its F slice
    y = jax.lax.psum(y, plan.hidden_axes)
  return y


def _shard_body(routing: Routing, x: jax.Array, weights: dict, rng: Optional[jax.Array],
                ffn: ExpertFFN, plan: _Plan) -> jax.Array:
  """Per-device computation: x <[G_l, T, D]> local groups -> <[G_l, T, D]>."""
  buffers, slots = _to_buffers(routing, x)                         # [E, G_l, C, D]
  buffers = _split_replicas(buffers, plan)                         # [E*r, G_l, C', D]
  if plan.partitions > 1:
    buffers = jax.lax.all_to_all(buffers, axes.MESH_EXPERT, 0, 1, tiled=True)  # [E*r/P, P*G_l]
    buffers = checkpoint_name(buffers, EXCHANGE)
  ffn = dataclasses.replace(ffn, weights=weights, dropout_rng=rng)
  y = _local_experts(ffn, buffers, plan).astype(x.dtype)
  if plan.partitions > 1:
    y = checkpoint_name(jax.lax.all_to_all(y, axes.MESH_EXPERT, 1, 0, tiled=True),
                        EXCHANGE)                                  # [E*r, G_l, C', D]
  y = _merge_replicas(y, plan)
  return _combine(y, slots, routing.combine_weight)


def _mesh_axis_size(mesh, mesh_axes: tuple[str, ...]) -> int:
  return math.prod(mesh.shape[a] for a in mesh_axes)


def weight_spec(names: tuple[str, ...], shape: tuple[int, ...], mesh, rules,
                where: str) -> PartitionSpec:
  """The PartitionSpec the expert weights are placed with: `nn.logical_to_mesh_axes`, and an
  'expert' dimension smaller than its mesh axes (which it divides) replicated - the rule of
  `moe_flan.partitioning.Partitioner.spec_for`, which places them (a test checks that the two
  agree). Raises ValueError naming `where` and the dimension when a dimension does not divide.
  """
  spec = list(nn.logical_to_mesh_axes(names, rules))
  for i, (name, size) in enumerate(zip(names, shape)):
    parts = _mesh_axis_size(mesh, _as_tuple(spec[i]))
    if size % parts == 0:
      continue
    if name == axes.EXPERT and parts % size == 0:
      spec[i] = None  # fewer experts than expert partitions: replicas
      continue
    raise ValueError(f'{where}: dimension {i} ({name!r}) has size {size}, which is not '
                     f'divisible by mesh axes {spec[i]} of size {parts}')
  return PartitionSpec(*spec)


def _weight_specs(weights: dict, mesh, rules) -> dict:
  return {k: weight_spec(_OUT_KERNEL_AXES if k == 'wo' else _IN_KERNEL_AXES, w.shape, mesh, rules,
                         f'experts/{k}') for k, w in weights.items()}


def _make_plan(routing: Routing, weight_specs: dict, mesh) -> _Plan:
  e = routing.num_experts
  p = mesh.shape[axes.MESH_EXPERT]
  if e % p and p % e:
    raise ValueError(f'expert_parallel: num_experts={e} and the expert mesh axis size {p} '
                     'must divide one another')
  wi_spec = next(s for k, s in weight_specs.items() if k != 'wo')
  return _Plan(num_experts=e, capacity=routing.capacity, partitions=p,
               replicas=max(p // e, 1), embed_axes=_as_tuple(wi_spec[1]),
               hidden_axes=_as_tuple(wi_spec[2]))


@functools.lru_cache(maxsize=None)
def _warn_fallback(num_groups: int, group_axes: tuple, parts: int) -> None:
  """Warns once per shape: e.g. one decoding step (1 group), or a group_size too big."""
  logging.warning('expert_parallel: %d routing group(s) do not divide over mesh axes %s (%d '
                  "partitions); using the 'scatter' path there (same numbers, XLA-sharded). "
                  'For training, make batch * length / MoeConfig.group_size a multiple of %d.',
                  num_groups, group_axes, parts, parts)


def check_training_groups(num_groups: int, num_tokens: int, group_size: int, mesh, rules,
                          where: str, setting: str = '--gin.MoeConfig.group_size={}') -> None:
  """ValueError when a training batch's `num_groups` routing groups (of `num_tokens` tokens)
  cannot be split over the group mesh axes: this dispatcher would fall back to 'scatter' in
  every step, while the configuration asked for the all-to-all. Names a group_size that works,
  as `setting` formatted with it (the flag that sets it)."""
  group_axes = _as_tuple(nn.logical_to_mesh_axes((axes.EXPERT_GROUP,), rules)[0])
  parts = _mesh_axis_size(mesh, group_axes)
  if num_groups % parts == 0:
    return
  fits = [num_tokens // (parts * k) for k in range(1, num_tokens // parts + 1)
          if num_tokens % (parts * k) == 0 and num_tokens // (parts * k) <= group_size]
  hint = (f'e.g. {setting.format(fits[0])}' if fits else
          f'the batch ({num_tokens} tokens) cannot be cut into a multiple of {parts} groups')
  raise ValueError(
      f"MoeConfig.dispatch='expert_parallel': the {where} forms {num_groups} routing group(s) "
      f'of MoeConfig.group_size={group_size} from {num_tokens} tokens (batch * length), which '
      f'do not divide over mesh axes {group_axes} ({parts} partitions), so its all-to-all '
      f'could not run; make batch * length / group_size a multiple of {parts}: {hint}')


def _group_axes(mesh, rules, num_groups: int) -> Optional[tuple[str, ...]]:
  """Mesh axes of the group dimension, or None when G cannot be split over them."""
  group_axes = _as_tuple(nn.logical_to_mesh_axes((axes.EXPERT_GROUP,), rules)[0])
  if mesh.shape[axes.MESH_EXPERT] > 1 and axes.MESH_EXPERT not in group_axes:
    raise ValueError(
        f'expert_parallel: groups are split over mesh axes {group_axes}, which must include '
        f"'expert' (logical_axis_rules.batch_mesh_axes); or use the 'einsum' dispatch")
  parts = _mesh_axis_size(mesh, group_axes)
  if num_groups % parts:
    _warn_fallback(num_groups, group_axes, parts)
    return None
  return group_axes


def expert_parallel_dispatch(routing: Routing, x: jax.Array, ffn: ExpertFFN) -> jax.Array:
  """x: <dtype>[G, T, D] -> <dtype>[G, T, D] (the dispatcher interface, see dispatch.py)."""
  mesh = jax.sharding.get_abstract_mesh()
  rules = list(nn.get_logical_axis_rules())
  if mesh.empty or axes.MESH_EXPERT not in mesh.axis_names or not rules:
    return scatter_dispatch(routing, x, ffn)
  group_axes = _group_axes(mesh, rules, x.shape[0])
  if group_axes is None:
    return scatter_dispatch(routing, x, ffn)
  weight_specs = _weight_specs(ffn.weights, mesh, rules)
  plan = _make_plan(routing, weight_specs, mesh)
  overlap = set(group_axes) & set(plan.hidden_axes)
  if overlap:
    raise ValueError(f'expert_parallel: mesh axes {sorted(overlap)} split both the groups and '
                     "the experts' mlp dimension; change logical_axis_rules")
  g_spec = PartitionSpec(group_axes)
  routing_specs = routing.replace(expert_index=g_spec, slot_index=g_spec,
                                  combine_weight=g_spec, routed=g_spec,
                                  fraction_dropped=PartitionSpec())
  body = lambda r, xs, w, rng: _shard_body(r, xs, w, rng, ffn, plan)  # noqa: E731
  return jax.shard_map(
      body, in_specs=(routing_specs, g_spec, weight_specs, PartitionSpec()),
      out_specs=g_spec)(routing, x, dict(ffn.weights), ffn.dropout_rng)
