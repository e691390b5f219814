"""Routers: float32 logits from token activations, and routing strategies chosen by name.

A routing strategy is a plain function from router logits to a small frozen `Routing`:

    strategy(logits <float32>[G, T, E], padding_mask <bool>[G, T], *,
             num_selected_experts: int, capacity: int,
             batch_prioritized_routing: bool) -> Routing

Strategies are looked up in `ROUTERS` by `MoeConfig.router_type`; new ones (e.g. 'hf_switch')
are added with `register_router(name, fn)`. Every dispatcher (see `dispatch.py`) consumes the
same `Routing`, so one routing decision gives the same numbers on every dispatch path.

`Routing` describes, for every token t of group g and each of its S selection slots s:
  expert_index[g, t, s]    which expert the selection goes to,
  slot_index[g, t, s]      its position in that expert's buffer (0 <= slot < capacity if routed),
  combine_weight[g, t, s]  the weight of that expert's output (0 where not routed),
  routed[g, t, s]          whether the selection is processed (not padding, not dropped).
Invariant every strategy keeps (dispatchers rely on it): within a group, routed selections of
one expert have distinct slot_index values in [0, capacity), so no expert receives more than
`capacity` selections per group. Tokens-choose top-k uses S = k. Experts-choose uses S = E with expert_index[..., s] = s
(a token can be picked by any number of experts).

Combine weights are router probabilities (softmax over all E experts) of the chosen experts,
without renormalisation over the k selections (flaxformer/t5x convention; for k = 1 the output
is scaled by the router's confidence, which is what trains the router).

Priority at capacity (tokens-choose): every token's 1st choice is served before any token's
2nd choice, and so on; within one choice, tokens go in position order (t5x/flaxformer). With
`batch_prioritized_routing`, within each choice tokens go in decreasing order of their top-1
router probability, so the most confident tokens keep their slots. Padding tokens are never
routed and never take a slot.
"""
from __future__ import annotations

from typing import Callable, Dict

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_flan import axes


@flax.struct.dataclass
class Routing:
  """Routing decisions for G groups of T tokens, S selections per token (see module doc).

  expert_index: <int32>[G, T, S]
  slot_index: <int32>[G, T, S]
  combine_weight: <float32>[G, T, S]
  routed: <bool>[G, T, S]
  fraction_dropped: <float32>[] share of real tokens' selections (tokens-choose) or of real
    tokens (experts-choose) that no expert processes.
  num_experts, capacity: static ints (E and C).
  """
  expert_index: jax.Array
  slot_index: jax.Array
  combine_weight: jax.Array
  routed: jax.Array
  fraction_dropped: jax.Array
  num_experts: int = flax.struct.field(pytree_node=False)
  capacity: int = flax.struct.field(pytree_node=False)


RouterFn = Callable[..., Routing]


class Router(nn.Module):
  """Linear float32 router: logits <float32>[G, T, E] = jitter(x) @ kernel.

  Param `kernel` <float32>[D, E] with logical axes ('embed', 'unmodeled'), normal init with
  std `init_std`. With `enable_dropout` and `jitter_noise` > 0, inputs are multiplied by noise
  uniform in [1 - jitter_noise, 1 + jitter_noise] (rng stream 'dropout'), as in Switch.
  """
  num_experts: int
  init_std: float = 2e-2
  jitter_noise: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, enable_dropout: bool = False) -> jax.Array:
    """x: <float>[G, T, D] -> logits <float32>[G, T, E]."""
    x = x.astype(jnp.float32)  # the router is numerically sensitive; keep it in float32
    if enable_dropout and self.jitter_noise > 0:
      noise = jax.random.uniform(self.make_rng('dropout'), x.shape, jnp.float32,
                                 1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
      x = x * noise
    kernel = self.param(
        'kernel',
        nn.with_logical_partitioning(nn.initializers.normal(stddev=self.init_std),
                                     (axes.EMBED, axes.UNMODELED)),
        (x.shape[-1], self.num_experts), jnp.float32)
    return jnp.einsum('GTD,DE->GTE', x, kernel)


def _slots_in_priority_order(expert_index: jax.Array, real: jax.Array, num_experts: int,
                             priority: jax.Array | None) -> jax.Array:
  """Position of each selection in its expert's queue.

  expert_index: <int32>[G, T, S]; real: <bool>[G, T]; priority: <int32>[G, T] a permutation of
  tokens (first = served first) or None for position order. Returns <int32>[G, T, S]; padding
  selections get a position but never advance any queue.
  """
  g, t, s = expert_index.shape
  onehot = jax.nn.one_hot(expert_index, num_experts, dtype=jnp.int32)      # [G, T, S, E]
  onehot = onehot * real[:, :, None, None].astype(jnp.int32)
  if priority is not None:
    onehot = jnp.take_along_axis(onehot, priority[:, :, None, None], axis=1)
  # All 1st choices, then all 2nd choices, ...: queue order is (s, t).
  queue = jnp.transpose(onehot, (0, 2, 1, 3)).reshape(g, s * t, num_experts)
  position = jnp.cumsum(queue, axis=1) - 1
  position = jnp.sum(position * queue, axis=-1).reshape(g, s, t).transpose(0, 2, 1)
  if priority is not None:
    inverse = jnp.argsort(priority, axis=1)
    position = jnp.take_along_axis(position, inverse[:, :, None], axis=1)
  return position.astype(jnp.int32)


def top_k_by_argmax(probs: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """`jax.lax.top_k` over the last axis as k rounds of argmax (same values, same tie order).

  probs: <float32>[G, T, E] -> (<float32>[G, T, S], <int32>[G, T, S]). Why not lax.top_k: XLA's
  SPMD partitioner does not split the TopK op, so a sharded [G, T, E] is all-gathered onto every
  device first; argmax partitions like any reduction. k is small (1-2) in every MoE we configure.
  """
  values, indices = [], []
  remaining = probs
  for _ in range(k):
    index = jnp.argmax(remaining, axis=-1)                                # first max on ties
    values.append(jnp.take_along_axis(probs, index[..., None], axis=-1)[..., 0])
    indices.append(index)
    remaining = jnp.where(jax.nn.one_hot(index, probs.shape[-1], dtype=bool), -jnp.inf, remaining)
  return jnp.stack(values, axis=-1), jnp.stack(indices, axis=-1).astype(jnp.int32)


def tokens_choose(logits: jax.Array, padding_mask: jax.Array, *, num_selected_experts: int,
                  capacity: int, batch_prioritized_routing: bool = False) -> Routing:
  """Each token picks its top-k experts; experts serve selections up to `capacity`.

  logits: <float32>[G, T, E]; padding_mask: <bool>[G, T] (True = real token).
  """
  num_experts = logits.shape[-1]
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  weights, expert_index = top_k_by_argmax(probs, num_selected_experts)  # [G, T, S]
  real = padding_mask.astype(bool)
  priority = None
  if batch_prioritized_routing:
    # Most confident first; padding (score -1) last, though it never takes a slot anyway.
    score = jnp.where(real, weights[..., 0], -1.0)
    priority = jnp.argsort(-score, axis=1, stable=True)
  slot = _slots_in_priority_order(expert_index, real, num_experts, priority)
  routed = real[..., None] & (slot < capacity)
  wanted = jnp.maximum(jnp.sum(real) * num_selected_experts, 1)
  return Routing(
      expert_index=expert_index.astype(jnp.int32),
      slot_index=slot,
      combine_weight=jnp.where(routed, weights, 0.0),
      routed=routed,
      fraction_dropped=(wanted - jnp.sum(routed)) / wanted,   # integer difference: exact 0
      num_experts=num_experts, capacity=capacity)


def experts_choose(logits: jax.Array, padding_mask: jax.Array, *, num_selected_experts: int,
                   capacity: int, batch_prioritized_routing: bool = False) -> Routing:
  """Each expert picks the `capacity` tokens of a group with the highest router probability.

  Scores are softmax over experts (per token), as in flaxformer's expert-choice router; every
  expert takes exactly `capacity` tokens (real tokens first; picks of padding are not routed).
  `num_selected_experts` only scales capacity (done by the caller); `batch_prioritized_routing`
  does not apply.
  """
  del num_selected_experts, batch_prioritized_routing
  g, t, num_experts = logits.shape
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  real = padding_mask.astype(bool)
  score = jnp.where(real[..., None], probs, -1.0)                        # [G, T, E]
  _, token_index = jax.lax.top_k(jnp.swapaxes(score, 1, 2), capacity)   # [G, E, C]
  g_idx = jnp.arange(g)[:, None, None]
  e_idx = jnp.arange(num_experts)[None, :, None]
  slot = jnp.full((g, num_experts, t), capacity, jnp.int32)
  slot = slot.at[g_idx, e_idx, token_index].set(jnp.arange(capacity, dtype=jnp.int32)[None, None])
  slot = jnp.swapaxes(slot, 1, 2)                                        # [G, T, E]
  routed = real[..., None] & (slot < capacity)
  num_real = jnp.maximum(jnp.sum(real), 1)
  return Routing(
      expert_index=jnp.broadcast_to(jnp.arange(num_experts, dtype=jnp.int32), (g, t, num_experts)),
      slot_index=slot,
      combine_weight=jnp.where(routed, probs, 0.0),
      routed=routed,
      fraction_dropped=jnp.sum(real & ~jnp.any(routed, axis=-1)) / num_real,
      num_experts=num_experts, capacity=capacity)


ROUTERS: Dict[str, RouterFn] = {
    'tokens_choose': tokens_choose,
    'experts_choose': experts_choose,
}


def register_router(name: str, fn: RouterFn) -> None:
  """Adds (or replaces) routing strategy `name`; `fn` has the signature in the module doc."""
  ROUTERS[name] = fn


def get_router(name: str) -> RouterFn:
  if name == 'hf_switch' and name not in ROUTERS:
    # Registered by the HF converter; imported lazily so routing does not depend on it.
    import moe_flan.convert.hf_switch_routing  # pylint: disable=g-import-not-at-top,unused-import
  if name not in ROUTERS:
    raise ValueError(f'Bad config: router_type={name!r}: not registered; '
                     f'known routers: {sorted(ROUTERS)}')
  return ROUTERS[name]
