"""Index dispatch: gather tokens into padded expert buffers, one batched einsum per weight.

No <[G, T, E, C]> tensor is built. Per group, an integer map from each of the E * C buffer
slots to its source token is made by scattering token ids (O(T * S) integer work); tokens are
then gathered into <[E, G, C, D]> buffers, the experts run as `ExpertFFN.batched`, and each
token gathers its S outputs back and sums them with the combine weights. Moving tokens costs
O(E * C * D) per group instead of the einsum path's O(T * E * C * D), so this is the fast
capacity-based path on CPU and at large E. Same numbers as 'einsum' for the same routing.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_flan.moe.experts import ExpertFFN
from moe_flan.moe.resharding import to_expert_major, to_group_major
from moe_flan.moe.routing import Routing


def buffer_slots(routing: Routing) -> jax.Array:
  """<int32>[G, T, S]: each selection's slot e * C + c in its group's buffers; E * C if unrouted."""
  num_slots = routing.num_experts * routing.capacity
  slot = routing.expert_index * routing.capacity + routing.slot_index
  return jnp.where(routing.routed, slot, num_slots).astype(jnp.int32)


def slot_sources(slots: jax.Array, num_slots: int) -> jax.Array:
  """slots: <int32>[G, T, S] -> <int32>[G, E * C]: source token of each slot; T if empty."""
  g, t, s = slots.shape
  token = jnp.repeat(jnp.arange(t, dtype=jnp.int32), s)              # [T*S], t-major like slots

  def one_group(group_slots: jax.Array) -> jax.Array:                # [T*S] -> [E*C + 1]
    sources = jnp.full((num_slots + 1,), t, jnp.int32)   # the last entry catches unrouted ones
    return sources.at[group_slots].set(token)

  # vmap (not an explicit group index) makes G a batch dimension of the scatter, which the
  # SPMD partitioner keeps on the group's device instead of all-gathering the indices.
  return jax.vmap(one_group)(slots.reshape(g, t * s))[:, :num_slots]


def scatter_dispatch(routing: Routing, x: jax.Array, ffn: ExpertFFN) -> jax.Array:
  """x: <dtype>[G, T, D] -> <dtype>[G, T, D] (the dispatcher interface, see dispatch.py).

  Both gathers index within a group, so they stay on the group's device; only the
  expert-major buffers move, by the all-to-all of `to_expert_major` / `to_group_major`.
  """
  g, t, d = x.shape
  e, c = routing.num_experts, routing.capacity
  slots = buffer_slots(routing)                                      # [G, T, S]
  sources = slot_sources(slots, e * c)                               # [G, E*C]
  # Empty slots (source T) and unrouted selections (slot E * C) index one past the end and read
  # zeros (`mode='fill'`). Not a zero row concatenated to the tokens: where a group's tokens are
  # split over devices (fewer groups than batch partitions), XLA can re-split that odd-length
  # buffer only by replicating it whole ("Involuntary full rematerialization").
  buffers = jnp.take_along_axis(x, sources[..., None], axis=1, mode='fill', fill_value=0)
  buffers = to_expert_major(buffers.reshape(g, e, c, d))             # [E, G, C, D]
  y = to_group_major(ffn.batched(buffers).astype(x.dtype))          # [G, E, C, D]
  s = slots.shape[-1]
  picked = jnp.take_along_axis(y.reshape(g, e * c, d), slots.reshape(g, t * s, 1), axis=1,
                               mode='fill', fill_value=0)           # [G, T*S, D]
  picked = picked.reshape(g, t, s, d)
  return jnp.einsum('GTSD,GTS->GTD', picked, routing.combine_weight.astype(x.dtype))
