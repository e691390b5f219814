"""Sparse upcycling: initialise an MoE model from a dense checkpoint of the same backbone.

Every expert of sparse block i copies the dense MLP of block i (`layers_i/mlp/wi_0/kernel`
<float32>[D, F] -> `layers_i/moe/experts/wi_0` <float32>[E, D, F], likewise wi_1 / wi / wo), an
ST-MoE `extra_mlp` copies it too, and routers keep their fresh initialisation. All other params
are copied as they are. With identical experts, a token's MoE output is the dense MLP output
times the sum of its combine weights (when no token is dropped).

Used by the trainer (`CheckpointConfig.upcycle_from_dense`: routers from the model's own init)
and by the converter (`python -m moe_flan.convert` into a sparse gin model: `upcycle`, which
initialises the routers from a seed without initialising the whole model).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from moe_flan.config import T5Config
from moe_flan.model.encoder_decoder import abstract_params
from moe_flan.moe.routing import Router

_EXPERT = re.compile(r'^(.*)/moe/experts/(wi_0|wi_1|wi|wo)$')
_EXTRA = re.compile(r'^(.*)/extra_mlp/(.*)$')
ROUTER = re.compile(r'/moe/router/')


def dense_source(moe_key: str) -> str | None:
  """The dense checkpoint key an upcycled param copies, or None (routers, unrelated params)."""
  m = _EXPERT.match(moe_key)
  if m:
    return f'{m.group(1)}/mlp/{m.group(2)}/kernel'
  m = _EXTRA.match(moe_key)
  if m:
    return f'{m.group(1)}/mlp/{m.group(2)}'
  return None


def upcycle_flat(dense: Mapping[str, np.ndarray], moe_shapes: Mapping[str, tuple]
                 ) -> dict[str, np.ndarray]:
  """Flat dense params ('a/b/c' -> array) -> flat params for a model with `moe_shapes`.

  Routers are absent from the result (they keep their fresh init); mismatched shapes are left
  for the caller's shape check to report.
  """
  out = {k: v for k, v in dense.items() if k in moe_shapes}
  for key, shape in moe_shapes.items():
    src = dense_source(key)
    if src is None or key in dense:
      continue
    if src not in dense:
      raise ValueError(f'upcycling: {key} needs the dense param {src}, absent in the checkpoint')
    value = np.asarray(dense[src])
    if _EXPERT.match(key):
      if tuple(shape[1:]) != value.shape:
        raise ValueError(f'upcycling: {key} {tuple(shape)} cannot hold copies of {src} '
                         f'{value.shape} (expert_mlp_dim must equal mlp_dim)')
      value = np.broadcast_to(value[None], tuple(shape)).copy()
    out[key] = value
  return out


def missing_after_upcycling(moe_shapes: Mapping[str, tuple]) -> list[str]:
  """The params an upcycled model initialises fresh (its routers)."""
  return sorted(k for k in moe_shapes if ROUTER.search('/' + k + '/'))


def upcycle_params(dense_params: Any, moe_params: Any) -> Any:
  """Nested-dict version: `moe_params` (fresh) with every copyable value taken from `dense_params`."""
  dense = flax.traverse_util.flatten_dict(dense_params, sep='/')
  fresh = flax.traverse_util.flatten_dict(moe_params, sep='/')
  copied = upcycle_flat(dense, {k: tuple(np.shape(v)) for k, v in fresh.items()})
  merged = {k: copied.get(k, v) for k, v in fresh.items()}
  return flax.traverse_util.unflatten_dict(merged, sep='/')


def upcycle(dense_params: Mapping[str, Any], target: T5Config, seed: int = 0) -> dict[str, Any]:
  """Nested dense params -> nested params of the sparse model `target`: the experts copy the
  dense MLPs (`upcycle_flat`) and each router gets a fresh init from the MoE layer's own
  `Router` module (one rng per router, folded from `seed`), without initialising (or compiling)
  the whole model."""
  shapes = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(
      flax.linen.meta.unbox(abstract_params(target)), sep='/').items()}
  out = upcycle_flat(flax.traverse_util.flatten_dict(dense_params, sep='/'), shapes)
  router = Router(target.moe.num_experts, target.moe.router_init_std)
  for i, key in enumerate(missing_after_upcycling(shapes)):
    variables = router.init(jax.random.fold_in(jax.random.PRNGKey(seed), i),
                            jnp.zeros((1, 1, shapes[key][0]), jnp.float32))
    out[key] = np.asarray(flax.linen.meta.unbox(variables)['params']['kernel'])
  return flax.traverse_util.unflatten_dict(out, sep='/')
