"""Dispatch implementations, chosen by name with `MoeConfig.dispatch`.

A dispatcher is a pure function

    dispatch(routing: Routing, x <dtype>[G, T, D], ffn: ExpertFFN) -> <dtype>[G, T, D]

that sends each routed selection (routing.expert_index / slot_index / routed) of each token to
its expert, evaluates the experts with `ffn.batched` (expert-major buffers <[E, G, C, D]>) or
`ffn.ragged` (rows sorted by expert), and returns the sum over selections of
`combine_weight * expert output`. Unrouted selections contribute nothing. All dispatchers give
the same numbers (outputs and gradients) for the same routing; tests check each against a
for-loop-over-experts reference.

The built-in dispatchers are listed in `DISPATCHERS`: 'einsum' (one-hot masks), 'scatter' (index
gather into padded buffers), 'segmented' (per-expert exact-size segments), 'dropless' (sorted
rows, no capacity) and 'expert_parallel' (shard_map + all-to-all over the 'expert' mesh axis).
Users add their own with `register_dispatcher(name, fn)`. A dropless dispatcher
(`drops_tokens=False`) has no capacity limit, so tokens-choose routing then runs with capacity =
tokens per group (nothing dropped).
"""
from __future__ import annotations

import types
from typing import Callable, Dict, Mapping

import jax

from moe_flan.moe.dispatch_dropless import dropless_dispatch
from moe_flan.moe.dispatch_einsum import einsum_dispatch
from moe_flan.moe.dispatch_expert_parallel import expert_parallel_dispatch
from moe_flan.moe.dispatch_scatter import scatter_dispatch
from moe_flan.moe.dispatch_segmented import segmented_dispatch
from moe_flan.moe.experts import ExpertFFN
from moe_flan.moe.routing import Routing

DispatchFn = Callable[[Routing, jax.Array, ExpertFFN], jax.Array]

# The built-in dispatchers (MoeConfig.dispatch), and those of them without a capacity limit.
DISPATCHERS: Mapping[str, DispatchFn] = types.MappingProxyType({
    'einsum': einsum_dispatch,
    'scatter': scatter_dispatch,
    'segmented': segmented_dispatch,
    'dropless': dropless_dispatch,
    'expert_parallel': expert_parallel_dispatch,
})
DROPLESS_DISPATCHERS = frozenset({'dropless'})

_USER_DISPATCHERS: Dict[str, DispatchFn] = {}
_USER_DROPLESS: set[str] = set()


def register_dispatcher(name: str, fn: DispatchFn, drops_tokens: bool = True) -> None:
  """Adds (or replaces) the user dispatcher `name`; `fn` has the signature in the module doc.

  Built-in names cannot be replaced.
  """
  if name in DISPATCHERS:
    raise ValueError(f'register_dispatcher: {name!r} is a built-in dispatcher; choose another '
                     'name')
  _USER_DISPATCHERS[name] = fn
  if drops_tokens:
    _USER_DROPLESS.discard(name)
  else:
    _USER_DROPLESS.add(name)


def unregister_dispatcher(name: str) -> None:
  """Removes the user dispatcher `name` (no-op if absent)."""
  _USER_DISPATCHERS.pop(name, None)
  _USER_DROPLESS.discard(name)


def dispatcher_names() -> tuple[str, ...]:
  """Every valid `MoeConfig.dispatch`: the built-in ones, then the registered ones."""
  return tuple(DISPATCHERS) + tuple(sorted(_USER_DISPATCHERS))


def get_dispatcher(name: str) -> DispatchFn:
  fn = DISPATCHERS.get(name) or _USER_DISPATCHERS.get(name)
  if fn is None:
    raise ValueError(f'Bad config: MoeConfig.dispatch={name!r}: unknown dispatcher; choose one '
                     f'of {dispatcher_names()} (or add one with '
                     'moe_flan.moe.register_dispatcher)')
  return fn


def is_dropless(name: str) -> bool:
  """True if dispatcher `name` has no capacity limit."""
  return name in DROPLESS_DISPATCHERS or name in _USER_DROPLESS
