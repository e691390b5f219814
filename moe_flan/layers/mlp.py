"""Feed-forward block: gated-GELU (T5.1.1: wi_0, wi_1, wo) or a single activation (wi, wo)."""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_flan import axes
from moe_flan.layers.dense import DenseGeneral, fan_in_normal

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=True),   # HF 'gelu_new', flaxformer 'gelu'
    'gelu_exact': lambda x: jax.nn.gelu(x, approximate=False),
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
    'linear': lambda x: x,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}')
  return ACTIVATIONS[name]


def input_kernel_names(activations: Sequence[str]) -> tuple[str, ...]:
  """'wi' for one activation, else 'wi_0', 'wi_1', ... (t5x/HF names)."""
  if len(activations) == 1:
    return ('wi',)
  return tuple(f'wi_{i}' for i in range(len(activations)))


class MlpBlock(nn.Module):
  """`wo(dropout(prod_i act_i(wi_i x)))`: kernels wi* [D, F] ('embed','mlp'), wo [F, D]."""
  intermediate_dim: int
  activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, enable_dropout: bool = False) -> jax.Array:
    """<float>[B, L, D] -> <dtype>[B, L, D]."""
    d_model = x.shape[-1]
    hidden = None
    for name, act in zip(input_kernel_names(self.activations), self.activations):
      h = DenseGeneral(features=(self.intermediate_dim,), kernel_axes=(axes.EMBED, axes.MLP),
                       kernel_init=fan_in_normal(d_model, truncated=True), dtype=self.dtype,
                       name=name)(x)
      h = get_activation(act)(h)
      hidden = h if hidden is None else hidden * h
    hidden = nn.with_logical_constraint(hidden, (axes.BATCH, axes.LENGTH, axes.MLP))
    # As t5x: one dropout mask per (batch, feature), shared along the sequence.
    hidden = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(
        hidden, deterministic=not enable_dropout)
    out = DenseGeneral(features=(d_model,), kernel_axes=(axes.MLP, axes.EMBED),
                       kernel_init=fan_in_normal(self.intermediate_dim, truncated=True),
                       dtype=self.dtype, name='wo')(hidden)
    return nn.with_logical_constraint(out, (axes.BATCH, axes.LENGTH, axes.EMBED))
