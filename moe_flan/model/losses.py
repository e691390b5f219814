"""Token-level cross entropy with t5x's z-loss and label smoothing, plus the MoE auxiliary losses.

Per token t with logits x_t <float32>[V] and target y_t:
  log_z_t   = logsumexp(x_t)
  ce_t      = -sum_v q_t[v] * log_softmax(x_t)[v] - H(q)   (q: smoothed one-hot target; the
              constant entropy H(q) makes a perfect prediction cost 0, as t5x)
  z_t       = z_loss * log_z_t^2                            (keeps the softmax normaliser near 1)
Losses are averaged over tokens with non-zero weight (padding has weight 0).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from moe_flan.config import T5Config
from moe_flan.moe.losses import collect_moe_metrics


def _smoothed_targets(targets: jax.Array, vocab_size: int, label_smoothing: float):
  """Soft targets <float32>[B, L, V] and their entropy H(q) (a constant)."""
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab_size - 1)
  entropy = -(confidence * np.log(confidence) + (vocab_size - 1) * low * np.log(low + 1e-20))
  onehot = jax.nn.one_hot(targets, vocab_size, dtype=jnp.float32)
  soft = onehot * (confidence - low) + low
  return soft, entropy


def cross_entropy_with_z_loss(logits: jax.Array, targets: jax.Array,
                              weights: Optional[jax.Array] = None, z_loss: float = 1e-4,
                              label_smoothing: float = 0.0):
  """Token-normalised cross entropy (including the z-loss term) and its parts.

  Args:
    logits: <float>[B, L, V] (cast to float32).
    targets: <int32>[B, L] target ids.
    weights: <float>[B, L] per-token weights; None = (targets > 0), i.e. padding ignored.
    z_loss: coefficient of log(Z)^2.
    label_smoothing: mass spread uniformly over the V-1 wrong classes.
  Returns:
    (loss, z_loss_term, weight_sum): loss = sum_t w_t (ce_t + z_t) / sum_t w_t,
    z_loss_term = sum_t w_t z_t / sum_t w_t, weight_sum = sum_t w_t; float32 scalars.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing={label_smoothing!r} must be in [0, 1)')
  if logits.shape[:-1] != targets.shape:
    raise ValueError(f'logits {logits.shape} and targets {targets.shape} disagree')
  logits = logits.astype(jnp.float32)
  weights = (targets > 0 if weights is None else weights).astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)                       # [B, L]
  log_probs = logits - log_z[..., None]
  soft, entropy = _smoothed_targets(targets, logits.shape[-1], label_smoothing)
  ce = -jnp.sum(soft * log_probs, axis=-1) - entropy
  z = z_loss * jnp.square(log_z)
  weight_sum = jnp.sum(weights)
  denominator = jnp.maximum(weight_sum, 1e-8)                       # all-padding batch -> 0
  loss = jnp.sum((ce + z) * weights) / denominator
  return loss, jnp.sum(z * weights) / denominator, weight_sum


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
