"""Beam search follows t5x's rules: hand-built next-token tables for the rules where t5x and
Hugging Face differ, random tables against a plain-Python reference of the rules, and a tiny
imported T5 against HF `generate(num_beams=4, length_penalty=0)` where both rules agree."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan import decoding
import convert_fixtures
from t5_fixtures import log_softmax64

EOS = 1


def _penalty(length, alpha):
  return ((5.0 + length) / 6.0) ** alpha


def reference_beam_search(log_probs_of, beams, length, eos, alpha=0.0, rule='t5x'):
  """Plain-Python beam search for one input: [(score, tokens)], best first.

  log_probs_of(prefix tuple) -> <float64>[V]. rule 't5x': an EOS among the top 2W candidates
  finishes a hypothesis; at the end the finished ones are returned when there is one, else the
  live beams with raw log-probs. rule 'hf' (alpha 0 only): only an EOS among the top W
  candidates finishes, and at the last step the top W candidates all finish.
  """
  live, done = [((), 0.0)], []
  for i in range(length):
    cands = sorted(((lp + x, seq + (v,)) for seq, lp in live
                    for v, x in enumerate(log_probs_of(seq))), key=lambda c: -c[0])[:2 * beams]
    for rank, (lp, seq) in enumerate(cands):
      ends = seq[-1] == eos and (rule == 't5x' or rank < beams)
      if ends or (rule == 'hf' and i == length - 1 and rank < beams):
        done.append((lp / _penalty(i + 1, alpha), seq))
    live = [(seq, lp) for lp, seq in cands if seq[-1] != eos][:beams]
    done = sorted(done, key=lambda d: -d[0])[:beams]    # stable: earlier hypotheses win ties
    if len(done) == beams and live and done[-1][0] > live[0][1] / _penalty(length, alpha):
      break
  return done if done else [(lp, seq) for seq, lp in live]


def _padded(seq, length):
  return tuple(seq) + (0,) * (length - len(seq))


def _check_against_reference(tokens, scores, want, length, atol=1e-5):
  """Our (tokens <[W, L]>, scores <[W]>) for one input equal the reference's hypotheses."""
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  got = [tuple(int(t) for t in row) for row in tokens[:len(want)]]
  assert got == [_padded(seq, length) for _, seq in want]
  np.testing.assert_allclose(scores[:len(want)], [s for s, _ in want], rtol=1e-5, atol=atol)
  assert np.all(scores[len(want):] < -1e9)             # unfilled finished slots


# --- A next-token table model: logits depend on (input, step, last token) ----------------------

@functools.partial(jax.jit, static_argnames=('length', 'beams', 'alpha'))
def _table_beam_search(table, length, beams, alpha, eos):
  """Our beam search over <float32>[B, L, V, V] next-token logits (start token 0)."""
  batch = table.shape[0]
  row_input = jnp.arange(batch * beams) // beams

  def step_fn(tokens, cache):
    return table[row_input, cache['step'], tokens[:, 0]], {'step': cache['step'] + 1}

  return decoding.beam_search_loop(step_fn, {'step': jnp.array(0)}, batch, length, beams, alpha,
                                   eos)


def _table_oracle(table):
  table = np.asarray(table, np.float64)
  return lambda seq: log_softmax64(table[len(seq), seq[-1] if seq else 0])


def _table(first, then, length=3, vocab=8):
  """One input's table: logits `first` {token: logit} at step 0; afterwards every token's
  logit is `then` {token: logit} whatever came before; unnamed tokens get -30 (so log-probs
  are these logits up to a shared shift of about 1e-13)."""
  table = np.full((length, vocab, vocab), -30.0, np.float32)
  for t, lp in first.items():
    table[0, :, t] = lp
  for t, lp in then.items():
    table[1:, :, t] = lp
  return table


def test_eos_among_the_top_2w_candidates_finishes_even_below_rank_w():
  """W = 2. Step 0: tokens 2, 3 lead; EOS is 3rd (rank 2 < 2W): a finished hypothesis, and the
  best, since every longer sequence loses >= 1.5 per step. (HF only takes EOS among the top W
  candidates, and would return the two length-3 beams.)"""
  table = _table({2: -0.1, 3: -0.2, EOS: -0.7, 4: -0.9}, {5: -1.5, 6: -1.65})
  tokens, scores = _table_beam_search(jnp.asarray(table[None]), 3, 2, 0.0, EOS)
  oracle = _table_oracle(table)
  want = reference_beam_search(oracle, 2, 3, EOS)
  assert want[0][1] == (EOS,)
  _check_against_reference(tokens[0], scores[0], want, 3)
  hf = reference_beam_search(oracle, 2, 3, EOS, rule='hf')
  assert (EOS,) not in [seq for _, seq in hf]         # the case separates the two rules


def test_eos_below_the_top_2w_candidates_is_never_considered():
  """Same, but EOS 5th (rank 4 = 2W): not a hypothesis although it would score best; the
  live beams run to the length limit and are returned with raw summed log-probs."""
  table = _table({2: -0.1, 3: -0.2, 4: -0.3, 6: -0.4, EOS: -0.7}, {5: -1.5, 6: -1.65})
  tokens, scores = _table_beam_search(jnp.asarray(table[None]), 3, 2, 0.6, EOS)
  oracle = _table_oracle(table)
  want = reference_beam_search(oracle, 2, 3, EOS, alpha=0.6)
  assert want[0][1] == (2, 5, 5) and EOS not in np.asarray(tokens)
  raw = sum(oracle((2, 5, 5)[:i])[t] for i, t in enumerate((2, 5, 5)))
  np.testing.assert_allclose(scores[0, 0], raw, rtol=1e-5)   # summed log-probs, no penalty
  _check_against_reference(tokens[0], scores[0], want, 3)


def test_a_finished_hypothesis_is_returned_over_higher_scoring_beams_at_the_length_limit():
  """W = 2, length 3. EOS at step 0 scores -2.0 (rank 1); the live beams reach the limit at
  -0.1 - 0.2 and -0.1 - 0.3 - ... > -2.0, yet t5x returns the finished hypothesis (and its
  unfilled slot) because one exists; HF would rank the length-limited beams first."""
  table = _table({2: -0.1, EOS: -2.0, 3: -2.5}, {4: -0.1, 5: -0.25})
  tokens, scores = _table_beam_search(jnp.asarray(table[None]), 3, 2, 0.0, EOS)
  oracle = _table_oracle(table)
  want = reference_beam_search(oracle, 2, 3, EOS)
  assert [seq for _, seq in want] == [(EOS,)]
  _check_against_reference(tokens[0], scores[0], want, 3)
  hf = reference_beam_search(oracle, 2, 3, EOS, rule='hf')
  assert hf[0][1] == (2, 4, 4) and hf[0][0] > want[0][0]


def test_search_stops_early_once_no_live_beam_can_win():
  """Both finished slots filled after step 1 with scores no live beam can reach: the loop runs
  2 steps of 6 (counted by the step function) and gives the reference's answer."""
  table = _table({EOS: -0.1, 2: -0.2, 3: -0.3}, {EOS: -0.1, 4: -5.0, 5: -6.0}, length=6)
  steps = []

  def step_fn(tokens, cache):
    jax.debug.callback(lambda: steps.append(1))
    return jnp.asarray(table)[cache['step'], tokens[:, 0]], {'step': cache['step'] + 1}

  tokens, scores = jax.jit(lambda: decoding.beam_search_loop(
      step_fn, {'step': jnp.array(0)}, 1, 6, 2, 0.0, EOS))()
  want = reference_beam_search(_table_oracle(table), 2, 6, EOS)
  assert [seq for _, seq in want] == [(EOS,), (2, EOS)]
  _check_against_reference(tokens[0], scores[0], want, 6)
  assert len(steps) == 2, steps


@pytest.mark.parametrize('alpha', [0.0, 0.6])
def test_random_tables_match_the_reference(alpha):
  """40 random inputs (V = 12, EOS from rare to frequent), W = 3, length 5: the reference's
  hypotheses and scores, over inputs that end with full, partial and no finished sets, and
  (alpha 0) inputs where HF's rules would answer differently."""
  rng = np.random.RandomState(int(alpha * 10))
  table = rng.normal(0, 2.0, (40, 5, 12, 12)).astype(np.float32)
  table[..., EOS] += rng.uniform(-8.0, 2.0, (40, 1, 1))
  tokens, scores = _table_beam_search(jnp.asarray(table), 5, 3, alpha, EOS)
  kinds, hf_differs = set(), 0
  for b in range(40):
    oracle = _table_oracle(table[b])
    want = reference_beam_search(oracle, 3, 5, EOS, alpha)
    _check_against_reference(tokens[b], scores[b], want, 5, atol=1e-4)
    kinds.add(min(len(want), 2) if want[0][1][-1] == EOS else 0)
    if alpha == 0:
      hf_differs += reference_beam_search(oracle, 3, 5, EOS, rule='hf') != want
  assert kinds == {0, 1, 2}, kinds
  assert alpha or hf_differs >= 3, hf_differs


# --- A tiny imported T5 against Hugging Face `generate` -----------------------------------------

def _hf_t5(transformers):
  cfg = transformers.T5Config(
      vocab_size=64, d_model=16, d_kv=4, num_heads=4, relative_attention_num_buckets=8,
      relative_attention_max_distance=16, decoder_start_token_id=0, dropout_rate=0.0, d_ff=32,
      num_layers=2, feed_forward_proj='gated-gelu', tie_word_embeddings=False)
  model = transformers.T5ForConditionalGeneration(cfg)
  return convert_fixtures.randomise_hf(model)


def test_imported_t5_matches_hf_generate_where_both_rules_agree():
  """W = 4, length 5, alpha = length_penalty = 0, 6 prompts x 2 EOS ids. The plain-Python
  reference, fed HF's own log-probs, reproduces HF `generate` under HF's rules and ours under
  t5x's; wherever the two rules give the same hypotheses (runs with no EOS, and with 4 finished
  ones: 7 of the 12 cases), our beam search returns exactly HF's sequences and scores."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from moe_flan.convert import hf_checkpoint  # pylint: disable=g-import-not-at-top
  from moe_flan.model import EncoderDecoder  # pylint: disable=g-import-not-at-top
  beams, length = 4, 5
  hf = _hf_t5(transformers)
  config, params = hf_checkpoint.import_hf(hf)
  model = EncoderDecoder(config)
  enc = np.random.default_rng(0).integers(2, 64, (6, 7))
  enc[1, 4:] = 0

  @functools.lru_cache(maxsize=None)
  def log_probs_of(b, seq):
    with torch.no_grad():
      logits = hf(input_ids=torch.tensor(enc[b:b + 1]), attention_mask=torch.tensor(enc[b:b + 1] > 0),
                  decoder_input_ids=torch.tensor([[0, *seq]])).logits[0, -1].numpy()
    return log_softmax64(logits)

  agreed = disagreed = agreed_finished = 0
  for eos in (3, 7):
    with torch.no_grad():
      out = hf.generate(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                        num_beams=beams, num_return_sequences=beams, length_penalty=0.0,
                        max_new_tokens=length, eos_token_id=eos, pad_token_id=0, do_sample=False,
                        output_scores=True, return_dict_in_generate=True)
    hf_tokens = out.sequences.numpy()[:, 1:].reshape(6, beams, -1)
    hf_scores = out.sequences_scores.numpy().reshape(6, beams)
    tokens, scores = decoding.beam_search(model, params, jnp.asarray(enc, jnp.int32), length,
                                          beam_size=beams, alpha=0.0, eos_id=eos)
    for b in range(6):
      oracle = functools.partial(log_probs_of, b)
      t5x = reference_beam_search(oracle, beams, length, eos)
      hf_rules = reference_beam_search(oracle, beams, length, eos, rule='hf')
      # HF fills the positions after EOS with EOS; keep tokens up to the first EOS.
      hf_seqs = [tuple(row[:list(row).index(eos) + 1] if eos in row else row)
                 for row in hf_tokens[b].tolist()]
      assert hf_seqs == [seq for _, seq in hf_rules], (eos, b)
      np.testing.assert_allclose(hf_scores[b], [s for s, _ in hf_rules], atol=1e-4)
      _check_against_reference(tokens[b], scores[b], t5x, length, atol=1e-4)
      if [seq for _, seq in t5x] == hf_seqs:
        agreed += 1
        agreed_finished += t5x[0][1][-1] == eos
        np.testing.assert_array_equal(np.asarray(tokens[b]),
                                      [_padded(seq, length) for seq in hf_seqs])
        np.testing.assert_allclose(np.asarray(scores[b]), hf_scores[b], atol=1e-4)
      else:
        disagreed += 1
  assert agreed >= 6 and agreed_finished >= 1 and disagreed >= 1, (agreed, agreed_finished,
                                                                    disagreed)
