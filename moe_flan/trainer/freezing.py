"""Parameter groups and freezing (the paper's ablations: freeze the gate, the experts, ...).

Every parameter belongs to exactly one group, decided by its path in the parameter tree:
  router       .../moe/router/...                       (the gate)
  experts      .../moe/experts/...                      (expert FFN kernels)
  embeddings   token_embedder/... and decoder/logits_dense/...
  non_expert   everything else (attention, dense MLPs, layer norms, relative position biases)
Frozen groups get `optax.set_to_zero()` (no optimizer state) and the train step additionally keeps
their old values, so frozen params stay bit-identical (even -0.0 stays -0.0).
A group that selects no parameter is an error, not a no-op: freezing 'router' or 'experts' of a
dense model would otherwise train everything while the run claims a freezing ablation.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import optax

GROUPS = ('router', 'experts', 'non_expert', 'embeddings')
FROZEN = 'frozen'
TRAINABLE = 'trainable'


def param_group(path: str) -> str:
  """The group (one of GROUPS) of the parameter at `path` ('a/b/c')."""
  parts = path.split('/')
  if 'moe' in parts:
    rest = parts[parts.index('moe') + 1:]
    if rest and rest[0] == 'router':
      return 'router'
    if rest and rest[0] == 'experts':
      return 'experts'
  if parts[0] == 'token_embedder' or 'logits_dense' in parts:
    return 'embeddings'
  return 'non_expert'


def _group_at(key_path) -> str:
  """`param_group` of the parameter at a jax key path."""
  return param_group(jax.tree_util.keystr(key_path, simple=True, separator='/'))


def check_groups(frozen_groups: Sequence[str]) -> tuple[str, ...]:
  """`frozen_groups` as a tuple; a one-line error names an unknown group."""
  if isinstance(frozen_groups, str):   # 'router' would otherwise be read as six letters
    raise ValueError(f'frozen_groups={frozen_groups!r}: give a list of groups, e.g. '
                     f'[{frozen_groups!r}]')
  for g in frozen_groups:
    if g not in GROUPS:
      raise ValueError(f'frozen_groups: unknown group {g!r}; choose from {GROUPS}')
  return tuple(frozen_groups)


def frozen_mask(params: Any, frozen_groups: Sequence[str]) -> Any:
  """Tree of bools like `params`: True where the param is frozen."""
  frozen_groups = check_groups(frozen_groups)
  present = {_group_at(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  for g in frozen_groups:
    if g not in present:
      raise ValueError(f'frozen_groups: {g!r} selects no parameter of this model (a dense model '
                       'has no router or experts); drop it from FROZEN_GROUPS')
  return jax.tree_util.tree_map_with_path(
      lambda p, _: _group_at(p) in frozen_groups, params)


def with_freezing(tx: optax.GradientTransformation, params: Any,
                  frozen_groups: Sequence[str]) -> optax.GradientTransformation:
  """`tx` on trainable params, zero updates (and no state) on frozen ones."""
  if not frozen_groups:
    return tx
  mask = frozen_mask(params, frozen_groups)
  labels = jax.tree.map(lambda f: FROZEN if f else TRAINABLE, mask)
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def keep_frozen(old_params: Any, new_params: Any, mask: Any) -> Any:
  """New params, except the frozen ones, which keep their exact old values."""
  return jax.tree.map(lambda f, o, n: o if f else n, mask, old_params, new_params)


def group_sizes(params: Any) -> dict[str, int]:
  """Number of parameters per group (for logs)."""
  sizes = {g: 0 for g in GROUPS}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    sizes[_group_at(path)] += int(leaf.size)
  return sizes
