"""HF SwitchTransformers' training loss, computed from a moe_flan model's outputs.

transformers 4.x `SwitchTransformersForConditionalGeneration` (with `output_router_logits`)
computes, per stack, from the router logits of all its sparse layers concatenated along the
sequence axis (<float32>[B, num_sparse_layers * L, E]):
  z_loss   = mean over all tokens of logsumexp(logits)**2          (padding included)
  aux_loss = E**2 * mean_{b,e}( f[b, e] * P[b, e] )                 (per sequence b, then mean)
    f[b, e]: share of the sequence's (layer, token) pairs whose expert index is e, where the
             expert index of a token dropped for capacity is 0 (argmax of an all-zero mask);
    P[b, e]: mean router probability of expert e over the same pairs;
and loss = CE + z_coef * (enc_z + dec_z) + aux_coef * (enc_aux + dec_aux). CE is the mean over
labels != -100. Quirk: a stack whose sparse step is 1 (every block sparse) contributes 0 to both
router losses (HF only computes them when `*_sparse_step > 1`).

Our default losses (moe_flan.moe.losses) differ: each layer's loss is computed on its own over
real tokens only, a dropped token still counts for its argmax expert, and the layers' losses are
averaged (see `moe_flan.moe.routing.hf_switch`). `router_logits` below captures the per-layer logits of our
model so this module can reproduce HF's numbers exactly.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import flax
import jax
import jax.numpy as jnp

from moe_flan.moe import routing as routing_lib


def router_logits(model, variables, *args, **kwargs) -> Dict[str, List[jax.Array]]:
  """Runs `model.apply(variables, *args, **kwargs)` and returns its router logits.

  Returns {'encoder': [...], 'decoder': [...]}, each a list (block order) of <float32>[G, T, E],
  plus the model output under 'output'.
  """
  out, state = model.apply(
      variables, *args, capture_intermediates=lambda m, _: isinstance(m, routing_lib.Router),
      mutable=['intermediates', 'moe_metrics'], **kwargs)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(state.get('intermediates', {})),
                                        sep='/')
  found: Dict[str, Any] = {'encoder': [], 'decoder': [], 'output': out}
  def block_index(path: str) -> int:
    return int(path.split('/layers_')[1].split('/')[0])
  for path in sorted(flat, key=lambda p: (p.split('/')[0], block_index(p))):
    found[path.split('/')[0]].append(flat[path][0])
  return found


def _expert_index_after_capacity(logits: jax.Array, capacity: int) -> jax.Array:
  """HF's loss-side expert index: argmax, or 0 where the token was dropped. [B, L, E] -> [B, L]."""
  expert = jnp.argmax(jax.nn.softmax(logits, axis=-1), axis=-1)
  onehot = jax.nn.one_hot(expert, logits.shape[-1], dtype=jnp.int32)
  kept = onehot * (jnp.cumsum(onehot, axis=1) <= capacity)
  return jnp.argmax(kept, axis=-1)


def stack_losses(layer_logits: Sequence[jax.Array], batch_size: int, capacity: int,
                 sparse_step: int) -> tuple[jax.Array, jax.Array]:
  """(z_loss, aux_loss) of one stack as HF computes them (module docstring).

  layer_logits: per sparse layer <float32>[G, T, E] with G * T = batch_size * L.
  """
  if sparse_step <= 1 or not layer_logits:
    return jnp.zeros(()), jnp.zeros(())
  per_seq = [l.astype(jnp.float32).reshape(batch_size, -1, l.shape[-1]) for l in layer_logits]
  logits = jnp.concatenate(per_seq, axis=1)                              # [B, nL*L, E]
  num_experts = logits.shape[-1]
  z_loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2)
  index = jnp.concatenate([_expert_index_after_capacity(l, capacity) for l in per_seq], axis=1)
  f = jnp.mean(jax.nn.one_hot(index, num_experts), axis=1)               # [B, E]
  p = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=1)                  # [B, E]
  return z_loss, jnp.mean(f * p) * num_experts ** 2


def hf_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean token cross-entropy over labels != -100 (torch CrossEntropyLoss(ignore_index=-100))."""
  valid = labels != -100
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  return jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1)


def hf_switch_loss(logits: jax.Array, labels: jax.Array, captured: Dict[str, List[jax.Array]],
                   hf_config: Dict) -> Dict[str, jax.Array]:
  """HF's total loss and its parts from our logits <float32>[B, Lt, V] and captured router
  logits (`router_logits`); hf_config: the SwitchTransformers config.json dict."""
  b = logits.shape[0]
  cap = int(hf_config.get('expert_capacity', 64))
  out = {'ce': hf_cross_entropy(logits, labels)}
  for stack, layers_key, sparse_key in (('encoder', 'num_layers', 'num_sparse_encoder_layers'),
                                        ('decoder', 'num_decoder_layers',
                                         'num_sparse_decoder_layers')):
    n = int(hf_config.get(layers_key) or hf_config['num_layers'])
    num_sparse = int(hf_config.get(sparse_key, 3))
    step = n // num_sparse if num_sparse > 0 else n
    out[f'{stack}_z_loss'], out[f'{stack}_aux_loss'] = stack_losses(captured[stack], b, cap, step)
  out['loss'] = (out['ce'] + float(hf_config.get('router_z_loss_coef', 1e-3)) *
                 (out['encoder_z_loss'] + out['decoder_z_loss']) +
                 float(hf_config.get('router_aux_loss_coef', 1e-3)) *
                 (out['encoder_aux_loss'] + out['decoder_aux_loss']))
  return out
