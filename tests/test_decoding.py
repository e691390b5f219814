"""Cached decoding equals the full forward pass; greedy, sampling and beam search checked
against brute force and self-consistency; score_targets against numpy."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan import decoding
from moe_flan.model import EncoderDecoder
from t5_fixtures import log_softmax64, random_params, random_tokens, tiny_config


def _shift_right(targets):
  return np.pad(np.asarray(targets), ((0, 0), (1, 0)))[:, :-1]


@functools.lru_cache(maxsize=None)
def _setup(moe: bool = False, vocab_size: int = 32):
  model = EncoderDecoder(tiny_config(moe=moe, vocab_size=vocab_size))
  params = random_params(model, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32),
                         seed=3)
  forward = jax.jit(lambda p, enc, dec: model.apply({'params': p}, enc, dec))
  return model, params, forward


@pytest.mark.parametrize('moe', [False, True])
def test_cached_steps_equal_full_forward(moe):
  model, params, forward = _setup(moe)
  rng = np.random.RandomState(0)
  enc = random_tokens(rng, (2, 7), 32)
  enc[1, 5:] = 0
  targets = random_tokens(rng, (2, 5), 32)
  full = np.asarray(forward(params, enc, _shift_right(targets)))
  encoded = jax.jit(lambda p, e: model.apply({'params': p}, e, method='encode'))(params, enc)
  cache = decoding.init_cache(model, params, encoded, enc, 5)
  step = jax.jit(decoding.decode_step, static_argnums=(0, 6))
  inputs = _shift_right(targets)
  for i in range(5):
    logits, cache = step(model, params, cache, encoded, enc, inputs[:, i:i + 1], 5)
    np.testing.assert_allclose(logits, full[:, i], rtol=1e-4, atol=1e-4, err_msg=f'step {i}')


def _check_prefix_consistent(forward, params, enc, out, eos_id):
  """Every emitted token is the argmax (greedy) of the full forward pass given its prefix."""
  full = np.asarray(forward(params, enc, _shift_right(out)))
  for b in range(out.shape[0]):
    row = list(out[b])
    end = row.index(eos_id) + 1 if eos_id in row else len(row)
    np.testing.assert_array_equal(np.argmax(full[b, :end], -1), out[b, :end])
    assert not np.any(out[b, end:]), 'tokens after EOS must be padding'


def test_greedy_is_deterministic_consistent_and_stops_at_eos():
  model, params, forward = _setup()
  enc = random_tokens(np.random.RandomState(1), (2, 6), 32)
  out = np.asarray(decoding.greedy_decode(model, params, enc, 6, eos_id=1))
  np.testing.assert_array_equal(out, decoding.greedy_decode(model, params, enc, 6, eos_id=1))
  _check_prefix_consistent(forward, params, enc, out, eos_id=1)
  eos = int(out[0, 2])   # pretend a token the model emits is EOS: decoding must stop there
  assert eos > 1, out
  stopped = np.asarray(decoding.greedy_decode(model, params, enc, 6, eos_id=eos))
  first = list(out[0]).index(eos)
  np.testing.assert_array_equal(stopped[0, :first + 1], out[0, :first + 1])
  assert not np.any(stopped[0, first + 1:])
  _check_prefix_consistent(forward, params, enc, stopped, eos_id=eos)


def test_sampling_top1_is_greedy_and_topk_respected():
  model, params, forward = _setup()
  enc = random_tokens(np.random.RandomState(2), (2, 6), 32)
  greedy = decoding.greedy_decode(model, params, enc, 6)
  top1 = decoding.temperature_sample(model, params, enc, 6, jax.random.PRNGKey(0),
                                     temperature=1.0, topk=1)
  np.testing.assert_array_equal(top1, greedy)
  samples = [np.asarray(decoding.temperature_sample(model, params, enc, 6, jax.random.PRNGKey(s),
                                                    temperature=5.0, topk=3)) for s in (1, 1, 2)]
  np.testing.assert_array_equal(samples[0], samples[1])
  assert not np.array_equal(samples[0], samples[2])
  for out in samples:
    full = np.asarray(forward(params, enc, _shift_right(out)))
    top3 = np.argsort(full, -1)[..., -3:]
    for b in range(2):
      row = list(out[b])
      end = row.index(1) + 1 if 1 in row else len(row)
      assert all(out[b, i] in top3[b, i] for i in range(end))


def test_beam_search_is_exact_when_beams_cover_everything():
  vocab, length, alpha = 4, 3, 0.6
  model, params, forward = _setup(vocab_size=vocab)
  enc = random_tokens(np.random.RandomState(3), (1, 5), vocab)
  tokens, scores = decoding.beam_search(model, params, enc, length, beam_size=27, alpha=alpha)
  # Brute force: every sequence ending at its first EOS (token 1), scored with the penalty.
  want = []
  for n in range(1, length + 1):
    for prefix in itertools.product([0, 2, 3], repeat=n - 1):
      seq = np.array(list(prefix) + [1] + [0] * (length - n), np.int32)[None]
      logp = log_softmax64(forward(params, enc, _shift_right(seq)))[0]
      total = sum(logp[i, seq[0, i]] for i in range(n))
      want.append((total / ((5 + n) / 6) ** alpha, tuple(seq[0])))
  want.sort(reverse=True)
  got_scores = np.asarray(scores[0, :len(want)])
  np.testing.assert_allclose(got_scores, [w[0] for w in want], rtol=1e-4, atol=1e-5)
  assert tuple(np.asarray(tokens[0, 0])) == want[0][1]
  assert np.all(np.asarray(scores[0, len(want):]) < -1e8)   # nothing else is a hypothesis


def test_one_beam_without_length_penalty_is_greedy():
  model, params, _ = _setup()
  enc = random_tokens(np.random.RandomState(4), (2, 6), 32)
  tokens, _ = decoding.beam_search(model, params, enc, 6, beam_size=1, alpha=0.0)
  np.testing.assert_array_equal(tokens[:, 0], decoding.greedy_decode(model, params, enc, 6))


def test_score_targets_matches_numpy():
  model, params, forward = _setup()
  rng = np.random.RandomState(5)
  enc = random_tokens(rng, (2, 6), 32)
  targets = random_tokens(rng, (2, 4), 32)
  targets[1, 2:] = 0
  got = decoding.score_targets(model, params, {'encoder_input_tokens': enc,
                                               'decoder_target_tokens': targets})
  # Row 1's padding: with targets given, padded queries are masked but real ones are not
  # affected, so the forward pass without targets gives the same real-token logits.
  logp = log_softmax64(forward(params, enc, _shift_right(targets)))
  want = [sum(logp[b, i, targets[b, i]] for i in range(4) if targets[b, i] > 0)
          for b in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_bad_decoding_settings_raise():
  model, params, _ = _setup()
  enc = jnp.ones((1, 3), jnp.int32)
  with pytest.raises(ValueError, match='alpha'):
    decoding.beam_search(model, params, enc, 3, beam_size=2, alpha=-1.0)
  with pytest.raises(ValueError, match='temperature'):
    decoding.temperature_sample(model, params, enc, 3, jax.random.PRNGKey(0), temperature=-1.0)
