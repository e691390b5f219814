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
    return jnp.einsum('BLD,VD->BLV', query.astype(jnp.float32), table)
