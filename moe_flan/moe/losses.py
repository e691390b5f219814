"""Router auxiliary losses and per-layer MoE metrics, and their average over layers.

Both losses are computed over real (non-padding) tokens only, from the router logits, so they
do not depend on the routing strategy or the dispatch path:

* load balancing (Switch/GShard): `E * sum_e(f_e * P_e)` with P_e the mean router probability
  of expert e and f_e the fraction of tokens that count for expert e, computed per routing group
  and averaged over groups (a dropped token still counts). Two conventions
  (`MoeConfig.load_balancing_convention`):
  - 'ours' (GShard / Mesh-TF): a token counts for its top-1 (argmax) expert only, so the loss is
    1 under perfectly balanced routing whatever k is, and E when every token's top-1 is the same
    expert with probability 1;
  - 'flaxformer' (the paper's stack, `routing.py: _load_balancing_loss`): a token counts for each
    of its k highest-probability experts, so the loss is k under perfect balance; experts-choose
    layers report 0 (they are balanced by construction).
* router z-loss (ST-MoE): `mean_t(logsumexp_e(logits[t, e]) ** 2)`.

Each MoE layer sows into the 'moe_metrics' collection (see `layer.MoeLayer`):
'load_balancing_loss', 'router_z_loss', 'fraction_dropped', 'top1_prob' (scalars) and
'expert_load' (<float32>[E], share of routed selections per expert, sums to 1).
`collect_moe_metrics` averages each over layers.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp

METRIC_NAMES = ('load_balancing_loss', 'router_z_loss', 'fraction_dropped', 'expert_load',
                'top1_prob')
_VECTOR_METRICS = ('expert_load',)


def _masked_mean(values: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """Mean of `values` where `mask`; values <float>[..., X], mask broadcastable."""
  mask = jnp.broadcast_to(mask, values.shape).astype(jnp.float32)
  return jnp.sum(values * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def load_balancing_loss(logits: jax.Array, padding_mask: jax.Array,
                        num_counted: int = 1) -> jax.Array:
  """logits: <float32>[G, T, E]; padding_mask: <bool>[G, T] -> <float32>[] (see module doc).

  num_counted: how many of each token's highest-probability experts count in f_e (1: 'ours';
  k: 'flaxformer'). Computed per routing group, then averaged over groups holding real tokens.
  """
  num_experts = logits.shape[-1]
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  if num_counted == 1:
    chosen = jax.nn.one_hot(jnp.argmax(probs, axis=-1), num_experts, dtype=jnp.float32)
  else:
    top = jax.lax.top_k(probs, num_counted)[1]                          # [G, T, k]
    chosen = jnp.max(jax.nn.one_hot(top, num_experts, dtype=jnp.float32), axis=-2)
  mask = padding_mask.astype(bool)[..., None]
  tokens_per_expert = _masked_mean(chosen, mask, axis=1)             # [G, E]
  prob_per_expert = _masked_mean(probs, mask, axis=1)                # [G, E]
  per_group = num_experts * jnp.sum(tokens_per_expert * prob_per_expert, axis=-1)   # [G]
  return _masked_mean(per_group, jnp.any(padding_mask.astype(bool), axis=1))


def router_z_loss(logits: jax.Array, padding_mask: jax.Array) -> jax.Array:
  """logits: <float32>[G, T, E]; padding_mask: <bool>[G, T] -> <float32>[]."""
  z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
  return _masked_mean(z ** 2, padding_mask.astype(bool))


def _load_balancing_for(logits, padding_mask, convention: str, k: int,
                        experts_choose: bool) -> jax.Array:
  if convention == 'ours':
    return load_balancing_loss(logits, padding_mask)
  if experts_choose:
    return jnp.zeros((), jnp.float32)
  return load_balancing_loss(logits, padding_mask, num_counted=k)


def router_metrics(logits: jax.Array, padding_mask: jax.Array, routing,
                   convention: str = 'ours', num_selected_experts: int = 1,
                   experts_choose: bool = False) -> Dict[str, jax.Array]:
  """All per-layer metrics (see module doc) from logits and a `routing.Routing`.

  convention: `MoeConfig.load_balancing_convention`; num_selected_experts: the layer's k.
  """
  num_experts = logits.shape[-1]
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  routed = jax.nn.one_hot(routing.expert_index, num_experts, dtype=jnp.float32)
  routed = jnp.sum(routed * routing.routed[..., None], axis=(0, 1, 2))        # [E]
  return {
      'load_balancing_loss': _load_balancing_for(logits, padding_mask, convention,
                                                 num_selected_experts, experts_choose),
      'router_z_loss': router_z_loss(logits, padding_mask),
      'fraction_dropped': jnp.asarray(routing.fraction_dropped, jnp.float32),
      'expert_load': routed / jnp.maximum(jnp.sum(routed), 1.0),
      'top1_prob': _masked_mean(jnp.max(probs, axis=-1), padding_mask.astype(bool)),
  }


# Metrics also returned layer by layer (for the expert-utilisation plots: a mean over layers
# hides one collapsed layer behind balanced ones).
PER_LAYER_METRICS = ('expert_load', 'fraction_dropped', 'load_balancing_loss')


def _layer_order_key(path: str) -> List[Any]:
  """Encoder before decoder (data flow); in a stack scanned by `T5Config.scan_layers`, its
  scanned module 'layers' before the layers left over after it, and by row (block b holds layers
  b * P + j); then natural order (layers_2 before layers_10)."""
  stack = 0 if 'encoder' in path else 1
  where, _, row = path.rpartition('/')
  unrolled = 'layers' not in where.split('/')
  return [stack, unrolled, int(row)] + [int(p) if p.isdigit() else p
                                        for p in re.split(r'(\d+)', where)]


def _per_layer_values(tree: Any) -> Dict[str, List[Tuple[str, jax.Array]]]:
  """Metric name -> [(layer path, value)], one entry per layer (stacked leaves are split)."""
  found: Dict[str, List[Tuple[str, jax.Array]]] = {}
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  for path, value in leaves:
    keys = jax.tree_util.keystr(path, simple=True, separator='/').split('/')
    name = next((k for k in reversed(keys) if k in METRIC_NAMES), None)
    if name is None:
      continue
    value = jnp.asarray(value, jnp.float32)
    base_ndim = 1 if name in _VECTOR_METRICS else 0
    # Extra leading axes (layers stacked by nn.scan, or several sows) become separate layers.
    rows = list(value.reshape((-1,) + value.shape[value.ndim - base_ndim:]))
    where = '/'.join(keys)
    found.setdefault(name, []).extend((f'{where}/{i}', row) for i, row in enumerate(rows))
  return found


def collect_moe_metrics(tree: Any) -> Dict[str, jax.Array]:
  """Averages the sown 'moe_metrics' of all MoE layers.

  tree: the 'moe_metrics' collection (or a dict holding it) as returned by
  `apply(..., mutable=['moe_metrics'])`; sown values are tuples, and a leading layer axis (e.g.
  from nn.scan) is split into layers. Returns name -> mean over layers for each metric in
  METRIC_NAMES found, plus 'expert_load_per_layer' <float32>[num_layers, E],
  'fraction_dropped_per_layer' and 'load_balancing_loss_per_layer' <float32>[num_layers] (encoder
  layers, then decoder layers, each in natural path order). Returns {} when the tree holds no
  MoE metrics (a dense model).
  """
  found = _per_layer_values(tree)
  out = {}
  for name, entries in found.items():
    entries = sorted(entries, key=lambda e: _layer_order_key(e[0]))
    stacked = jnp.stack([v for _, v in entries])
    out[name] = jnp.mean(stacked, axis=0)
    if name in PER_LAYER_METRICS:
      out[f'{name}_per_layer'] = stacked
  return out

