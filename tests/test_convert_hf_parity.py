"""HF T5 v1.1 / mT5 / SwitchTransformers -> moe_flan -> HF: same logits, same losses, exact
tensors.

Tiny randomly initialised transformers models (no downloads) are imported; our model must give
HF's logits within 1e-4 (float32) on the same inputs, and HF's loss; the export must load in
`from_pretrained` with no missing or unexpected keys and give the same logits; and
HF -> ours -> HF reproduces every tensor bit for bit.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from moe_flan.convert import hf_checkpoint  # pylint: disable=g-import-not-at-top
from moe_flan.model import EncoderDecoder
from moe_flan.model.losses import cross_entropy_with_z_loss

import convert_fixtures  # pylint: disable=g-bad-import-order  (tests/convert_fixtures.py)
import hf_switch_losses  # pylint: disable=g-bad-import-order  (tests/hf_switch_losses.py)

B, L, V = 2, 8, 64
ATOL = 1e-4

_BACKBONE = dict(vocab_size=V, d_model=16, d_kv=4, num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, decoder_start_token_id=0, dropout_rate=0.0)
CASES = {
    # FLAN-T5 / T5 v1.1: gated-GELU, untied output layer; unequal stack depths.
    't5_v11': ('t5', dict(d_ff=32, num_layers=2, num_decoder_layers=3,
                          feed_forward_proj='gated-gelu', tie_word_embeddings=False)),
    # Original T5: ReLU, tied embeddings (decoder output scaled by d_model**-0.5).
    't5_tied_relu': ('t5', dict(d_ff=32, num_layers=2, feed_forward_proj='relu',
                                tie_word_embeddings=True)),
    # HF 'gelu' is the exact erf GELU (ACT2FN), our 'gelu_exact'.
    't5_exact_gelu': ('t5', dict(d_ff=32, num_layers=2, feed_forward_proj='gelu',
                                 tie_word_embeddings=False)),
    # mT5: T5 v1.1 (MT5Config defaults: gated-gelu, untied) with a larger vocabulary.
    'mt5': ('mt5', dict(d_ff=32, num_layers=2, vocab_size=2 * V)),
    # Switch: blocks 1 and 3 of each stack sparse; capacity 2 of 8 tokens drops tokens.
    'switch_every2_dropping': ('switch', dict(
        d_ff=32, num_layers=4, num_decoder_layers=4, num_sparse_encoder_layers=2,
        num_sparse_decoder_layers=2, num_experts=4, expert_capacity=2)),
    # Every block sparse (HF then computes no router losses).
    'switch_all_sparse': ('switch', dict(
        d_ff=32, num_layers=2, num_decoder_layers=2, num_sparse_encoder_layers=2,
        num_sparse_decoder_layers=2, num_experts=4, expert_capacity=8)),
    # Different sparse steps per stack, untied output layer, exact GELU (dense_act_fn='gelu').
    'switch_mixed_untied': ('switch', dict(
        d_ff=32, num_layers=3, num_decoder_layers=2, num_sparse_encoder_layers=1,
        num_sparse_decoder_layers=1, num_experts=2, expert_capacity=3,
        tie_word_embeddings=False, dense_act_fn='gelu')),
}


_randomise = convert_fixtures.randomise_hf


def _hf_model(kind, kwargs):
  if kind in ('t5', 'mt5'):
    config_cls, model_cls = ((transformers.T5Config, transformers.T5ForConditionalGeneration)
                             if kind == 't5' else
                             (transformers.MT5Config, transformers.MT5ForConditionalGeneration))
    return _randomise(model_cls(config_cls(**dict(_BACKBONE, **kwargs))))
  cfg = transformers.SwitchTransformersConfig(**_BACKBONE, router_jitter_noise=0.0, **kwargs)
  return _randomise(transformers.SwitchTransformersForConditionalGeneration(cfg))


def _inputs(pad: bool = True):
  rng = np.random.default_rng(1)
  enc = rng.integers(2, V, (B, L))
  if pad:
    enc[1, L - 3:] = 0                                  # trailing encoder padding in row 1
  targets = rng.integers(2, V, (B, L))
  dec_in = np.concatenate([np.zeros((B, 1), np.int64), targets[:, :-1]], axis=1)
  return enc, dec_in, targets


def _hf_forward(model, enc, dec_in, targets):
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                 decoder_input_ids=torch.tensor(dec_in), labels=torch.tensor(targets))


def _ours(config, params, enc, dec_in, targets, capture=False):
  model = EncoderDecoder(config)
  args = (jnp.asarray(enc, jnp.int32), jnp.asarray(dec_in, jnp.int32),
          jnp.asarray(targets, jnp.int32))
  if capture:
    return hf_switch_losses.router_logits(model, {'params': params}, *args)
  logits, state = model.apply({'params': params}, *args, mutable=['moe_metrics'])
  return logits, state


@pytest.fixture(scope='module', params=sorted(CASES))
def case(request, tmp_path_factory):
  kind, kwargs = CASES[request.param]
  hf = _hf_model(kind, kwargs)
  enc, dec_in, targets = _inputs()
  config, params = hf_checkpoint.import_hf(hf, group_size=L)
  out_dir = str(tmp_path_factory.mktemp(request.param))
  hf_checkpoint.export_hf(config, params, out_dir, max_shard_bytes=16384)   # sharded
  unpadded = _inputs(pad=False)
  return dict(name=request.param, kind=kind, hf=hf, config=config, params=params,
              out_dir=out_dir, inputs=(enc, dec_in, targets),
              hf_out=_hf_forward(hf, enc, dec_in, targets),
              unpadded=unpadded, hf_out_unpadded=_hf_forward(hf, *unpadded))


def test_imported_logits_match_hf(case):
  logits, _ = _ours(case['config'], case['params'], *case['inputs'])
  np.testing.assert_allclose(np.asarray(logits), case['hf_out'].logits.numpy(), atol=ATOL, rtol=0)


def test_loss_matches_hf(case):
  # Unpadded: HF's router losses include padding positions, whose hidden states differ by
  # design (t5x masks padded queries too; HF masks keys only). Logits above use padding.
  enc, dec_in, targets = case['unpadded']
  captured = _ours(case['config'], case['params'], enc, dec_in, targets, capture=True)
  logits = captured['output']
  ce, _, _ = cross_entropy_with_z_loss(logits, jnp.asarray(targets), z_loss=0.0)
  hf_out = case['hf_out_unpadded']
  if case['kind'] != 'switch':
    np.testing.assert_allclose(float(ce), float(hf_out.loss), atol=ATOL)
    return
  ours = hf_switch_losses.hf_switch_loss(logits, jnp.asarray(targets), captured,
                                         case['hf'].config.to_dict())
  np.testing.assert_allclose(float(ours['ce']), float(ce), atol=1e-5)
  np.testing.assert_allclose(float(ours['loss']), float(hf_out.loss), atol=ATOL)
  for part in ('encoder_z_loss', 'encoder_aux_loss', 'decoder_z_loss', 'decoder_aux_loss'):
    np.testing.assert_allclose(float(ours[part]), float(getattr(hf_out, part)), atol=ATOL,
                               err_msg=part)
  if case['name'] == 'switch_all_sparse':   # HF quirk: no router losses when every block is sparse
    assert float(hf_out.encoder_aux_loss) == 0.0 and float(hf_out.decoder_z_loss) == 0.0
  else:
    assert float(hf_out.encoder_aux_loss) > 0.0


def test_capacity_drops_tokens_like_hf():
  """The dropping case really drops (so the logit match above covers dropped tokens)."""
  kind, kwargs = CASES['switch_every2_dropping']
  hf = _hf_model(kind, kwargs)
  config, params = hf_checkpoint.import_hf(hf, group_size=L)
  _, state = _ours(config, params, *_inputs())
  dropped = [float(v[0]) for k, v in _flat(state['moe_metrics']).items()
             if k.endswith('fraction_dropped')]
  assert len(dropped) == 4 and max(dropped) > 0.0


def _flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def test_export_loads_in_hf_with_same_logits(case):
  cls = type(case['hf'])
  reloaded, info = cls.from_pretrained(case['out_dir'], output_loading_info=True)
  assert info['missing_keys'] == [] and info['unexpected_keys'] == [], info
  assert os.path.isfile(os.path.join(case['out_dir'], 'model.safetensors.index.json'))
  out = _hf_forward(reloaded.eval(), *case['inputs'])
  np.testing.assert_allclose(out.logits.numpy(), case['hf_out'].logits.numpy(), atol=ATOL, rtol=0)


def test_round_trip_is_bit_exact(case):
  hf_config, tensors = hf_checkpoint.params_to_hf(case['config'], case['params'])
  state = {k: v.numpy() for k, v in case['hf'].state_dict().items()}
  for name, value in tensors.items():
    assert value.dtype == state[name].dtype and np.array_equal(value, state[name]), name
  # Everything HF holds is either exported or a tied copy of an exported tensor.
  for name in set(state) - set(tensors):
    assert name.endswith('embed_tokens.weight') or name == 'lm_head.weight', name
    assert np.array_equal(state[name], tensors['shared.weight'])
  again = hf_checkpoint.params_from_hf(hf_checkpoint.config_from_hf(hf_config, group_size=L),
                                       tensors)
  flat_a, flat_b = _flat(case['params']), _flat(again)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    assert np.array_equal(flat_a[k], flat_b[k]), k


def test_pytorch_bin_checkpoint_imports_like_the_model_object(case, tmp_path):
  """Older hub checkpoints ship pytorch_model.bin only (read with torch when installed)."""
  case['hf'].save_pretrained(str(tmp_path), safe_serialization=False)
  assert os.path.isfile(tmp_path / 'pytorch_model.bin')
  config, params = hf_checkpoint.import_hf(str(tmp_path), group_size=L)
  assert config == case['config']
  flat_a, flat_b = _flat(case['params']), _flat(params)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    assert np.array_equal(flat_a[k], flat_b[k]), k


@pytest.mark.parametrize('name', ['t5_v11', 'switch_every2_dropping'])
def test_greedy_generation_matches_hf_generate(name):
  """Cached decoding of an imported model == HF `generate` (greedy). HF routes one token per
  sequence per step here; ours routes the step's B tokens as one group, so capacity >= B."""
  from moe_flan import decoding  # pylint: disable=g-import-not-at-top
  kind, kwargs = CASES[name]
  hf = _hf_model(kind, kwargs)
  config, params = hf_checkpoint.import_hf(hf, group_size=L)
  enc = _inputs()[0]
  steps = L   # the cache-shaping pass routes B * steps tokens in groups of L
  with torch.no_grad():
    want = hf.generate(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                       max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                       num_beams=1,
                       # HF's cache breaks on uneven stack depths (t5_v11); without a cache,
                       # HF re-routes the whole prefix each step, so capacity would bind (Switch).
                       use_cache=kind == 'switch').numpy()[:, 1:]   # drop the start token
  got = np.asarray(decoding.temperature_sample(EncoderDecoder(config), params,
                                               jnp.asarray(enc, jnp.int32), steps,
                                               temperature=0.0, eos_id=-1))
  np.testing.assert_array_equal(got, want)


def test_imported_activations(case):
  want = {'t5_v11': ('gelu', 'linear'), 'mt5': ('gelu', 'linear'), 't5_tied_relu': ('relu',),
          't5_exact_gelu': ('gelu_exact',), 'switch_mixed_untied': ('gelu_exact',)}
  assert tuple(case['config'].mlp_activations) == want.get(case['name'], ('relu',))


@pytest.mark.parametrize('acts', [('gelu_exact',), ('gelu_exact', 'linear'), ('gelu', 'linear')])
def test_exported_activation_is_the_one_transformers_runs(acts):
  """The names we export select the same function in transformers' own ACT2FN."""
  from moe_flan.convert import hf_t5  # pylint: disable=g-import-not-at-top
  from moe_flan.layers.mlp import ACTIVATIONS  # pylint: disable=g-import-not-at-top
  from transformers.activations import ACT2FN  # pylint: disable=g-import-not-at-top
  hf_config = transformers.T5Config(feed_forward_proj=(
      hf_t5.feed_forward_proj_from_activations(acts)))
  assert hf_config.is_gated_act == (len(acts) == 2)
  x = np.linspace(-4, 4, 101, dtype=np.float32)
  got = ACT2FN[hf_config.dense_act_fn](torch.tensor(x)).numpy()
  np.testing.assert_allclose(got, np.asarray(ACTIVATIONS[acts[0]](jnp.asarray(x))), atol=1e-6)
