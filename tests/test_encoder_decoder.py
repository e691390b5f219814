"""EncoderDecoder invariants: parameter tree, causality, packing, padding, tying, dropout."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan.model import EncoderDecoder
from t5_fixtures import random_params, random_tokens, tiny_config


def _shift_right(targets):
  return np.pad(targets, ((0, 0), (1, 0)))[:, :-1]


@functools.lru_cache(maxsize=None)
def _model(moe: bool):
  cfg = tiny_config(moe=moe)
  model = EncoderDecoder(cfg)
  params = random_params(model, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32))
  apply = jax.jit(lambda p, batch: model.apply({'params': p}, **batch))
  return cfg, model, params, apply


def _abstract_tree(cfg):
  model = EncoderDecoder(cfg)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32),
                         jnp.ones((1, 3), jnp.int32))['params']
  flat = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  return {'/'.join(k.key for k in path): (leaf.value.shape, leaf.names) for path, leaf in flat}


def test_parameter_tree_matches_contract():
  cfg = tiny_config(num_decoder_layers=1)
  tree = _abstract_tree(cfg)
  d, h, k, f, v, r = 16, 2, 8, 24, 32, 32
  want = {
      'token_embedder/embedding': ((v, d), ('vocab', 'embed')),
      'encoder/relpos_bias/rel_embedding': ((h, r), ('heads', 'relpos_buckets')),
      'encoder/encoder_norm/scale': ((d,), ('embed',)),
      'decoder/relpos_bias/rel_embedding': ((h, r), ('heads', 'relpos_buckets')),
      'decoder/decoder_norm/scale': ((d,), ('embed',)),
      'decoder/logits_dense/kernel': ((d, v), ('embed', 'vocab')),
  }
  for i in range(2):
    p = f'encoder/layers_{i}'
    want[f'{p}/pre_attention_layer_norm/scale'] = ((d,), ('embed',))
    want[f'{p}/pre_mlp_layer_norm/scale'] = ((d,), ('embed',))
    for n in ('query', 'key', 'value'):
      want[f'{p}/attention/{n}/kernel'] = ((d, h, k), ('embed', 'heads', 'kv'))
    want[f'{p}/attention/out/kernel'] = ((h, k, d), ('heads', 'kv', 'embed'))
    for n in ('wi_0', 'wi_1'):
      want[f'{p}/mlp/{n}/kernel'] = ((d, f), ('embed', 'mlp'))
    want[f'{p}/mlp/wo/kernel'] = ((f, d), ('mlp', 'embed'))
  p = 'decoder/layers_0'
  for norm in ('pre_self_attention_layer_norm', 'pre_cross_attention_layer_norm',
               'pre_mlp_layer_norm'):
    want[f'{p}/{norm}/scale'] = ((d,), ('embed',))
  for att in ('self_attention', 'encoder_decoder_attention'):
    for n in ('query', 'key', 'value'):
      want[f'{p}/{att}/{n}/kernel'] = ((d, h, k), ('embed', 'heads', 'kv'))
    want[f'{p}/{att}/out/kernel'] = ((h, k, d), ('heads', 'kv', 'embed'))
  for n in ('wi_0', 'wi_1'):
    want[f'{p}/mlp/{n}/kernel'] = ((d, f), ('embed', 'mlp'))
  want[f'{p}/mlp/wo/kernel'] = ((f, d), ('mlp', 'embed'))
  assert tree == want


def test_sparse_tied_relu_tree():
  cfg = tiny_config(moe=True, logits_via_embedding=True, mlp_activations=('relu',))
  cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, extra_dense_mlp=True))
  tree = _abstract_tree(cfg)
  assert 'decoder/logits_dense/kernel' not in tree
  assert tree['encoder/layers_0/mlp/wi/kernel'][0] == (16, 24)
  for stack in ('encoder', 'decoder'):
    p = f'{stack}/layers_1'
    assert f'{p}/mlp/wi/kernel' not in tree
    assert tree[f'{p}/moe/router/kernel'] == ((16, 4), ('embed', 'unmodeled'))
    assert tree[f'{p}/moe/experts/wo'][0] == (4, 12, 16)
    assert tree[f'{p}/pre_extra_mlp_layer_norm/scale'][0] == (16,)
    assert tree[f'{p}/extra_mlp/wi/kernel'] == ((16, 24), ('embed', 'mlp'))


def _unpacked_features(enc, targets):
  """Unpacked batch in the packed feature layout (one segment per row), so it shares the
  compiled forward pass with the packing test."""
  positions = lambda x: np.broadcast_to(np.arange(x.shape[1], dtype=np.int32), x.shape)
  return dict(encoder_input_tokens=enc, decoder_input_tokens=_shift_right(targets),
              decoder_target_tokens=targets, encoder_segment_ids=(enc > 0).astype(np.int32),
              decoder_segment_ids=(targets > 0).astype(np.int32),
              encoder_positions=positions(enc), decoder_positions=positions(targets))


@pytest.mark.parametrize('moe', [False, True])
def test_decoder_is_causal(moe):
  cfg, _, params, apply = _model(moe)
  rng = np.random.RandomState(0)
  enc = random_tokens(rng, (2, 12), cfg.vocab_size)
  targets = random_tokens(rng, (2, 8), cfg.vocab_size)
  changed = targets.copy()
  changed[:, 3] = (targets[:, 3] + 5) % (cfg.vocab_size - 2) + 2
  out = [np.asarray(apply(params, _unpacked_features(enc, t))) for t in (targets, changed)]
  # Target 3 is the decoder input at position 4: logits 0..3 must not move, 4 must.
  np.testing.assert_allclose(out[0][:, :4], out[1][:, :4], rtol=1e-5, atol=1e-5)
  assert np.abs(out[0][:, 4] - out[1][:, 4]).max() > 1e-3


def _packing_batches(vocab):
  rng = np.random.RandomState(1)
  ea, eb = random_tokens(rng, (5,), vocab), random_tokens(rng, (4,), vocab)
  ta, tb = random_tokens(rng, (4,), vocab), random_tokens(rng, (3,), vocab)

  def row(parts, length):
    tokens = np.zeros(length, np.int32)
    seg = np.zeros(length, np.int32)
    pos = np.zeros(length, np.int32)
    start = 0
    for s, part in enumerate(parts):
      tokens[start:start + len(part)] = part
      seg[start:start + len(part)] = s + 1
      pos[start:start + len(part)] = np.arange(len(part))
      start += len(part)
    return tokens, seg, pos

  def batch(enc_rows, tgt_rows):
    enc = [row(r, 12) for r in enc_rows]
    tgt = [row(r, 8) for r in tgt_rows]
    targets = np.stack([t[0] for t in tgt])
    dec_in = np.stack([np.concatenate([[0], t[0][:-1]]) * (np.concatenate([[0], t[1][:-1]])
                                                           == t[1]) for t in tgt])
    return dict(encoder_input_tokens=np.stack([e[0] for e in enc]),
                encoder_segment_ids=np.stack([e[1] for e in enc]),
                encoder_positions=np.stack([e[2] for e in enc]),
                decoder_input_tokens=dec_in.astype(np.int32), decoder_target_tokens=targets,
                decoder_segment_ids=np.stack([t[1] for t in tgt]),
                decoder_positions=np.stack([t[2] for t in tgt]))

  packed = batch([(ea, eb), (eb, ea)], [(ta, tb), (tb, ta)])
  alone = batch([(ea,), (eb,)], [(ta,), (tb,)])
  return packed, alone


@pytest.mark.parametrize('moe', [False, True])
def test_packed_examples_equal_examples_alone(moe):
  cfg, _, params, apply = _model(moe)
  packed, alone = _packing_batches(cfg.vocab_size)
  # Each packed segment's decoder inputs restart with the start token 0.
  np.testing.assert_array_equal(packed['decoder_input_tokens'][0, [0, 4]], [0, 0])
  lp = np.asarray(apply(params, packed))
  la = np.asarray(apply(params, alone))
  tol = dict(rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(lp[0, :4], la[0, :4], **tol)   # A first in row 0
  np.testing.assert_allclose(lp[0, 4:7], la[1, :3], **tol)  # B second in row 0
  np.testing.assert_allclose(lp[1, :3], la[1, :3], **tol)   # B first in row 1
  np.testing.assert_allclose(lp[1, 3:7], la[0, :4], **tol)  # A second in row 1


def test_padding_does_not_change_logits():
  cfg, _, params, apply = _model(False)
  rng = np.random.RandomState(2)
  enc = random_tokens(rng, (2, 8), cfg.vocab_size)
  targets = random_tokens(rng, (2, 6), cfg.vocab_size)
  base = apply(params, dict(encoder_input_tokens=enc, decoder_input_tokens=_shift_right(targets),
                            decoder_target_tokens=targets))
  enc_p = np.pad(enc, ((0, 0), (0, 4)))
  tgt_p = np.pad(targets, ((0, 0), (0, 2)))
  padded = apply(params, dict(encoder_input_tokens=enc_p,
                              decoder_input_tokens=_shift_right(tgt_p),
                              decoder_target_tokens=tgt_p))
  np.testing.assert_allclose(padded[:, :6], base, rtol=1e-5, atol=1e-5)


def test_tied_logits_are_embedding_attend_over_sqrt_d():
  cfg = tiny_config(logits_via_embedding=True)
  model = EncoderDecoder(cfg)
  enc, dec = jnp.array([[3, 4, 5]]), jnp.array([[0, 6]])
  params = random_params(model, enc, dec)
  logits, state = jax.jit(lambda p: model.apply({'params': p}, enc, dec,
                                                capture_intermediates=True,
                                                mutable=['intermediates']))(params)
  hidden = state['intermediates']['decoder']['decoder_norm']['__call__'][0]
  want = np.asarray(hidden) @ np.asarray(params['token_embedder']['embedding']).T / np.sqrt(16)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


def test_dropout_is_training_only():
  cfg = tiny_config(dropout_rate=0.3)
  model = EncoderDecoder(cfg)
  enc, dec = jnp.array([[3, 4, 5, 6]]), jnp.array([[0, 6, 7]])
  params = random_params(model, enc, dec)
  _, _, _, apply0 = _model(False)
  v = {'params': params}
  eval_logits = jax.jit(lambda v: model.apply(v, enc, dec))(v)
  np.testing.assert_allclose(eval_logits, apply0(params, dict(encoder_input_tokens=enc,
                                                              decoder_input_tokens=dec)),
                             rtol=1e-5, atol=1e-5)   # rate is ignored without enable_dropout
  train_fn = jax.jit(lambda v, rng: model.apply(v, enc, dec, enable_dropout=True,
                                                rngs={'dropout': rng}))
  train = [train_fn(v, jax.random.PRNGKey(s)) for s in (0, 0, 1)]
  np.testing.assert_array_equal(train[0], train[1])
  assert not np.allclose(train[0], train[2]) and not np.allclose(train[0], eval_logits)


def test_moe_metrics_are_sown_per_sparse_layer():
  cfg, model, params, _ = _model(True)
  enc, dec = jnp.array([[3, 4, 5, 0]]), jnp.array([[0, 6, 7]])
  _, state = jax.jit(lambda p: model.apply({'params': p}, enc, dec,
                                            mutable=['moe_metrics']))(params)
  metrics = state['moe_metrics']
  assert set(metrics) == {'encoder', 'decoder'}
  assert set(metrics['encoder']) == {'layers_1'} and set(metrics['decoder']) == {'layers_1'}
  assert 'load_balancing_loss' in metrics['encoder']['layers_1']['moe']


def test_bfloat16_activations_keep_float32_logits():
  cfg = tiny_config(dtype='bfloat16')
  model = EncoderDecoder(cfg)
  enc, dec = jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32)
  out, variables = jax.eval_shape(model.init_with_output, jax.random.PRNGKey(0), enc, dec)
  assert out.dtype == jnp.float32 and out.shape == (1, 3, 32)
  kernel = variables['params']['encoder']['layers_0']['attention']['query']['kernel']
  assert kernel.value.dtype == jnp.float32


def test_bad_tokens_raise():
  cfg, model, params, _ = _model(False)
  with pytest.raises(ValueError, match='encoder_input_tokens'):
    model.apply({'params': params}, jnp.ones((1, 4), jnp.float32), jnp.ones((1, 3), jnp.int32))
