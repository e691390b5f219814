"""Expert feed-forward networks: parameters, and the two ways dispatchers evaluate them.

Parameters (module name 'experts' inside a MoeLayer), all float32:
  wi_0, wi_1  <float32>[E, D, F]  ('expert', 'embed', 'mlp')   gated, e.g. ('gelu', 'linear')
  wi          <float32>[E, D, F]  ('expert', 'embed', 'mlp')   one activation, e.g. ('relu',)
  wo          <float32>[E, F, D]  ('expert', 'mlp', 'embed')
Hidden activations are the product of act_i(x @ wi_i) over the configured activations
(T5.1.1 gated-GELU: gelu(x @ wi_0) * (x @ wi_1)), then expert dropout, then @ wo.

`ExpertFFN` is the pure, frozen bundle a dispatcher receives: weights, activations, dtype and
(in training) the expert-dropout rng. Dispatchers call either
  `ffn.batched(x <[E, G, C, D]>) -> <[E, G, C, D]>`   one einsum per weight, expert-batched, or
  `ffn.ragged(x <[N, D]>, group_sizes <int32>[E]) -> <[N, D]>`   rows sorted by expert,
so they never deal with activations or dropout themselves. An expert-parallel dispatcher that
shards E can build `ExpertFFN` from its local weight shards with `dataclasses.replace`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_flan import axes
from moe_flan.kernels.grouped_matmul import grouped_matmul
from moe_flan.moe import resharding
# One activation table and kernel naming for dense MLPs and experts (re-exported for dispatchers).
from moe_flan.layers.mlp import ACTIVATIONS, input_kernel_names  # noqa: F401


class ExpertParams(nn.Module):
  """Creates the expert kernels and returns them as a dict name -> array (see module doc)."""
  num_experts: int
  emb_dim: int
  mlp_dim: int
  activations: Sequence[str] = ('gelu', 'linear')

  @nn.compact
  def __call__(self) -> Dict[str, jax.Array]:
    for act in self.activations:
      if act not in ACTIVATIONS:
        raise ValueError(f'Bad config: MoeConfig.expert_activations={tuple(self.activations)!r}: '
                         f'unknown activation {act!r}; choose from {sorted(ACTIVATIONS)}')
    # Fan-in scaling per expert: the expert axis is a batch axis, not a fan.
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=1,
                                            out_axis=2, batch_axis=(0,))
    e, d, f = self.num_experts, self.emb_dim, self.mlp_dim
    weights = {}
    for name in input_kernel_names(self.activations):
      weights[name] = self.param(
          name, nn.with_logical_partitioning(init, (axes.EXPERT, axes.EMBED, axes.MLP)),
          (e, d, f), jnp.float32)
    weights['wo'] = self.param(
        'wo', nn.with_logical_partitioning(init, (axes.EXPERT, axes.MLP, axes.EMBED)),
        (e, f, d), jnp.float32)
    return weights


@dataclasses.dataclass(frozen=True)
class ExpertFFN:
  """Pure evaluation of the experts (see module doc).

  weights: dict from `ExpertParams`; dropout_rng: None disables expert dropout (eval).
  """
  weights: Dict[str, jax.Array]
  activations: Sequence[str]
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  dropout_rng: Optional[jax.Array] = None
  grouped_matmul: str = 'auto'     # grouped_matmul's implementation, for `ragged`

  def _dropout(self, h: jax.Array) -> jax.Array:
    if self.dropout_rng is None or self.dropout_rate <= 0.0:
      return h
    keep = jax.random.bernoulli(self.dropout_rng, 1.0 - self.dropout_rate, h.shape)
    return jnp.where(keep, h / (1.0 - self.dropout_rate), 0.0).astype(h.dtype)

  def _w(self, name: str) -> jax.Array:
    return jnp.asarray(self.weights[name], self.dtype)

  def batched(self, x: jax.Array) -> jax.Array:
    """x: <dtype>[E, G, C, D] (expert-major buffers) -> <dtype>[E, G, C, D]."""
    x = x.astype(self.dtype)
    h = None
    for act, name in zip(self.activations, input_kernel_names(self.activations)):
      a = ACTIVATIONS[act](jnp.einsum('EGCD,EDF->EGCF', x, self._w(name)))
      h = a if h is None else h * a
    h = resharding.constrain(h, (axes.EXPERT, axes.EXPERT_GROUP, axes.CAPACITY, axes.MLP))
    h = self._dropout(h)
    return jnp.einsum('EGCF,EFD->EGCD', h, self._w('wo'))

  def ragged(self, x: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """x: <dtype>[P, D], rows sorted by expert; group_sizes: <int32>[E] rows per expert.

    Rows past sum(group_sizes) come back as zeros. Uses `grouped_matmul` with the configured
    implementation (`MoeConfig.grouped_matmul`; 'auto': XLA, no platform kernel).
    """
    x = x.astype(self.dtype)
    h = None
    for act, name in zip(self.activations, input_kernel_names(self.activations)):
      a = ACTIVATIONS[act](grouped_matmul(x, self._w(name), group_sizes,
                                                      self.grouped_matmul))
      h = a if h is None else h * a
    h = self._dropout(h)
    y = grouped_matmul(h, self._w('wo'), group_sizes, self.grouped_matmul)
    valid = jnp.arange(x.shape[0]) < jnp.sum(group_sizes)
    return jnp.where(valid[:, None], y, 0.0)
