"""Dropless dispatch: sort selections by expert and run a grouped matmul (`ffn.ragged`).

Every routed selection is processed; there are no capacity buffers, so with tokens-choose
routing (the layer then routes with capacity = T) no token is dropped. Selections that the
routing did not route (padding; experts-choose non-picks) sort to the end and are skipped.

`ffn.ragged` runs `moe_flan.kernels.grouped_matmul` (`MoeConfig.grouped_matmul`): by default
a per-expert loop of XLA matmuls on CPU (where ragged_dot would fall back to a dense
computation doing E times the work) and `jax.lax.ragged_dot` elsewhere: real on TPU, but on
NVIDIA GPUs XLA expands it the same way, so there use 'mosaic_gpu' (Hopper) or a capacity
dispatcher. On CPU, 'cpu_ffi' opts in to the package's C++ kernels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_flan.moe.experts import ExpertFFN
from moe_flan.moe.routing import Routing


def dropless_dispatch(routing: Routing, x: jax.Array, ffn: ExpertFFN) -> jax.Array:
  """x: <dtype>[G, T, D] -> <dtype>[G, T, D] (the dispatcher interface, see dispatch.py)."""
  g, t, d = x.shape
  s = routing.expert_index.shape[-1]
  e = routing.num_experts
  routed = routing.routed.reshape(-1)                                     # [G*T*S]
  expert = jnp.where(routed, routing.expert_index.reshape(-1), e)         # e = "not routed"
  order = jnp.argsort(expert, stable=True)
  # At most C routed selections per expert and group, so only the first G*E*C sorted rows
  # can be routed (saves T/C-fold work for experts-choose, where S = E).
  rows = min(order.shape[0], g * e * routing.capacity)
  token = jnp.repeat(jnp.arange(g * t, dtype=jnp.int32), s)               # [G*T*S]
  x_sorted = x.reshape(g * t, d)[token[order[:rows]]]
  group_sizes = jnp.zeros((e + 1,), jnp.int32).at[expert].add(1)[:e]
  y_sorted = ffn.ragged(x_sorted, group_sizes).astype(x.dtype)           # [rows, D]
  y_sorted = jnp.concatenate([y_sorted, jnp.zeros((1, d), x.dtype)])     # row `rows` = zero
  position = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
  y = y_sorted[jnp.minimum(position, rows)].reshape(g, t, s, d)
  return jnp.einsum('GTSD,GTS->GTD', y, routing.combine_weight.astype(x.dtype))
