"""Routers: float32 logits from token activations, and routing strategies chosen by name.

A routing strategy is a plain function from router logits to a small frozen `Routing`:

    strategy(logits <float32>[G, T, E], padding_mask <bool>[G, T], *,
             num_selected_experts: int, capacity: int,
             batch_prioritized_routing: bool) -> Routing

The built-in strategies ('tokens_choose', 'experts_choose', 'hf_switch') are listed in
`ROUTERS` and chosen by `MoeConfig.router_type`; users add their own with
`register_router(name, fn)`. Every dispatcher (see `dispatch.py`) consumes the
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

import types
from typing import Callable, Dict, Mapping

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
  if priority is not None:   # the selections in serving order; one-hot after, not before
    expert_index = jnp.take_along_axis(expert_index, priority[:, :, None], axis=1)
    real = jnp.take_along_axis(real, priority, axis=1)
  onehot = jax.nn.one_hot(expert_index, num_experts, dtype=jnp.int32)      # [G, T, S, E]
  onehot = onehot * real[:, :, None, None].astype(jnp.int32)
  # All 1st choices, then all 2nd choices, ...: queue order is (s, t).
  queue = jnp.transpose(onehot, (0, 2, 1, 3)).reshape(g, s * t, num_experts)
  position = jnp.cumsum(queue, axis=1) - 1
  position = jnp.sum(position * queue, axis=-1).reshape(g, s, t).transpose(0, 2, 1)
  if priority is not None:
    # Back to token order: entry i belongs to token priority[:, i]. A scatter (batched over
    # groups, so it partitions like the gathers) rather than a second argsort to invert the
    # permutation: libtpu's compiler spends much longer on a sort than on a scatter.
    position = jax.vmap(lambda p, x: jnp.zeros_like(x).at[p].set(x, unique_indices=True))(
        priority, position)
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


def hf_switch(logits: jax.Array, padding_mask: jax.Array, *, num_selected_experts: int,
              capacity: int, batch_prioritized_routing: bool = False) -> Routing:
  """Hugging Face SwitchTransformers' top-1 router, for imported checkpoints.

  The semantics are those of transformers 4.x `SwitchTransformersTop1Router` +
  `SwitchTransformersSparseMLP` (pinned: 4.57.6), which a routing group must mirror exactly for
  imported checkpoints to give HF's logits:
  * top-1: each token goes to argmax_e softmax(logits) (first index on ties, as torch.argmax);
  * capacity: a fixed number of slots per expert *per sequence* (HF `expert_capacity`), served
    first come by position (`cumsum` over the sequence). Groups are sequences when `group_size`
    = sequence length, and the fixed number is `capacity` (the converter sets min_capacity =
    expert_capacity and a vanishing capacity factor);
  * padding tokens are routed and take slots like any other token (HF's
    `router_ignore_padding_tokens` is never read by its model code);
  * the kept token's expert output is multiplied by its router probability (the top-1 softmax
    probability, not renormalised);
  * a dropped token's MoE output is zero, so only the residual passes (transformers >= 4.3x;
    earlier 4.x releases passed `router_prob * normed_input` for dropped tokens).
  Router jitter (training only) is applied by `Router` to the router input, as HF does.

  Where 'tokens_choose' differs: capacity comes from a capacity factor per routing group of
  `group_size` tokens (groups span sequences), padding never takes a slot, and
  `batch_prioritized_routing` can reorder the queue; aux losses are averaged per layer over real
  tokens (HF concatenates layers and includes padding).

  Args:
    logits: <float32>[G, T, E] router logits.
    padding_mask: <bool>[G, T] real tokens; only used for the `fraction_dropped` metric (HF
      routes padding like real tokens).
    num_selected_experts: must be 1.
    capacity: slots per expert and group (HF `expert_capacity`).
    batch_prioritized_routing: must be False (HF serves tokens by position).
  Returns:
    `Routing` with S = 1 selection per token.
  """
  if num_selected_experts != 1:
    raise ValueError(f'Bad config: num_selected_experts={num_selected_experts!r}: router '
                     "'hf_switch' is top-1 (HF SwitchTransformers)")
  if batch_prioritized_routing:
    raise ValueError("Bad config: MoeConfig.batch_prioritized_routing=True: router 'hf_switch' "
                     'serves tokens in position order, as HF does')
  num_experts = logits.shape[-1]
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  expert = jnp.argmax(probs, axis=-1)                                     # [G, T]
  onehot = jax.nn.one_hot(expert, num_experts, dtype=jnp.int32)           # [G, T, E]
  slot = jnp.sum((jnp.cumsum(onehot, axis=1) - 1) * onehot, axis=-1)      # [G, T]
  routed = slot < capacity
  real = padding_mask.astype(bool)
  dropped = jnp.sum(real & ~routed) / jnp.maximum(jnp.sum(real), 1)
  return Routing(
      expert_index=expert[..., None].astype(jnp.int32),
      slot_index=slot[..., None].astype(jnp.int32),
      combine_weight=jnp.where(routed, jnp.max(probs, axis=-1), 0.0)[..., None],
      routed=routed[..., None],
      fraction_dropped=dropped.astype(jnp.float32),
      num_experts=num_experts, capacity=capacity)


# The built-in routing strategies (MoeConfig.router_type). Users add theirs with
# `register_router`; a user's name may not shadow a built-in one.
ROUTERS: Mapping[str, RouterFn] = types.MappingProxyType({
    'tokens_choose': tokens_choose,
    'experts_choose': experts_choose,
    'hf_switch': hf_switch,
})
_USER_ROUTERS: Dict[str, RouterFn] = {}


def register_router(name: str, fn: RouterFn) -> None:
  """Adds (or replaces) the user routing strategy `name`; `fn` has the signature in the module
  doc. Built-in names cannot be replaced."""
  if name in ROUTERS:
    raise ValueError(f'register_router: {name!r} is a built-in router; choose another name')
  _USER_ROUTERS[name] = fn


def unregister_router(name: str) -> None:
  """Removes the user routing strategy `name` (no-op if absent)."""
  _USER_ROUTERS.pop(name, None)


def router_names() -> tuple[str, ...]:
  """Every valid `MoeConfig.router_type`: the built-in ones, then the registered ones."""
  return tuple(ROUTERS) + tuple(sorted(_USER_ROUTERS))


def get_router(name: str) -> RouterFn:
  fn = ROUTERS.get(name) or _USER_ROUTERS.get(name)
  if fn is None:
    raise ValueError(f'Bad config: MoeConfig.router_type={name!r}: unknown router; choose one of '
                     f'{router_names()} (or add one with moe_flan.moe.register_router)')
  return fn
