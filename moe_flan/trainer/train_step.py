"""Jitted train and eval steps (loss via `moe_flan.model.compute_loss`), with gradient accumulation.

A step's dropout key is `fold_in(state.rng, state.step)`, so a resumed run draws the same keys as
an uninterrupted one. Metrics are scalars except the per-layer MoE arrays
(`moe/expert_load_per_layer` <float32>[num_layers, E], `moe/fraction_dropped_per_layer` and
`moe/load_balancing_loss_per_layer` [num_layers]); other names come from `compute_loss` ('moe/...' for router metrics).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from moe_flan import config as config_lib
from moe_flan.model import compute_loss
from moe_flan.trainer import freezing
from moe_flan.trainer import train_state as ts

Batch = dict[str, jax.Array]


def token_accuracy(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(correct, count) over weighted target tokens; logits <float32>[B, Lt, V]."""
  targets = batch['decoder_target_tokens']
  weights = batch.get('decoder_loss_weights', (targets > 0).astype(jnp.float32))
  weights = weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * weights
  return jnp.sum(correct), jnp.sum(weights)


def forward_metrics(model: nn.Module, config: config_lib.T5Config, params: Any, batch: Batch,
                    rng: jax.Array | None, train: bool, loss_fn: Optional[Callable] = None
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Loss and metrics of one (micro)batch. loss_fn(logits, moe_metrics) -> (loss, metrics);
  default `compute_loss` (a distillation run's adds the teacher's logits)."""
  rngs = {'dropout': rng} if train else {}
  logits, variables = model.apply({'params': params}, **ts.model_inputs(batch),
                                  enable_dropout=train, rngs=rngs, mutable=['moe_metrics'])
  moe_tree = variables.get('moe_metrics', {})
  if loss_fn is None:
    loss, metrics = compute_loss(config, logits, batch, moe_tree)
  else:
    loss, metrics = loss_fn(logits, moe_tree)
  metrics = {k: jnp.asarray(v, jnp.float32) for k, v in dict(metrics).items()}
  correct, count = token_accuracy(logits, batch)
  metrics.setdefault('accuracy', correct / jnp.maximum(count, 1.0))
  metrics['num_tokens'] = count
  metrics['loss'] = loss
  return loss, metrics


def _split_microbatches(batch: Batch, n: int) -> Batch:
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f'batch size {x.shape[0]} is not divisible by num_microbatches={n}')
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])
  return jax.tree.map(split, batch)


def make_train_step(model: nn.Module, config: config_lib.T5Config,
                    tx: optax.GradientTransformation, schedule: Callable,
                    frozen: Any, num_microbatches: int = 1, return_grads: bool = False,
                    forward: Optional[Callable] = None) -> Callable:
  """(state, batch, *constants) -> (state, metrics). `frozen` is the bool tree from
  freezing.frozen_mask.

  return_grads: the step returns ((state, metrics), grads) instead, grads shaped like the params
  (zero where frozen), for `step_buffers.jit_train_step`.
  forward: (params, batch, rng, *constants) -> (loss, metrics) of one (micro)batch in train
  mode; default `forward_metrics`. `constants` (e.g. a distillation teacher's params) are
  passed through unchanged and never differentiated.
  """
  if forward is None:
    forward = lambda p, b, r: forward_metrics(model, config, p, b, r, True)

  def grads_and_metrics(params, batch, rng, constants):
    grad_fn = jax.value_and_grad(lambda p, b, r: forward(p, b, r, *constants), has_aux=True)
    if num_microbatches == 1:
      (_, metrics), grads = grad_fn(params, batch, rng)
      return grads, metrics
    micro = _split_microbatches(batch, num_microbatches)

    def body(acc, xs):
      i, mb = xs
      (_, m), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
      acc_g, acc_m = acc
      return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_m, m)), None

    (_, m0), g0 = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
    zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
    (g, m), _ = jax.lax.scan(body, (zeros(g0), zeros(m0)),
                             (jnp.arange(num_microbatches), micro))
    scale = lambda t: jax.tree.map(lambda x: x / num_microbatches, t)
    metrics = scale(m)
    metrics['num_tokens'] = m['num_tokens']
    return scale(g), metrics

  def step(state: ts.TrainState, batch: Batch, *constants):
    rng = jax.random.fold_in(state.rng, state.step)
    grads, metrics = grads_and_metrics(state.params, batch, rng, constants)
    grads = jax.tree.map(lambda f, g: jnp.zeros_like(g) if f else g, frozen, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = freezing.keep_frozen(state.params, optax.apply_updates(state.params, updates),
                                  frozen)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['learning_rate'] = jnp.asarray(schedule(state.step), jnp.float32)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return ((new, metrics), grads) if return_grads else (new, metrics)

  return step


def make_eval_step(model: nn.Module, config: config_lib.T5Config) -> Callable:
  """(params, batch) -> metrics (eval mode: no dropout, eval capacity factor)."""
  def step(params, batch):
    return forward_metrics(model, config, params, batch, None, False)[1]
  return step
