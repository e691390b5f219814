"""Autoregressive inference with the key/value cache: greedy, temperature/top-k sampling, beam
search (t5x semantics, documented on `beam_search`), and `score_targets` for rank
classification.

All decoders start from token 0 (T5's decoder start token), stop a sequence at `eos_id`
(padding with 0 afterwards) and return decoded tokens without the start token.
`model` is an `EncoderDecoder`; `params` its parameter tree (boxed or not).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_flan.model import scan

NEG_INF = -1e10


def _variables(params: Any) -> dict:
  return {'params': nn.unbox(params)}


def init_cache(model: nn.Module, params: Any, encoded: jax.Array,
               encoder_input_tokens: jax.Array, max_decode_length: int) -> Any:
  """An all-zero 'cache' collection for decoding N sequences of up to `max_decode_length`.

  Shapes come from `jax.eval_shape` of the shape-defining decode pass, so nothing runs.
  """
  dummy = jnp.zeros((encoded.shape[0], max_decode_length), jnp.int32)
  _, shapes = jax.eval_shape(
      functools.partial(model.apply, method='decode', decode=True,
                        max_decode_length=max_decode_length, mutable=['cache']),
      _variables(params), encoded, encoder_input_tokens, dummy)
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])


def decode_step(model: nn.Module, params: Any, cache: Any, encoded: jax.Array,
                encoder_input_tokens: jax.Array, tokens: jax.Array, max_decode_length: int):
  """One decoding step: <int32>[N, 1] tokens -> (<float32>[N, V] next-token logits, cache)."""
  logits, mutated = model.apply(
      {**_variables(params), 'cache': cache}, encoded, encoder_input_tokens, tokens,
      decode=True, max_decode_length=max_decode_length, mutable=['cache'], method='decode')
  return logits[:, -1, :], mutated['cache']


def _encode(model, params, encoder_input_tokens):
  return model.apply(_variables(params), encoder_input_tokens, method='encode')


def _pick_token(logits: jax.Array, rng: Optional[jax.Array], temperature: float,
                topk: int) -> jax.Array:
  """<float32>[N, V] -> <int32>[N]: argmax when temperature == 0, else a (top-k) sample."""
  if temperature == 0.0 or rng is None:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if topk > 0:
    kth = jax.lax.top_k(logits, topk)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'max_decode_length', 'temperature',
                                             'topk'))
def temperature_sample(model: nn.Module, params: Any, encoder_input_tokens: jax.Array,
                       max_decode_length: int, rng: Optional[jax.Array] = None,
                       temperature: float = 1.0, topk: int = 0, eos_id: int = 1) -> jax.Array:
  """Samples <int32>[B, max_decode_length] (temperature 0 or rng None = greedy)."""
  if temperature < 0:
    raise ValueError(f'temperature={temperature!r} must be >= 0')
  batch = encoder_input_tokens.shape[0]
  encoded = _encode(model, params, encoder_input_tokens)
  cache = init_cache(model, params, encoded, encoder_input_tokens, max_decode_length)
  rng = jax.random.PRNGKey(0) if rng is None and temperature > 0 else rng

  def cond(state):
    i, _, _, _, done = state
    return jnp.logical_and(i < max_decode_length, jnp.logical_not(jnp.all(done)))

  def body(state):
    i, cache, out, previous, done = state
    logits, cache = decode_step(model, params, cache, encoded, encoder_input_tokens,
                                previous[:, None], max_decode_length)
    step_rng = None if rng is None else jax.random.fold_in(rng, i)
    token = jnp.where(done, 0, _pick_token(logits, step_rng, temperature, topk))
    out = out.at[:, i].set(token)
    return i + 1, cache, out, token, jnp.logical_or(done, token == eos_id)

  state = (jnp.array(0, jnp.int32), cache, jnp.zeros((batch, max_decode_length), jnp.int32),
           jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.bool_))
  return jax.lax.while_loop(cond, body, state)[2]


def greedy_decode(model: nn.Module, params: Any, encoder_input_tokens: jax.Array,
                  max_decode_length: int, eos_id: int = 1) -> jax.Array:
  """Greedy decoding: <int32>[B, Li] -> <int32>[B, max_decode_length] (0 after EOS)."""
  return temperature_sample(model, params, encoder_input_tokens, max_decode_length, None,
                            temperature=0.0, eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=('model',))
def score_targets(model: nn.Module, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
  """Sum of log p(target) per sequence, <float32>[B] (rank classification).

  batch: encoder_input_tokens, decoder_target_tokens, optionally decoder_input_tokens (else
  the targets shifted right), decoder_loss_weights (else targets > 0) and packing features.
  """
  targets = batch['decoder_target_tokens']
  inputs = batch.get('decoder_input_tokens')
  if inputs is None:   # shift right, starting from token 0
    inputs = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  weights = batch.get('decoder_loss_weights')
  weights = (targets > 0 if weights is None else weights).astype(jnp.float32)
  logits = model.apply(_variables(params), batch['encoder_input_tokens'], inputs, targets,
                       encoder_segment_ids=batch.get('encoder_segment_ids'),
                       decoder_segment_ids=batch.get('decoder_segment_ids'),
                       encoder_positions=batch.get('encoder_positions'),
                       decoder_positions=batch.get('decoder_positions'))
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_lp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(token_lp * weights, axis=-1)



def length_penalty(length, alpha: float):
  """GNMT/t5x brevity penalty ((5 + length) / 6) ** alpha; scores are log p / penalty."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(tree: Any, beam_index: jax.Array, batch: int, beams: int) -> Any:
  """Reorders the [B * W] axis of every cache array by <int32>[B, W] beam indices: the leading
  axis, or the second under a scanned stack (`T5Config.scan_layers`: [blocks, B * W, ...]);
  positions (equal for all beams) stay as they are."""
  flat = (jnp.arange(batch)[:, None] * beams + beam_index).reshape(-1)

  def gather(path, x):
    axis = int(any(getattr(k, 'key', None) == scan.SCANNED for k in path))
    if x.ndim > axis and x.shape[axis] == batch * beams:
      return jnp.take(x, flat, axis=axis)
    return x
  return jax.tree_util.tree_map_with_path(gather, tree)


def _beam_step(i, live_seqs, live_lp, fin_seqs, fin_scores, log_probs, alpha, eos_id):
  """One t5x beam-search step (see `beam_search`). log_probs: <float32>[B, W, V].

  Returns the new (live_seqs, live_lp, fin_seqs, fin_scores), the source beam of each new live
  beam <int32>[B, W] and its last token <int32>[B, W].
  """
  batch, beams, vocab = log_probs.shape
  candidates = (live_lp[:, :, None] + log_probs).reshape(batch, beams * vocab)
  top_lp, top_index = jax.lax.top_k(candidates, 2 * beams)              # [B, 2W]
  source, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
  seqs = jnp.take_along_axis(live_seqs, source[:, :, None], axis=1)
  seqs = seqs.at[:, :, i].set(token)
  is_eos = token == eos_id
  live_lp, pick = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_lp), beams)
  live_seqs = jnp.take_along_axis(seqs, pick[:, :, None], axis=1)
  # Candidates grown from the NEG_INF placeholder beams of the first step are not hypotheses
  # (t5x would flag them finished with a score near NEG_INF; only possible when V < 2W).
  real = top_lp > NEG_INF / 2
  new_scores = jnp.where(is_eos & real, top_lp / length_penalty(i + 1, alpha), NEG_INF)
  # Earlier finished beams come first, so they win ties (t5x's order).
  all_scores = jnp.concatenate([fin_scores, new_scores], axis=1)
  all_seqs = jnp.concatenate([fin_seqs, seqs], axis=1)
  fin_scores, fin_pick = jax.lax.top_k(all_scores, beams)
  fin_seqs = jnp.take_along_axis(all_seqs, fin_pick[:, :, None], axis=1)
  return (live_seqs, live_lp, fin_seqs, fin_scores, jnp.take_along_axis(source, pick, axis=1),
          jnp.take_along_axis(token, pick, axis=1))


def _finished(scores: jax.Array) -> jax.Array:
  """<bool>[B, W]: which finished slots hold a hypothesis (the others score NEG_INF)."""
  return scores > NEG_INF / 2


def beam_search_loop(step_fn: Callable[[jax.Array, Any], tuple[jax.Array, Any]], cache: Any,
                     batch: int, max_decode_length: int, beam_size: int = 4, alpha: float = 0.6,
                     eos_id: int | jax.Array = 1) -> tuple[jax.Array, jax.Array]:
  """The beam search of `beam_search` over any next-token function (traceable).

  step_fn(tokens <int32>[B * W, 1], cache) -> (logits <float>[B * W, V], cache): the next-token
  logits of each beam (rows b * W + w) after feeding it `tokens`; token 0 starts every beam.
  Arrays in `cache` with a leading B * W axis follow their beam when beams are reordered;
  other leaves (e.g. scalar positions) are passed on unchanged.
  Returns (tokens <int32>[B, W, max_decode_length], scores <float32>[B, W]), best first.
  """
  if alpha < 0:
    raise ValueError(f'alpha={alpha!r} must be >= 0 (the early stop assumes it)')
  if beam_size < 1:
    raise ValueError(f'beam_size={beam_size!r} must be >= 1')
  beams, length = beam_size, max_decode_length

  def cond(state):
    i, _, live_lp, _, fin_scores, _, _ = state
    # Log-probs only fall and the penalty only grows with length (alpha >= 0), so no live beam
    # can end above its log-prob / penalty(max length); t5x stops once every finished slot is
    # filled and its worst score beats that bound for every input.
    best_live = live_lp[:, :1] / length_penalty(length, alpha)
    worst_finished = jnp.where(_finished(fin_scores), fin_scores[:, -1:], NEG_INF)
    settled = jnp.all(worst_finished > best_live)
    return jnp.logical_and(i < length, jnp.logical_not(settled))

  def body(state):
    i, live_seqs, live_lp, fin_seqs, fin_scores, last, cache = state
    logits, cache = step_fn(last.reshape(batch * beams, 1), cache)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, beams, -1)
    live_seqs, live_lp, fin_seqs, fin_scores, source, last = _beam_step(
        i, live_seqs, live_lp, fin_seqs, fin_scores, log_probs, alpha, eos_id)
    return (i + 1, live_seqs, live_lp, fin_seqs, fin_scores, last,
            _gather_beams(cache, source, batch, beams))

  live_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (beams - 1), jnp.float32), (batch, 1))
  seqs = jnp.zeros((batch, beams, length), jnp.int32)
  state = (jnp.array(0, jnp.int32), seqs, live_lp, seqs,
           jnp.full((batch, beams), NEG_INF, jnp.float32), jnp.zeros((batch, beams), jnp.int32),
           cache)
  _, live_seqs, live_lp, fin_seqs, fin_scores, _, _ = jax.lax.while_loop(cond, body, state)
  any_finished = jnp.any(_finished(fin_scores), axis=1, keepdims=True)
  scores = jnp.where(any_finished, fin_scores, live_lp)
  tokens = jnp.where(any_finished[:, :, None], fin_seqs, live_seqs)
  return tokens, scores


@functools.partial(jax.jit, static_argnames=('model', 'max_decode_length', 'beam_size',
                                             'alpha'))
def beam_search(model: nn.Module, params: Any, encoder_input_tokens: jax.Array,
                max_decode_length: int, beam_size: int = 4, alpha: float = 0.6,
                eos_id: int = 1) -> tuple[jax.Array, jax.Array]:
  """Beam search with t5x's semantics (t5x/decoding.py `beam_search`), best beam first.

  Each step extends the W live beams by every token and ranks the W * V candidates by their
  summed log-probs; only the top 2W candidates are looked at:
  * a candidate among them that ends in EOS (at any of the 2W ranks, also below rank W) is a
    finished hypothesis with score = log p / length_penalty(length, alpha), length counting
    EOS; the W best finished hypotheses so far are kept (earlier ones win ties). An EOS ranked
    below the top 2W is never considered;
  * the W best candidates among them that do not end in EOS are the next live beams.
  The search ends after `max_decode_length` steps, or earlier once every input has W finished
  hypotheses whose worst score beats the best live log-prob / length_penalty(max length), which
  no live beam can improve on. The result is the W finished hypotheses when an input has at least
  one: then a live beam cut at the length limit is never returned, even when its score would be
  higher. Only an input with no finished hypothesis returns its live beams, with their raw
  summed log-probs as scores (no length penalty), as t5x does.

  Where Hugging Face `generate(num_beams=W)` differs: it accepts EOS only among the top W
  candidates, and at the length limit it scores the top W candidates as finished, so they compete
  with (and can beat) earlier finished hypotheses. Its `length_penalty` divides by
  length ** penalty instead; with alpha = length_penalty = 0 both score the summed log-probs.
  Where t5x differs: scores and beams come best first here (t5x returns them in ascending order),
  and when V < 2W the first step's placeholder beams never yield hypotheses.

  Returns (tokens <int32>[B, W, max_decode_length] without the start token and 0 after EOS,
  scores <float32>[B, W]); finished slots never filled (fewer than W hypotheses) score NEG_INF.
  """
  batch, beams, length = encoder_input_tokens.shape[0], beam_size, max_decode_length
  encoded = jnp.repeat(_encode(model, params, encoder_input_tokens), beams, axis=0)
  flat_tokens = jnp.repeat(encoder_input_tokens, beams, axis=0)
  cache = init_cache(model, params, encoded, flat_tokens, length)

  def step_fn(tokens, cache):
    return decode_step(model, params, cache, encoded, flat_tokens, tokens, length)

  return beam_search_loop(step_fn, cache, batch, length, beam_size, alpha, eos_id)
