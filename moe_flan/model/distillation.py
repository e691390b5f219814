"""Knowledge distillation loss: a student's logits pulled towards a frozen teacher's.

Per target token t with student logits s_t and teacher logits u_t <float32>[V] at temperature T:
  p_t = softmax(u_t / T)                         (the teacher's soft targets)
  kl_t = sum_v p_t[v] * (log p_t[v] - log_softmax(s_t / T)[v])      = KL(teacher || student)
and over the real (weight > 0) target tokens, normalised like the cross entropy:
  total = alpha * CE + (1 - alpha) * T^2 * KL + z-loss + MoE auxiliary losses
The T^2 factor (Hinton et al. 2015) keeps the KL's gradient, which scales as 1/T, comparable
across temperatures. The logit z-loss and the student's MoE losses are regularisers of the
student, so they enter as in ordinary training, unscaled by alpha; alpha = 1 is the plain
training loss (`compute_loss`) exactly.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from moe_flan.config import T5Config
from moe_flan.model.losses import compute_loss, cross_entropy_with_z_loss


def check_settings(alpha: float, temperature: float, where: str = 'DistillConfig') -> None:
  """ValueError naming the setting unless 0 <= alpha <= 1 and temperature > 0."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'{where}.alpha={alpha!r} must be in [0, 1] (the weight of the '
                     'cross entropy; 1 - alpha weighs the KL to the teacher)')
  if not temperature > 0.0:
    raise ValueError(f'{where}.temperature={temperature!r} must be > 0')


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def token_kl(student_logits: jax.Array, teacher_logits: jax.Array,
             temperature: float) -> jax.Array:
  """<float32>[B, L, V] student and teacher logits -> kl_t <float32>[B, L] at `temperature`.

  The gradient is written out, (softmax(s / T) - softmax(u / T)) / T: one pass over the
  logits, and exactly zero where the student's logits equal the teacher's (autodiff of the
  formula leaves rounding noise of the order of the float32 epsilon). The teacher gets no
  gradient: it is frozen.
  """
  return _token_kl_fwd(student_logits, teacher_logits, temperature)[0]


def _token_kl_fwd(student_logits, teacher_logits, temperature):
  log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  p = jnp.exp(log_p)
  # p * (log p - log q) is 0 where p underflows to 0 (log p stays finite, unlike log(p)).
  kl = jnp.sum(p * (log_p - log_q), axis=-1)
  return kl, (log_q, p, teacher_logits)


def _token_kl_bwd(temperature, residuals, d_kl):
  log_q, p, teacher_logits = residuals
  d_student = (jnp.exp(log_q) - p) * (d_kl[..., None] / temperature)
  return d_student, jnp.zeros_like(teacher_logits)


token_kl.defvjp(_token_kl_fwd, _token_kl_bwd)


def kl_divergence(student_logits: jax.Array, teacher_logits: jax.Array,
                  batch: Mapping[str, jax.Array], temperature: float) -> jax.Array:
  """Mean KL(teacher || student) <float32>[] over the weighted target tokens of `batch`
  ('decoder_loss_weights', else targets > 0), normalised as the cross entropy is."""
  targets = batch['decoder_target_tokens']
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f'student logits {student_logits.shape} and teacher logits '
                     f'{teacher_logits.shape} disagree')
  weights = batch.get('decoder_loss_weights')
  weights = (targets > 0 if weights is None else weights).astype(jnp.float32)
  kl = token_kl(student_logits, jax.lax.stop_gradient(teacher_logits), float(temperature))
  return jnp.sum(kl * weights) / jnp.maximum(jnp.sum(weights), 1e-8)


def distillation_loss(config: T5Config, student_logits: jax.Array, teacher_logits: jax.Array,
                      batch: Mapping[str, jax.Array], moe_metrics: Any, alpha: float,
                      temperature: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total distillation loss of the student and its metrics (module docstring).

  Args:
    config: the student's config (its MoE loss weights).
    student_logits, teacher_logits: <float32>[B, Lt, V].
    batch: as for `compute_loss`.
    moe_metrics: the student's 'moe_metrics' collection.
    alpha, temperature: Python numbers (static).
  Returns:
    (loss <float32>[], metrics): `compute_loss`'s metrics ('cross_entropy' on the targets,
    'z_loss', 'moe/...') plus 'distill/kl' (the KL at `temperature`, before the T^2 factor),
    'distill/teacher_cross_entropy' and 'loss' (the total).
  """
  check_settings(alpha, temperature)
  base, metrics = compute_loss(config, student_logits, batch, moe_metrics)
  kl = kl_divergence(student_logits, teacher_logits, batch, temperature)
  # base = CE + z-loss + MoE losses; swapping (1 - alpha) of its CE for the scaled KL keeps the
  # rest as in training, and at alpha = 1 adds exact zeros to the plain loss.
  scale = (1.0 - alpha) * temperature ** 2
  total = base + (alpha - 1.0) * metrics['cross_entropy'] + scale * kl
  teacher_ce = cross_entropy_with_z_loss(jax.lax.stop_gradient(teacher_logits),
                                         batch['decoder_target_tokens'],
                                         batch.get('decoder_loss_weights'), z_loss=0.0)[0]
  metrics['distill/kl'] = kl
  metrics['distill/teacher_cross_entropy'] = teacher_ce
  metrics['loss'] = total
  return total, metrics

