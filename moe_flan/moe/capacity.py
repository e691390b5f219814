"""Expert capacity and token grouping: how many tokens a routing group holds, and how many
slots each expert has per group.

Tokens are routed group by group (flaxformer/t5x convention). A batch of N = B * L tokens is
split into G groups of T tokens:

* N <= group_size: one group of all N tokens (small batches, e.g. one decoding step);
* N a multiple of group_size: G = N / group_size groups of group_size tokens;
* otherwise: ValueError naming both values (we never silently shrink groups, which would change
  the routing a config asks for).

Capacity per expert and group (C) is
`max(ceil(capacity_factor * num_selected_experts * T / num_experts), min_capacity)`, capped at T
because an expert can never receive more than T tokens of one group (tokens choose distinct
experts; experts choose distinct tokens). The cap changes no routing decision, only buffer sizes.
"""
from __future__ import annotations

import math


def num_groups(num_tokens: int, group_size: int) -> int:
  """Number of routing groups G for `num_tokens` tokens; see the module docstring."""
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


def expert_capacity(tokens_per_group: int, num_experts: int, num_selected_experts: int,
                    capacity_factor: float, min_capacity: int) -> int:
  """Slots C each expert has per group; see the module docstring."""
  if capacity_factor <= 0:
    raise ValueError(f'Bad config: capacity_factor={capacity_factor!r}: must be > 0')
  wanted = math.ceil(capacity_factor * num_selected_experts * tokens_per_group / num_experts)
  return int(min(max(wanted, min_capacity), tokens_per_group))
