"""Sparse models decode, score and infer for every batch size and length; a prompt's output does
not depend on the rest of its batch when no token is dropped; imported HF Switch models decode
exactly as HF's cached `generate` for batch sizes 1..5 and several lengths."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan import decoding
from moe_flan.config import MoeConfig
from moe_flan.model import EncoderDecoder
from t5_fixtures import random_params, tiny_config
import convert_fixtures

GROUP = 48       # tokens per routing group: most batch * length products below are not multiples
PROMPTS = ['What is 3 plus 4?', 'Write the number 12 in words.', 'Is 7 greater than 3?',
           'Name a colour.', 'Translate to French: cat', 'Sort: c a b', 'What is the capital of '
           'France?', 'Spell dog backwards.', 'Is the sky green? OPTIONS: - yes - no']


def _sparse_config(vocab_size: int):
  """Every block sparse, groups of GROUP tokens, capacity = group size (nothing is dropped)."""
  moe = MoeConfig(num_experts=4, num_selected_experts=2, expert_mlp_dim=16, group_size=GROUP,
                  train_capacity_factor=2.0, eval_capacity_factor=2.0, min_capacity=1,
                  encoder_sparse_layout='all', decoder_sparse_layout='all')
  return dataclasses.replace(tiny_config(vocab_size=vocab_size, num_encoder_layers=1,
                                         num_decoder_layers=1), moe=moe)


def test_infer_decodes_1_to_9_prompts_and_each_output_ignores_the_batch(tmp_path):
  """`moe_flan.infer`'s function: 1..9 prompts in batches of up to 3 (encoder tokens 32 * n
  and cache-shaping decoder tokens 20 * n, n = 1..3, need padded groups for n = 2 and 3); every
  prompt decodes as it does alone."""
  from moe_flan.convert import checkpoint_dir  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import inference  # pylint: disable=g-import-not-at-top
  from tasks import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  config = _sparse_config(vocab_lib.default_vocabulary().vocab_size)
  model = EncoderDecoder(config)
  params = random_params(model, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32), seed=7)
  checkpoint_dir.save(str(tmp_path / 'ckpt'), params, config)

  def infer(prompts, batch_size=3):
    settings = inference.InferConfig(prompts=prompts, input_length=32, max_decode_length=20,
                                     batch_size=batch_size, output_file=str(tmp_path / 'o.jsonl'))
    return [r['output'] for r in inference.infer(str(tmp_path), config,
                                                 str(tmp_path / 'ckpt'), settings)]

  alone = infer(PROMPTS, batch_size=1)
  assert len(set(alone)) > 1, alone            # the model's outputs depend on the prompt
  for n in range(1, len(PROMPTS) + 1):
    assert infer(PROMPTS[:n]) == alone[:n], n


def test_greedy_and_scores_of_a_prompt_do_not_depend_on_its_batch():
  """Decoding (cache-shaping pass + steps) and scoring of 5 prompts in one batch, whose token
  counts (100 encoder, 55 decoder) are not multiples of the group size: each row equals the row
  decoded or scored alone."""
  config = _sparse_config(32)
  model = EncoderDecoder(config)
  params = random_params(model, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32), seed=8)
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 32, (5, 20)).astype(np.int32)
  enc[1, 12:] = 0
  targets = rng.randint(2, 32, (5, 11)).astype(np.int32)
  targets[2, 7:] = 0
  alone = [np.asarray(decoding.greedy_decode(model, params, enc[i:i + 1], 11))[0]
           for i in range(5)]
  scores_alone = [float(decoding.score_targets(model, params, {
      'encoder_input_tokens': enc[i:i + 1], 'decoder_target_tokens': targets[i:i + 1]})[0])
                  for i in range(5)]
  out = np.asarray(decoding.greedy_decode(model, params, enc, 11))
  np.testing.assert_array_equal(out, np.stack(alone))
  assert len({tuple(row) for row in alone}) > 1, alone
  scores = decoding.score_targets(model, params, {'encoder_input_tokens': enc,
                                                  'decoder_target_tokens': targets})
  np.testing.assert_allclose(scores, scores_alone, rtol=1e-5, atol=1e-5)


def test_beam_search_of_a_prompt_does_not_depend_on_its_batch():
  """Beam search (W = 4, 6 steps) of 3 prompts at once (60 encoder tokens, 72 cache-shaping
  decoder tokens: padded groups) equals each prompt searched alone."""
  config = _sparse_config(32)
  model = EncoderDecoder(config)
  params = random_params(model, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32), seed=9)
  enc = np.random.RandomState(1).randint(2, 32, (3, 20)).astype(np.int32)
  tokens, scores = decoding.beam_search(model, params, enc, 6, beam_size=4, alpha=0.6)
  for i in range(3):
    alone_tokens, alone_scores = decoding.beam_search(model, params, enc[i:i + 1], 6,
                                                      beam_size=4, alpha=0.6)
    np.testing.assert_array_equal(tokens[i], alone_tokens[0])
    np.testing.assert_allclose(scores[i], alone_scores[0], rtol=1e-5, atol=1e-5)


def test_training_keeps_the_strict_group_check():
  """The same model in training: 3 * 20 encoder tokens in groups of 48 is an error."""
  model = EncoderDecoder(_sparse_config(32))
  with pytest.raises(ValueError, match=r'group_size=48: the batch holds 60 tokens'):
    jax.eval_shape(lambda: model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)},
                                      jnp.ones((3, 20), jnp.int32), jnp.ones((3, 16), jnp.int32),
                                      enable_dropout=True))


# --- Imported HF SwitchTransformers: HF-exact grouping (one group per sequence) -------------

def _hf_switch(expert_capacity: int = 2):
  transformers = pytest.importorskip('transformers')
  pytest.importorskip('torch')
  cfg = transformers.SwitchTransformersConfig(
      vocab_size=64, d_model=16, d_kv=4, num_heads=4, relative_attention_num_buckets=8,
      relative_attention_max_distance=16, decoder_start_token_id=0, dropout_rate=0.0, d_ff=32,
      num_layers=2, num_decoder_layers=2, num_sparse_encoder_layers=2,
      num_sparse_decoder_layers=2, num_experts=4, expert_capacity=expert_capacity,
      router_jitter_noise=0.0)
  model = transformers.SwitchTransformersForConditionalGeneration(cfg)
  return convert_fixtures.randomise_hf(model)


@pytest.fixture(scope='module')
def switch():
  from moe_flan.convert import hf_checkpoint  # pylint: disable=g-import-not-at-top
  hf = _hf_switch()
  config, params = hf_checkpoint.import_hf(hf)
  assert config.moe.routing_groups == 'sequence'
  return hf, EncoderDecoder(config), params


def test_imported_switch_logits_match_hf_for_unequal_lengths(switch):
  """Encoder 12 / decoder 7 tokens, batch 3, capacity 2 binding: HF's logits."""
  import torch  # pylint: disable=g-import-not-at-top  (the fixture skips without it)
  hf, model, params = switch
  rng = np.random.default_rng(3)
  enc = rng.integers(2, 64, (3, 12))
  enc[2, 9:] = 0
  dec_in = np.concatenate([np.zeros((3, 1), np.int64), rng.integers(2, 64, (3, 6))], axis=1)
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
              decoder_input_ids=torch.tensor(dec_in)).logits.numpy()
  got = jax.jit(model.apply)({'params': params}, jnp.asarray(enc, jnp.int32),
                            jnp.asarray(dec_in, jnp.int32))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize('batch,steps', [(1, 3), (2, 6), (3, 11), (4, 6), (5, 9)])
def test_imported_switch_greedy_decoding_matches_hf_generate(switch, batch, steps):
  """Batch sizes 1..5 (above the expert capacity of 2) and decode lengths 3..11, EOS = 1 as in
  HF: our cached decoding routes one token per sequence per step, as HF's cached `generate`."""
  import torch  # pylint: disable=g-import-not-at-top  (the fixture skips without it)
  hf, model, params = switch
  enc = np.random.default_rng(batch).integers(2, 64, (batch, 8))
  enc[0, 5:] = 0
  with torch.no_grad():
    want = hf.generate(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                       max_new_tokens=steps, do_sample=False, num_beams=1,
                       eos_token_id=1, pad_token_id=0).numpy()[:, 1:]
  want = np.pad(want, ((0, 0), (0, steps - want.shape[1])))   # HF stops when all rows ended
  got = np.asarray(decoding.greedy_decode(model, params, jnp.asarray(enc, jnp.int32), steps,
                                          eos_id=1))
  np.testing.assert_array_equal(got, want)
