"""Scanned layer stacks (`T5Config.scan_layers`) and the params conversion to and from them.

A stack of N layers whose sparse/dense pattern repeats every P layers (`T5Config.layer_period`)
runs as `nn.scan` over B = N // P blocks of P layers, so XLA compiles one block instead of N
layers (t5x/flaxformer's and MaxText's `scan_layers`); the N % P layers left over (ST-MoE-32B:
27 = 6 x 4 + 3) run unrolled after the scan. Every variable of the block - params, the MoE
layers' sown 'moe_metrics', the decoding 'cache' - gains a leading axis of B, and params carry
the logical axis name `axes.LAYERS` there (never sharded: moe_flan.partitioning.rules).

Param layout, unrolled -> scanned (`scan_params` / `unscan_params`):

    {stack}/layers_{i}/...  <f32>[...]   ->   {stack}/layers/layers_{i % P}/...  <f32>[B, ...]

at index i // P of the leading axis, for i < B * P; later layers keep `{stack}/layers_{i}`.
Users converting checkpoints between the two layouts call these two functions on the 'params'
tree (nested dicts of arrays).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moe_flan import axes
from moe_flan.config import T5Config
from moe_flan.moe import dispatch_expert_parallel

SCANNED = 'layers'   # the name of a scanned stack's module, beside the unrolled 'layers_{i}'
_REMAT = {'minimal': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
          'full': jax.checkpoint_policies.nothing_saveable,
          'save_moe_exchanges': jax.checkpoint_policies.save_only_these_names(
              dispatch_expert_parallel.EXCHANGE)}   # T5Config.remat_policy
STACKS = ('encoder', 'decoder')


def _num_layers(config: T5Config, stack: str) -> int:
  return config.num_encoder_layers if stack == 'encoder' else config.num_decoder_layers


def block_pattern(config: T5Config, stack: str) -> tuple[bool, ...]:
  """Which of the P layers of one scanned block are sparse."""
  sparse = (config.encoder_sparse_blocks() if stack == 'encoder'
            else config.decoder_sparse_blocks())
  return tuple(j in sparse for j in range(config.layer_period(stack)))


def num_blocks(config: T5Config, stack: str) -> int:
  """B: the scan's steps; layers B * P .. N - 1 run unrolled after it."""
  return _num_layers(config, stack) // config.layer_period(stack)


class _Block(nn.Module):
  """P consecutive layers: one step of the scan. `layer(config, sparse=..., name=...)` builds a
  layer; `call_kwargs` are the layers' static keyword arguments (enable_dropout, decode)."""
  layer: Callable[..., nn.Module]
  config: T5Config
  pattern: tuple[bool, ...]
  call_kwargs: tuple[tuple[str, Any], ...] = ()

  @nn.compact
  def __call__(self, x: jax.Array, *args) -> tuple[jax.Array, None]:
    for j, sparse in enumerate(self.pattern):
      x = self.layer(self.config, sparse=sparse, name=f'layers_{j}')(x, *args,
                                                                   **dict(self.call_kwargs))
    return x, None


def run_scanned(layer: Callable[..., nn.Module], config: T5Config, stack: str, x: jax.Array,
                *args, **call_kwargs) -> jax.Array:
  """Runs the stack's layers as a scan; call from inside the stack's compact method.

  x <dtype>[B, L, D] is the carry; `args` (masks, biases, encodings; arrays or None) are the
  same for every layer; `call_kwargs` are static. Returns <dtype>[B, L, D].
  """
  pattern, blocks = block_pattern(config, stack), num_blocks(config, stack)
  block = _Block
  if config.remat_policy != 'none':
    # prevent_cse=False: inside a scan the loop already keeps XLA from merging the recomputation
    # with the forward pass (flax's advice for remat under scan).
    block = nn.remat(_Block, prevent_cse=False, policy=_REMAT[config.remat_policy])
  scanned = nn.scan(
      block,
      variable_axes={True: 0},   # params, moe_metrics, cache: one slice per block
      split_rngs={'params': True, 'dropout': True},
      in_axes=(nn.broadcast,) * len(args),
      length=blocks,
      metadata_params={nn.PARTITION_NAME: axes.LAYERS})
  x, _ = scanned(layer, config, pattern, tuple(sorted(call_kwargs.items())),
                 name=SCANNED)(x, *args)
  for i in range(blocks * len(pattern), _num_layers(config, stack)):   # the layers left over
    x = layer(config, sparse=pattern[i % len(pattern)], name=f'layers_{i}')(x, *args,
                                                                           **call_kwargs)
  return x


def _stack_arrays(leaves: list) -> Any:
  if all(isinstance(v, np.ndarray) for v in leaves):
    return np.stack(leaves)   # host checkpoints stay on the host
  return jnp.stack(leaves)


def _check_stack(params: Mapping[str, Any], stack: str) -> None:
  if stack not in params:
    raise ValueError(f'params have no {stack!r} stack; top-level keys: {sorted(params)}')


def scan_params(params: Mapping[str, Any], config: T5Config) -> dict[str, Any]:
  """Unrolled params ({stack}/layers_{i}/...) -> scanned ({stack}/layers/layers_{j}/...
  [N / P, ...]) for `config`'s layer periods (see the module docstring)."""
  out = dict(params)
  for stack in STACKS:
    _check_stack(params, stack)
    n, period = _num_layers(config, stack), config.layer_period(stack)
    tree = dict(params[stack])
    missing = [f'layers_{i}' for i in range(n) if f'layers_{i}' not in tree]
    if missing:
      raise ValueError(f'scan_params: {stack} lacks {missing[:3]} of its {n} layers '
                       f'(keys: {sorted(tree)[:8]})')
    layers = [tree.pop(f'layers_{i}') for i in range(num_blocks(config, stack) * period)]
    tree[SCANNED] = {f'layers_{j}': jax.tree_util.tree_map(
        lambda *v: _stack_arrays(list(v)), *layers[j::period]) for j in range(period)}
    out[stack] = tree
  return out


def unscan_params(params: Mapping[str, Any], config: T5Config) -> dict[str, Any]:
  """Scanned params ({stack}/layers/layers_{j}/... [N / P, ...]) -> unrolled
  ({stack}/layers_{i}/...), the inverse of `scan_params`."""
  out = dict(params)
  for stack in STACKS:
    _check_stack(params, stack)
    period = config.layer_period(stack)
    tree = dict(params[stack])
    if SCANNED not in tree:
      raise ValueError(f'unscan_params: {stack} has no scanned {SCANNED!r} module '
                       f'(keys: {sorted(tree)[:8]})')
    blocks = tree.pop(SCANNED)
    for j in range(period):
      for b in range(num_blocks(config, stack)):
        tree[f'layers_{b * period + j}'] = jax.tree_util.tree_map(
            lambda v, b=b: v[b], blocks[f'layers_{j}'])
    out[stack] = tree
  return out
