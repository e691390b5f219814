"""'hf_switch': a routing strategy that reproduces Hugging Face SwitchTransformers' router.

Registered in the MoE router registry on import of `moe_flan.convert` (select it with
`MoeConfig.router_type = 'hf_switch'`; `hf_switch.config_from_hf` does). The semantics are those
of transformers 4.x `SwitchTransformersTop1Router` + `SwitchTransformersSparseMLP` (pinned:
4.57.6), which a routing group must mirror exactly for imported checkpoints to give HF's logits:

* top-1: each token goes to argmax_e softmax(logits) (first index on ties, as torch.argmax);
* capacity: a fixed number of slots per expert *per sequence* (HF `expert_capacity`), served
  first come by position (`cumsum` over the sequence). We get "per sequence" by routing groups of
  `group_size` = sequence length tokens, and the fixed number through `capacity`
  (hf_switch.py sets min_capacity = expert_capacity and a vanishing capacity factor);
* padding tokens are routed and take slots like any other token (HF's
  `router_ignore_padding_tokens` is never read by its model code);
* the kept token's expert output is multiplied by its router probability (the top-1 softmax
  probability, not renormalised);
* a dropped token's MoE output is zero, so only the residual passes (transformers >= 4.3x;
  earlier 4.x releases passed `router_prob * normed_input` for dropped tokens).
Router jitter (training only) is applied by `moe_flan.moe.routing.Router` to the router input,
as HF does; see docs in README (HF also jitters the experts' input by an in-place multiply).

Where our default ('tokens_choose') differs: capacity comes from a capacity factor per routing
group of `group_size` tokens (groups span sequences), padding never takes a slot, and
`batch_prioritized_routing` can reorder the queue; aux losses are averaged per layer over real
tokens (HF concatenates layers and includes padding; see hf_switch_losses.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_flan.moe import routing as routing_lib

NAME = 'hf_switch'


def hf_switch(logits: jax.Array, padding_mask: jax.Array, *, num_selected_experts: int,
              capacity: int, batch_prioritized_routing: bool = False) -> routing_lib.Routing:
  """HF SwitchTransformers top-1 routing of G groups (= sequences) of T tokens.

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
  return routing_lib.Routing(
      expert_index=expert[..., None].astype(jnp.int32),
      slot_index=slot[..., None].astype(jnp.int32),
      combine_weight=jnp.where(routed, jnp.max(probs, axis=-1), 0.0)[..., None],
      routed=routed[..., None],
      fraction_dropped=dropped.astype(jnp.float32),
      num_experts=num_experts, capacity=capacity)


def register() -> None:
  """Adds 'hf_switch' to the MoE router registry (idempotent)."""
  routing_lib.register_router(NAME, hf_switch)


register()
