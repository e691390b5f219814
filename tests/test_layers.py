"""Layers against independent numpy computations and hand-worked values."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan.layers import (Embed, MlpBlock, MultiHeadAttention, RMSNorm,
                             RelativePositionBias, causal_mask, combine_masks,
                             relative_position_bucket, segment_mask)
from moe_flan.layers.attention import add_shared_bias, softmax, sum_leading_axis
from moe_flan.layers.embedding import tied_logits
from moe_flan.layers.masks import padding_mask


# ---------------------------------------------------------------- relative position buckets
def bucket_reference(rel: int, bidirectional: bool, num_buckets=32, max_distance=128) -> int:
  """Scalar restatement of the T5 paper's bucketing: exact for small distances, log after."""
  distance_back = -rel                     # > 0: key lies before the query
  offset = 0
  if bidirectional:
    num_buckets //= 2
    if distance_back < 0:                  # key after the query: the second half of buckets
      offset = num_buckets
    distance = abs(distance_back)
  else:
    distance = max(distance_back, 0)       # future keys all share bucket 0
  exact = num_buckets // 2
  if distance < exact:
    return offset + distance
  logb = math.log(distance / exact) / math.log(max_distance / exact)
  return offset + min(exact + int(logb * (num_buckets - exact) + 1e-6), num_buckets - 1)


@pytest.mark.parametrize('bidirectional', [True, False])
def test_buckets_match_reference(bidirectional):
  rel = np.arange(-400, 401)
  got = np.asarray(relative_position_bucket(jnp.asarray(rel), bidirectional))
  want = np.array([bucket_reference(int(r), bidirectional) for r in rel])
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('rel,bidirectional,bucket', [
    (0, True, 0), (-1, True, 1), (-7, True, 7), (-8, True, 8), (-16, True, 10),
    (-32, True, 12), (-64, True, 14), (-127, True, 15), (-1000, True, 15),
    (1, True, 17), (20, True, 26), (1000, True, 31),
    (5, False, 0), (-15, False, 15), (-16, False, 16), (-20, False, 17), (-128, False, 31),
])
def test_buckets_hand_worked(rel, bidirectional, bucket):
  # e.g. bidirectional, 16 keys back: 8 + floor(log(16/8) / log(128/8) * 8) = 8 + 2 = 10.
  assert int(relative_position_bucket(jnp.array(rel), bidirectional)) == bucket


def test_relpos_bias_uses_positions_not_indices():
  module = RelativePositionBias(num_heads=3, bidirectional=True)
  pos = jnp.array([[0, 1, 2, 0, 1]])
  params = module.init(jax.random.PRNGKey(0), pos, pos)
  table = np.asarray(nn.unbox(params)['params']['rel_embedding'])
  bias = np.asarray(module.apply(params, pos, pos))
  assert bias.shape == (1, 3, 5, 5)
  for l in range(5):
    for m in range(5):
      b = bucket_reference(int(pos[0, m] - pos[0, l]), True)
      np.testing.assert_allclose(bias[0, :, l, m], table[:, b], rtol=1e-6)


# ---------------------------------------------------------------- RMSNorm
def test_rmsnorm_matches_numpy():
  x = np.random.RandomState(0).normal(size=(2, 3, 8)).astype(np.float32) * 3
  scale = np.linspace(0.5, 2.0, 8).astype(np.float32)
  module = RMSNorm(epsilon=1e-6)
  y = module.apply({'params': {'scale': scale}}, x)
  want = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(y, want, rtol=1e-5)
  params = module.init(jax.random.PRNGKey(0), x)['params']['scale']
  assert params.names == ('embed',) and params.value.dtype == jnp.float32
  np.testing.assert_array_equal(params.value, np.ones(8))


def test_rmsnorm_bfloat16_input_keeps_float32_scale():
  x = jnp.ones((1, 2, 4), jnp.bfloat16) * 3
  module = RMSNorm(dtype=jnp.bfloat16)
  variables = module.init(jax.random.PRNGKey(0), x)
  assert variables['params']['scale'].value.dtype == jnp.float32
  assert module.apply(variables, x).dtype == jnp.bfloat16


# ---------------------------------------------------------------- attention
def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def test_attention_matches_numpy():
  rng = np.random.RandomState(1)
  b, l, m, d, h, k = 2, 3, 5, 8, 2, 4
  xq = rng.normal(size=(b, l, d)).astype(np.float32)
  xkv = rng.normal(size=(b, m, d)).astype(np.float32)
  mask = rng.rand(b, 1, l, m) > 0.3
  mask[..., 0] = True
  bias = rng.normal(size=(1, h, l, m)).astype(np.float32)
  w = {n: rng.normal(size=(d, h, k)).astype(np.float32) for n in ('query', 'key', 'value')}
  wo = rng.normal(size=(h, k, d)).astype(np.float32)
  params = {n: {'kernel': w[n]} for n in w}
  params['out'] = {'kernel': wo}
  module = MultiHeadAttention(num_heads=h, head_dim=k)
  got = module.apply({'params': params}, xq, xkv, mask=jnp.asarray(mask), bias=bias)
  q = np.einsum('bld,dhk->blhk', xq, w['query'])
  kk = np.einsum('bmd,dhk->bmhk', xkv, w['key'])
  v = np.einsum('bmd,dhk->bmhk', xkv, w['value'])
  logits = np.einsum('blhk,bmhk->bhlm', q, kk) + bias    # no 1/sqrt(k): T5 convention
  logits = np.where(mask, logits, -1e10)
  ctx = np.einsum('bhlm,bmhk->blhk', _softmax(logits), v)
  want = np.einsum('blhk,hkd->bld', ctx, wo)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_attention_init_scales_and_axes():
  d, h, k = 64, 4, 32
  module = MultiHeadAttention(num_heads=h, head_dim=k)
  x = jnp.zeros((1, 2, d))
  params = module.init(jax.random.PRNGKey(0), x, x)['params']
  assert params['query']['kernel'].names == ('embed', 'heads', 'kv')
  assert params['out']['kernel'].names == ('heads', 'kv', 'embed')
  assert params['out']['kernel'].value.shape == (h, k, d)
  q_std = float(np.std(params['query']['kernel'].value))
  k_std = float(np.std(params['key']['kernel'].value))
  np.testing.assert_allclose(q_std, (d * k) ** -0.5, rtol=0.05)   # 1/sqrt(K) folded in
  np.testing.assert_allclose(k_std, d ** -0.5, rtol=0.05)


# ---------------------------------------------------------------- MLP
def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_gated_gelu_mlp_matches_numpy():
  rng = np.random.RandomState(2)
  x = rng.normal(size=(2, 3, 6)).astype(np.float32)
  wi0, wi1 = rng.normal(size=(2, 6, 10)).astype(np.float32)
  wo = rng.normal(size=(10, 6)).astype(np.float32)
  module = MlpBlock(intermediate_dim=10, activations=('gelu', 'linear'))
  got = module.apply({'params': {'wi_0': {'kernel': wi0}, 'wi_1': {'kernel': wi1},
                                 'wo': {'kernel': wo}}}, x)
  want = (_gelu_tanh(x @ wi0) * (x @ wi1)) @ wo
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_relu_mlp_matches_numpy_and_names():
  rng = np.random.RandomState(3)
  x = rng.normal(size=(1, 4, 6)).astype(np.float32)
  module = MlpBlock(intermediate_dim=8, activations=('relu',))
  params = module.init(jax.random.PRNGKey(0), x)['params']
  assert set(params) == {'wi', 'wo'}
  assert params['wi']['kernel'].names == ('embed', 'mlp')
  assert params['wo']['kernel'].names == ('mlp', 'embed')
  p = nn.unbox(params)
  want = np.maximum(x @ np.asarray(p['wi']['kernel']), 0) @ np.asarray(p['wo']['kernel'])
  np.testing.assert_allclose(module.apply({'params': p}, x), want, rtol=1e-4, atol=1e-5)


def test_mlp_dropout_only_when_enabled():
  x = jnp.ones((2, 5, 6))
  module = MlpBlock(intermediate_dim=8, activations=('relu',), dropout_rate=0.5)
  params = module.init(jax.random.PRNGKey(0), x)
  a = module.apply(params, x)
  np.testing.assert_array_equal(a, module.apply(params, x))
  c = module.apply(params, x, enable_dropout=True, rngs={'dropout': jax.random.PRNGKey(1)})
  assert not np.allclose(a, c)


def test_unknown_activation_raises():
  with pytest.raises(ValueError, match='swish2'):
    MlpBlock(intermediate_dim=4, activations=('swish2',)).init(jax.random.PRNGKey(0),
                                                               jnp.ones((1, 1, 2)))


# ---------------------------------------------------------------- embedding and masks
def test_embed_lookup_and_attend():
  table = np.arange(12, dtype=np.float32).reshape(4, 3)
  module = Embed(num_embeddings=4, features=3)
  tokens = jnp.array([[3, 0, 1]])
  np.testing.assert_array_equal(module.apply({'params': {'embedding': table}}, tokens),
                                table[[3, 0, 1]][None])
  q = np.ones((1, 2, 3), np.float32)
  got = module.apply({'params': {'embedding': table}}, q, method='attend')
  np.testing.assert_allclose(got, q @ table.T)
  assert module.init(jax.random.PRNGKey(0), tokens)['params']['embedding'].names == (
      'vocab', 'embed')


def test_tied_logits_gradients_match_autodiff_of_the_einsum():
  """The hand-written VJP (table gradient formed as [D, V], then transposed) against jax.vjp
  of the plain einsum."""
  rng = np.random.RandomState(4)
  query = jnp.asarray(rng.normal(size=(2, 3, 5)).astype(np.float32))
  table = jnp.asarray(rng.normal(size=(7, 5)).astype(np.float32))
  d_logits = jnp.asarray(rng.normal(size=(2, 3, 7)).astype(np.float32))
  plain = lambda q, t: jnp.einsum('BLD,VD->BLV', q, t)
  got, got_vjp = jax.vjp(tied_logits, query, table)
  want, want_vjp = jax.vjp(plain, query, table)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for g, w in zip(got_vjp(d_logits), want_vjp(d_logits)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('n', [1, 2, 3, 4, 5, 7, 8, 9])
def test_sum_leading_axis_by_halving_matches_numpy(n):
  x = np.random.RandomState(n).normal(size=(n, 3, 2)).astype(np.float32)
  got = sum_leading_axis(jnp.asarray(x))
  assert got.shape == (1, 3, 2)
  np.testing.assert_allclose(got, x.astype(np.float64).sum(0, keepdims=True), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize('bias_shape', [(1, 2, 3, 4), (5, 2, 3, 4), (1, 2, 1, 4)])
def test_add_shared_bias_gradients_match_broadcast_add(bias_shape):
  """Batch-shared bias (halving-sum VJP), per-row bias and a bias broadcast over queries
  (plain add) all give autodiff's values and gradients of `logits + bias`."""
  rng = np.random.RandomState(5)
  logits = jnp.asarray(rng.normal(size=(5, 2, 3, 4)).astype(np.float32))
  bias = jnp.asarray(rng.normal(size=bias_shape).astype(np.float32))
  cot = jnp.asarray(rng.normal(size=(5, 2, 3, 4)).astype(np.float32))
  got, got_vjp = jax.vjp(add_shared_bias, logits, bias)
  want, want_vjp = jax.vjp(lambda a, b: a + b, logits, bias)
  np.testing.assert_allclose(got, want)
  for g, w in zip(got_vjp(cot), want_vjp(cot)):
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('platform, reduces', [('cpu', False), ('cuda', True), ('tpu', True)])
def test_shared_bias_gradient_halves_only_on_cpu(platform, reduces):
  """The halving adds are a CPU lowering; accelerators keep the reduction that a sharded
  batch axis turns into a local sum plus one all-reduce."""
  logits, bias = jnp.ones((4, 2, 3, 3)), jnp.ones((1, 2, 3, 3))
  d_bias = jax.jit(lambda x, b, cot: jax.vjp(add_shared_bias, x, b)[1](cot)[1])
  text = d_bias.trace(logits, bias, logits).lower(lowering_platforms=(platform,)).as_text()
  assert ('stablehlo.reduce' in text) == reduces
  assert ('stablehlo.slice' in text) != reduces


def test_softmax_values_and_gradients_match_jax_nn_softmax():
  """The VJP that keeps only the probabilities against autodiff of jax.nn.softmax, with a
  masked (NEG_INF) entry as attention produces."""
  rng = np.random.RandomState(6)
  logits = jnp.asarray(rng.normal(size=(2, 3, 4, 5)).astype(np.float32) * 4).at[..., 1].set(-1e10)
  cot = jnp.asarray(rng.normal(size=(2, 3, 4, 5)).astype(np.float32))
  got, got_vjp = jax.vjp(softmax, logits)
  want, want_vjp = jax.vjp(lambda x: jax.nn.softmax(x, axis=-1), logits)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got_vjp(cot)[0], want_vjp(cot)[0], rtol=1e-5, atol=1e-6)


def test_masks_by_hand():
  np.testing.assert_array_equal(causal_mask(3)[0, 0],
                                [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
  seg = jnp.array([[1, 1, 2, 0]])
  np.testing.assert_array_equal(segment_mask(seg, seg)[0, 0],
                                [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
  tokens = jnp.array([[5, 6, 0]])
  np.testing.assert_array_equal(padding_mask(tokens, tokens)[0, 0],
                                [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
  both = combine_masks(None, causal_mask(3), padding_mask(tokens, tokens))
  np.testing.assert_array_equal(both[0, 0], [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
  assert combine_masks(None, None) is None
