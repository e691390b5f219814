"""The T5.1.1 encoder-decoder (dense, or sparse FLAN-MoE when `config.moe` is set)."""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_flan.config import T5Config
from moe_flan.layers.embedding import Embed
from moe_flan.model.decoder import Decoder
from moe_flan.model.encoder import Encoder


class EncoderDecoder(nn.Module):
  """Params: token_embedder/embedding [V, D], encoder/..., decoder/... (see CONTRACT.md).

  Token 0 is padding (and the decoder's start token). RNG stream: 'dropout' only, used when
  `enable_dropout=True` (training mode: dropout, expert dropout, router jitter, train capacity).
  """
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(num_embeddings=cfg.vocab_size, features=cfg.emb_dim,
                                dtype=jnp.dtype(cfg.dtype))
    self.encoder = Encoder(cfg, shared_embedding=self.token_embedder)
    self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)

  def encode(self, encoder_input_tokens: jax.Array,
             encoder_segment_ids: Optional[jax.Array] = None,
             encoder_positions: Optional[jax.Array] = None,
             enable_dropout: bool = False) -> jax.Array:
    """<int32>[B, Li] -> <dtype>[B, Li, D]."""
    _check_tokens('encoder_input_tokens', encoder_input_tokens)
    return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                        enable_dropout)

  def decode(self, encoded: jax.Array, encoder_input_tokens: jax.Array,
             decoder_input_tokens: jax.Array,
             decoder_target_tokens: Optional[jax.Array] = None,
             encoder_segment_ids: Optional[jax.Array] = None,
             decoder_segment_ids: Optional[jax.Array] = None,
             decoder_positions: Optional[jax.Array] = None,
             enable_dropout: bool = False, decode: bool = False,
             max_decode_length: Optional[int] = None) -> jax.Array:
    """Decoder logits <float32>[B, Lt, V] for <int32>[B, Lt] inputs, given `encoded` [B, Li, D].

    decode=True: the first call (no 'cache' yet; inputs of the full max length) creates the
    cache; later calls feed one token <int32>[B, 1] per step and need `max_decode_length`.
    """
    _check_tokens('decoder_input_tokens', decoder_input_tokens)
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens,
                        decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                        decoder_positions, enable_dropout=enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array,
               decoder_target_tokens: Optional[jax.Array] = None,
               encoder_segment_ids: Optional[jax.Array] = None,
               decoder_segment_ids: Optional[jax.Array] = None,
               encoder_positions: Optional[jax.Array] = None,
               decoder_positions: Optional[jax.Array] = None,
               enable_dropout: bool = False, decode: bool = False,
               max_decode_length: Optional[int] = None) -> jax.Array:
    """Teacher-forced logits <float32>[B, Lt, V] (packed inputs: pass segment ids and positions)."""
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                       decoder_positions, enable_dropout, decode, max_decode_length)


def _check_tokens(name: str, tokens: jax.Array):
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f'{name} must be <int>[batch, length]; got {tokens.dtype}{tokens.shape}')


def abstract_params(config: T5Config) -> Any:
  """Boxed (`nn.LogicallyPartitioned`) ShapeDtypeStructs of `EncoderDecoder(config)`'s params.

  Nothing is computed or compiled (`jax.eval_shape`); `nn.meta.unbox` gives the bare shapes.
  Treat the result as read-only: it is cached per (hashable) config.
  """
  try:
    hash(config)
  except TypeError:  # a list bound to a Sequence field: compute without the cache
    return _abstract_params(config)
  return _cached_abstract_params(config)


def _abstract_params(config: T5Config) -> Any:
  def init():
    # Everything, the key included, is created inside eval_shape: nothing touches a device, so
    # this also works under a mesh of compile-only devices (a TPU topology on a CPU host).
    key = jax.random.key(0)
    tokens = jnp.ones((1, 1), jnp.int32)
    return EncoderDecoder(config).init({'params': key, 'dropout': key}, tokens, tokens, tokens,
                                       enable_dropout=False)['params']
  return jax.eval_shape(init)


_cached_abstract_params = functools.lru_cache(maxsize=32)(_abstract_params)
