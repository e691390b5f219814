"""One-hot einsum dispatch and combine (GShard / flaxformer "masked" style).

Builds dispatch and combine tensors <[G, T, E, C]> from the routing and moves tokens with
einsums. Simple and shard-friendly, but it does O(T * E * C * D) work per group just to move
tokens, so it is the slow path at large E; 'scatter' gives the same numbers without it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_flan.moe.experts import ExpertFFN
from moe_flan.moe.resharding import to_expert_major, to_group_major
from moe_flan.moe.routing import Routing


def dispatch_combine_tensors(routing: Routing, dtype) -> tuple[jax.Array, jax.Array]:
  """Returns (dispatch <dtype>[G, T, E, C] of 0/1, combine <dtype>[G, T, E, C] of weights)."""
  expert = jax.nn.one_hot(routing.expert_index, routing.num_experts, dtype=dtype)  # [G,T,S,E]
  # one_hot of an out-of-range slot (dropped) is all zeros; `routed` also clears padding.
  slot = jax.nn.one_hot(routing.slot_index, routing.capacity, dtype=dtype)         # [G,T,S,C]
  slot = slot * routing.routed[..., None].astype(dtype)
  dispatch = jnp.einsum('GTSE,GTSC->GTEC', expert, slot)
  weighted = slot * routing.combine_weight[..., None].astype(dtype)
  combine = jnp.einsum('GTSE,GTSC->GTEC', expert, weighted)
  return dispatch, combine


def einsum_dispatch(routing: Routing, x: jax.Array, ffn: ExpertFFN) -> jax.Array:
  """x: <dtype>[G, T, D] -> <dtype>[G, T, D] (the dispatcher interface, see dispatch.py).

  The einsums stay group-local (<[G, E, C, D]> split like x); only the expert-major buffers
  move between devices, by the all-to-all of `to_expert_major` / `to_group_major`.
  """
  dispatch, combine = dispatch_combine_tensors(routing, x.dtype)
  expert_in = to_expert_major(jnp.einsum('GTEC,GTD->GECD', dispatch, x))     # [E, G, C, D]
  expert_out = ffn.batched(expert_in).astype(x.dtype)                       # [E, G, C, D]
  return jnp.einsum('GTEC,GECD->GTD', combine, to_group_major(expert_out))
