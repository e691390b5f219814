"""Rank-classification scoring with each prompt encoded once.

Options of one multiple-choice question share its prompt. `score_rows` runs the encoder on the
P distinct prompts of a batch only, gathers each (prompt, option) row's encoder output by
`prompt_index`, and runs the decoder on the N option rows: encoder work P instead of N (a
K-option question costs one encoding, not K).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=('model',))
def score_rows(model: nn.Module, params: Any, prompts: jax.Array, prompt_index: jax.Array,
               targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sum of log p(target | prompt) per row, and the number of target tokens it sums over.

  Args:
    model: an EncoderDecoder.
    params: its parameters (boxed or not).
    prompts: <int32>[P, Li] distinct prompts (all-zero rows are padding).
    prompt_index: <int32>[N] which prompt each row continues.
    targets: <int32>[N, Lt] option tokens with EOS, 0-padded (all-zero rows are padding).

  Returns:
    (<float32>[N] log-likelihood, <int32>[N] target token count); 0 for padding rows.
  """
  variables = {'params': nn.unbox(params)}
  encoded = model.apply(variables, prompts, method='encode')             # [P, Li, D]
  row_encoded = jnp.take(encoded, prompt_index, axis=0)                   # [N, Li, D]
  row_prompts = jnp.take(prompts, prompt_index, axis=0)                   # [N, Li]
  decoder_inputs = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]             # shift right, BOS 0
  logits = model.apply(variables, row_encoded, row_prompts, decoder_inputs, targets,
                       method='decode')                                   # [N, Lt, V]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_lp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  weights = targets > 0
  return jnp.sum(jnp.where(weights, token_lp, 0.0), axis=-1), jnp.sum(weights, axis=-1)


def group_rows(encoder_tokens: np.ndarray) -> list[tuple[int, int]]:
  """(start, count) of each run of consecutive rows with the same prompt <int32>[N, Li]."""
  groups: list[tuple[int, int]] = []
  for i in range(len(encoder_tokens)):
    if groups and np.array_equal(encoder_tokens[i], encoder_tokens[groups[-1][0]]):
      groups[-1] = (groups[-1][0], groups[-1][1] + 1)
    else:
      groups.append((i, 1))
  return groups


def pack_groups(groups: list[tuple[int, int]], rows_per_batch: int
                ) -> list[list[tuple[int, int]]]:
  """Greedy batches of whole prompt groups, each at most `rows_per_batch` rows; a group larger
  than a batch is split (its prompt is then encoded once per batch it spans)."""
  batches: list[list[tuple[int, int]]] = [[]]
  used = 0
  for start, count in groups:
    if used and count <= rows_per_batch < used + count:   # keep the group whole
      batches.append([])
      used = 0
    while count:
      if used == rows_per_batch:
        batches.append([])
        used = 0
      take = min(count, rows_per_batch - used)
      batches[-1].append((start, take))
      used += take
      start, count = start + take, count - take
  return [b for b in batches if b]
