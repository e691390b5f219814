"""Slow, obviously-correct MoE reference: routing by Python loops, experts by a loop over E.

Independent of moe_flan.moe: it re-derives the routing decisions from the router
probabilities in numpy (following the documented priority rules), then evaluates every expert
on every token and keeps each token's routed experts weighted by their router probability.
Routing decisions are piecewise constant, so the differentiable part (`reference_forward`)
takes them as a fixed mask and gradients flow through probabilities and expert weights.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def softmax_np(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def tokens_choose_keep(probs: np.ndarray, real: np.ndarray, k: int, capacity: int,
                       batch_prioritized: bool = False) -> np.ndarray:
  """probs [G, T, E], real [G, T] -> keep [G, T, E] bool: (token, expert) pairs processed."""
  g_count, t_count, e_count = probs.shape
  keep = np.zeros(probs.shape, bool)
  for g in range(g_count):
    choices = [list(np.argsort(-probs[g, t], kind='stable')[:k]) for t in range(t_count)]
    order = [t for t in range(t_count) if real[g, t]]
    if batch_prioritized:
      order = sorted(order, key=lambda t: -probs[g, t].max())
    load = [0] * e_count
    for j in range(k):            # every token's j-th choice before any (j+1)-th choice
      for t in order:
        e = choices[t][j]
        if load[e] < capacity:
          keep[g, t, e] = True
          load[e] += 1
  return keep


def experts_choose_keep(probs: np.ndarray, real: np.ndarray, capacity: int) -> np.ndarray:
  """Each expert keeps its `capacity` real tokens of highest probability."""
  keep = np.zeros(probs.shape, bool)
  for g in range(probs.shape[0]):
    for e in range(probs.shape[2]):
      candidates = sorted((t for t in range(probs.shape[1]) if real[g, t]),
                          key=lambda t: -probs[g, t, e])
      for t in candidates[:capacity]:
        keep[g, t, e] = True
  return keep


def expert_ffn(weights: dict, e: int, x: jax.Array, activations) -> jax.Array:
  """Expert e on tokens x [..., D] (gated if several activations)."""
  acts = {'gelu': lambda v: jax.nn.gelu(v, approximate=True), 'relu': jax.nn.relu,
          'linear': lambda v: v}
  names = ['wi'] if len(activations) == 1 else [f'wi_{i}' for i in range(len(activations))]
  h = 1.0
  for act, name in zip(activations, names):
    h = h * acts[act](x @ weights[name][e])
  return h @ weights['wo'][e]


def reference_forward(params: dict, x: jax.Array, keep: np.ndarray, activations) -> jax.Array:
  """params {'router': {'kernel'}, 'experts': {...}}; x [G, T, D]; keep [G, T, E] -> [G, T, D]."""
  logits = x.astype(jnp.float32) @ params['router']['kernel']
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.zeros_like(x)
  for e in range(keep.shape[-1]):
    weight = jnp.where(keep[..., e], probs[..., e], 0.0)
    out = out + weight[..., None] * expert_ffn(params['experts'], e, x, activations)
  return out


def reference_keep(params: dict, x, real, router_type: str, k: int, capacity: int,
                   batch_prioritized: bool = False) -> np.ndarray:
  """Routing decisions [G, T, E] for concrete params and x [G, T, D]."""
  logits = np.asarray(x, np.float64) @ np.asarray(params['router']['kernel'], np.float64)
  probs = softmax_np(logits)
  real = np.asarray(real, bool)
  if router_type == 'experts_choose':
    return experts_choose_keep(probs, real, capacity)
  return tokens_choose_keep(probs, real, k, capacity, batch_prioritized)
