"""Token embedding shared by encoder and decoder; `attend` gives tied output logits."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_flan import axes


class Embed(nn.Module):
  """Embedding table `embedding` <float32>[V, D] with axes ('vocab', 'embed').

  T5 initialises it with a unit normal (std 1.0); the tied output path divides by sqrt(D).
  """
  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  embedding_init: nn.initializers.Initializer = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = self.param(
        'embedding', nn.with_logical_partitioning(self.embedding_init, (axes.VOCAB, axes.EMBED)),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """<int32>[B, L] -> <dtype>[B, L, D]."""
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f'Embed expects integer token ids, got dtype {tokens.dtype}')
    table = jnp.asarray(self.embedding, self.dtype)
    return jnp.take(table, tokens, axis=0)

  def attend(self, query: jax.Array) -> jax.Array:
    """<float>[B, L, D] -> <float32>[B, L, V]: dot products with every embedding row."""
    table = jnp.asarray(self.embedding, jnp.float32)
    return tied_logits(query.astype(jnp.float32), table)


@jax.custom_vjp
def tied_logits(query: jax.Array, table: jax.Array) -> jax.Array:
  """<float32>[B, L, D] x <float32>[V, D] -> [B, L, V]; autodiff's values, another layout.

  The table gradient is formed as [D, V] and then transposed. Asked for [V, D] directly,
  XLA:CPU first copies the logit gradient, the step's largest tensor, into a transposed
  layout: 24 ms of a 0.9 s Switch step (V = 8192, B * L = 1024), against a 16x smaller
  transpose of the result here.
  """
  return jnp.einsum('BLD,VD->BLV', query, table)


def _tied_logits_fwd(query, table):
  return tied_logits(query, table), (query, table)


def _tied_logits_bwd(residuals, d_logits):
  query, table = residuals
  d_query = jnp.einsum('BLV,VD->BLD', d_logits, table)
  d_table = jnp.einsum('BLD,BLV->DV', query, d_logits).T
  return d_query, d_table


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)
