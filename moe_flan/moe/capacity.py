"""Expert capacity and token grouping: how many tokens a routing group holds, and how many
slots each expert has per group.

Tokens are routed group by group. `MoeConfig.routing_groups` chooses how the B * L tokens of a
call are split into G groups of T tokens:

'group_size' (flaxformer/t5x): the tokens of the whole batch, flattened, in groups of
`group_size` tokens (groups span sequences):
* N = B * L <= group_size: one group of all N tokens (small batches, e.g. one decoding step);
* N a multiple of group_size: G = N / group_size groups of group_size tokens;
* otherwise, in training: ValueError naming both values (we never silently shrink or pad
  training groups, which would change the routing a config asks for);
* otherwise, at evaluation, scoring and decoding: G = ceil(N / group_size) groups of group_size
  tokens, the last one completed with padding tokens that are never routed and take no slot,
  so every batch size and length runs with the configured group size and capacity.
  (flaxformer instead shrinks the groups to a divisor of N whose count is a multiple of E,
  which fails or degenerates when N has no such divisor, e.g. a prime number of tokens.)

'sequence' (Hugging Face SwitchTransformers): each sequence of the call is one group, G = B,
T = L, in training and inference alike (one decoding step routes B groups of one token).

Capacity per expert and group (C) is
`max(ceil(capacity_factor * num_selected_experts * T / num_experts), min_capacity)`, capped at T
because an expert can never receive more than T tokens of one group (tokens choose distinct
experts; experts choose distinct tokens). The cap changes no routing decision, only buffer sizes.
This is `MoeConfig.capacity_convention='ours'`; 'flaxformer' (the paper's stack) uses
`max(int(round(capacity_factor * T / num_experts)), min_capacity)`: Python's round (half to even)
and no factor k, so a top-2 router there needs twice the capacity factor for the same slots.
"""
from __future__ import annotations

import math

from moe_flan.config import CAPACITY_CONVENTIONS, ROUTING_GROUPS


def num_groups(num_tokens: int, group_size: int) -> int:
  """Number of routing groups G for `num_tokens` tokens in training (strict; module doc)."""
  if group_size < 1:
    raise ValueError(f'Bad config: MoeConfig.group_size={group_size!r}: must be >= 1')
  if num_tokens <= group_size:
    return 1
  if num_tokens % group_size:
    raise ValueError(
        f'Bad config: MoeConfig.group_size={group_size!r}: the batch holds {num_tokens} tokens '
        f'(batch * length), which is neither <= group_size nor a multiple of it; choose a '
        f'group_size that divides {num_tokens}')
  return num_tokens // group_size


def token_groups(batch: int, length: int, group_size: int, routing_groups: str,
                 training: bool) -> tuple[int, int]:
  """(G, T) for a call on <[batch, length]> tokens; G * T - batch * length trailing padding
  tokens complete the last group (module docstring)."""
  if routing_groups == 'sequence':
    return batch, length
  if routing_groups != 'group_size':
    raise ValueError(f'Bad config: MoeConfig.routing_groups={routing_groups!r}: choose one of '
                     f'{ROUTING_GROUPS}')
  if group_size < 1:
    raise ValueError(f'Bad config: MoeConfig.group_size={group_size!r}: must be >= 1')
  num_tokens = batch * length
  if training or num_tokens <= group_size or num_tokens % group_size == 0:
    g = num_groups(num_tokens, group_size)
    return g, num_tokens // g
  return -(-num_tokens // group_size), group_size


def expert_capacity(tokens_per_group: int, num_experts: int, num_selected_experts: int,
                    capacity_factor: float, min_capacity: int,
                    convention: str = 'ours') -> int:
  """Slots C each expert has per group; see the module docstring."""
  if capacity_factor <= 0:
    raise ValueError(f'Bad config: capacity_factor={capacity_factor!r}: must be > 0')
  if convention == 'ours':
    wanted = math.ceil(capacity_factor * num_selected_experts * tokens_per_group / num_experts)
  elif convention == 'flaxformer':
    # Python's round (half to even: round(2.5) == 2) and no factor k, as flaxformer.
    wanted = int(round(capacity_factor * tokens_per_group / num_experts))
  else:
    raise ValueError(f'Bad config: MoeConfig.capacity_convention={convention!r}: choose one of '
                     f'{CAPACITY_CONVENTIONS}')
  return int(min(max(wanted, min_capacity), tokens_per_group))
