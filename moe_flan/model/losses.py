"""Token-level cross entropy with t5x's z-loss and label smoothing, plus the MoE auxiliary losses.

Per token t with logits x_t <float32>[V] and target y_t:
  log_z_t   = logsumexp(x_t)
  ce_t      = -sum_v q_t[v] * log_softmax(x_t)[v] - H(q)   (q: smoothed one-hot target; the
              constant entropy H(q) makes a perfect prediction cost 0, as t5x)
  z_t       = z_loss * log_z_t^2                            (keeps the softmax normaliser near 1)
Losses are averaged over tokens with non-zero weight (padding has weight 0).
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from moe_flan.config import T5Config
from moe_flan.moe.losses import collect_moe_metrics


def _smoothing(vocab_size: int, label_smoothing: float) -> tuple[float, float, float]:
  """(confidence, low, H(q)): the smoothed target puts `confidence` on the target class, `low`
  on each of the V - 1 others; H(q) is its entropy (a constant)."""
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab_size - 1)
  entropy = -(confidence * np.log(confidence) + (vocab_size - 1) * low * np.log(low + 1e-20))
  return confidence, low, float(entropy)


def cross_entropy_with_z_loss(logits: jax.Array, targets: jax.Array,
                              weights: Optional[jax.Array] = None, z_loss: float = 1e-4,
                              label_smoothing: float = 0.0):
  """Token-normalised cross entropy (including the z-loss term) and its parts.

  Args:
    logits: <float>[B, L, V] (cast to float32).
    targets: <int32>[B, L] target ids.
    weights: <float>[B, L] per-token weights; None = (targets > 0), i.e. padding ignored.
    z_loss: coefficient of log(Z)^2 (a Python number: static in the loss's VJP).
    label_smoothing: mass spread uniformly over the V-1 wrong classes (a Python number).
  Returns:
    (loss, z_loss_term, weight_sum): loss = sum_t w_t (ce_t + z_t) / sum_t w_t,
    z_loss_term = sum_t w_t z_t / sum_t w_t, weight_sum = sum_t w_t; float32 scalars.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing={label_smoothing!r} must be in [0, 1)')
  if logits.shape[:-1] != targets.shape:
    raise ValueError(f'logits {logits.shape} and targets {targets.shape} disagree')
  weights = (targets > 0 if weights is None else weights).astype(jnp.float32)
  ce, z = token_losses(logits.astype(jnp.float32), targets, float(z_loss),
                       float(label_smoothing))
  weight_sum = jnp.sum(weights)
  denominator = jnp.maximum(weight_sum, 1e-8)                       # all-padding batch -> 0
  loss = jnp.sum((ce + z) * weights) / denominator
  return loss, jnp.sum(z * weights) / denominator, weight_sum


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def token_losses(logits: jax.Array, targets: jax.Array, z_loss: float,
                 label_smoothing: float) -> tuple[jax.Array, jax.Array]:
  """<float32>[B, L, V] logits, <int>[B, L] targets -> (ce_t, z_t), each <float32>[B, L].

  Autodiff's values and gradients, written out (as t5x does): the gradient is one fused pass
  over the logits, softmax * scale - smoothed one-hot, where autodiff of the plain formula
  makes several and materialises the [B, L, V] soft targets in the forward.
  """
  return _token_losses_fwd(logits, targets, z_loss, label_smoothing)[0]


def _token_losses_fwd(logits, targets, z_loss, label_smoothing):
  vocab = logits.shape[-1]
  confidence, low, entropy = _smoothing(vocab, label_smoothing)
  log_z = jax.nn.logsumexp(logits, axis=-1)                         # [B, L]
  # An id outside [0, V) has no target class (as jax.nn.one_hot): only the `low` mass.
  in_vocab = ((targets >= 0) & (targets < vocab)).astype(jnp.float32)
  safe_targets = jnp.clip(targets, 0, vocab - 1)[..., None]
  target_logit = jnp.take_along_axis(logits, safe_targets, axis=-1)[..., 0] * in_vocab
  target_mass = low * vocab + (confidence - low) * in_vocab        # sum_v q_t[v]
  ce = target_mass * log_z - (confidence - low) * target_logit - entropy
  if low:
    ce = ce - low * jnp.sum(logits, axis=-1)
  return (ce, z_loss * jnp.square(log_z)), (logits, log_z, targets, target_mass)


def _token_losses_bwd(z_loss, label_smoothing, residuals, cotangents):
  logits, log_z, targets, target_mass = residuals
  d_ce, d_z = cotangents
  vocab = logits.shape[-1]
  confidence, low, _ = _smoothing(vocab, label_smoothing)
  probs = jnp.exp(logits - log_z[..., None])
  is_target = jnp.arange(vocab, dtype=targets.dtype) == targets[..., None]
  soft = low + (confidence - low) * is_target.astype(jnp.float32)
  prob_scale = d_ce * target_mass + d_z * 2.0 * z_loss * log_z
  return probs * prob_scale[..., None] - soft * d_ce[..., None], None


token_losses.defvjp(_token_losses_fwd, _token_losses_bwd)


@gin.configurable(denylist=['config', 'logits', 'batch', 'moe_metrics'])
def compute_loss(config: T5Config, logits: jax.Array, batch: Mapping[str, jax.Array],
                 moe_metrics: Any = None, z_loss: float = 1e-4,
                 label_smoothing: float = 0.0):
  """Total training loss and metrics for one batch.

  total = token-normalised (CE + z) + load_balancing_loss_weight * mean_layers(lb)
          + router_z_loss_weight * mean_layers(router_z)   (MoE terms only for sparse models)
  Args:
    logits: <float32>[B, Lt, V]; batch: needs 'decoder_target_tokens', may hold
      'decoder_loss_weights' (else targets > 0 are weighted 1).
    moe_metrics: the 'moe_metrics' collection from `apply(..., mutable=['moe_metrics'])`.
  Returns:
    (loss <float32>[], metrics dict of float32 arrays).
  """
  targets = batch['decoder_target_tokens']
  weights = batch.get('decoder_loss_weights')
  ce_z, z_term, weight_sum = cross_entropy_with_z_loss(logits, targets, weights, z_loss,
                                                       label_smoothing)
  w = (targets > 0 if weights is None else weights).astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  metrics = {
      'cross_entropy': ce_z - z_term, 'z_loss': z_term, 'weight_sum': weight_sum,
      'accuracy': jnp.sum(correct * w) / jnp.maximum(weight_sum, 1e-8),
  }
  total = ce_z
  if config.moe is not None and moe_metrics:
    moe = collect_moe_metrics(moe_metrics)
    for name, value in moe.items():
      metrics[f'moe/{name}'] = value
    if 'load_balancing_loss' in moe:
      total = total + config.moe.load_balancing_loss_weight * moe['load_balancing_loss']
    if 'router_z_loss' in moe:
      total = total + config.moe.router_z_loss_weight * moe['router_z_loss']
  metrics['loss'] = total
  return total, metrics
