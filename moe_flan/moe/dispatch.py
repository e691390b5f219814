"""Registry of dispatch implementations, chosen by `MoeConfig.dispatch`.

A dispatcher is a pure function

    dispatch(routing: Routing, x <dtype>[G, T, D], ffn: ExpertFFN) -> <dtype>[G, T, D]

that sends each routed selection (routing.expert_index / slot_index / routed) of each token to
its expert, evaluates the experts with `ffn.batched` (expert-major buffers <[E, G, C, D]>) or
`ffn.ragged` (rows sorted by expert), and returns the sum over selections of
`combine_weight * expert output`. Unrouted selections contribute nothing. All dispatchers give
the same numbers (outputs and gradients) for the same routing; tests check each against a
for-loop-over-experts reference.

Built in: 'einsum' (one-hot masks), 'scatter' (index gather into padded buffers), 'dropless'
(sorted rows, one grouped matmul per weight); 'segmented' (dispatch_segmented.py) and
'expert_parallel' are added with `register_dispatcher(name, fn)`. `drops_tokens=False` tells the
layer the path has no capacity limit, so tokens-choose routing then runs with capacity =
tokens per group (nothing dropped).
"""
from __future__ import annotations

from typing import Callable, Dict

import jax

from moe_flan.moe.dispatch_dropless import dropless_dispatch
from moe_flan.moe.dispatch_einsum import einsum_dispatch
from moe_flan.moe.dispatch_scatter import scatter_dispatch
from moe_flan.moe.experts import ExpertFFN
from moe_flan.moe.routing import Routing

DispatchFn = Callable[[Routing, jax.Array, ExpertFFN], jax.Array]

DISPATCHERS: Dict[str, DispatchFn] = {
    'einsum': einsum_dispatch,
    'scatter': scatter_dispatch,
    'dropless': dropless_dispatch,
}
_DROPLESS = {'dropless'}


def register_dispatcher(name: str, fn: DispatchFn, drops_tokens: bool = True) -> None:
  """Adds (or replaces) dispatcher `name`; `fn` has the signature in the module doc."""
  DISPATCHERS[name] = fn
  if drops_tokens:
    _DROPLESS.discard(name)
  else:
    _DROPLESS.add(name)


def get_dispatcher(name: str) -> DispatchFn:
  if name not in DISPATCHERS:
    raise ValueError(f'Bad config: MoeConfig.dispatch={name!r}: not registered; known '
                     f'dispatchers: {sorted(DISPATCHERS)} (expert_parallel is registered by '
                     f'importing moe_flan.partitioning)')
  return DISPATCHERS[name]


def is_dropless(name: str) -> bool:
  """True if dispatcher `name` has no capacity limit."""
  return name in _DROPLESS
