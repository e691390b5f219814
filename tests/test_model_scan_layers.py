"""`T5Config.scan_layers`: the layer stacks run as `nn.scan` over repeating blocks of layers.

With params converted by `moe_flan.model.scan.scan_params`, the scanned model computes what the
unrolled one does (logits, loss, MoE aux losses and per-layer metrics, gradients, decoded
tokens); its params carry the 'layers' logical axis and shard on an 8-device mesh.
"""
import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from moe_flan import decoding
from moe_flan import partitioning
from moe_flan.config import MoeConfig, T5Config
from moe_flan.convert import gin_config, hf_checkpoint, retarget
from moe_flan.config_gin import write_model_gin
from moe_flan.model import EncoderDecoder, compute_loss, scan
from moe_flan.moe import collect_moe_metrics
from t5_fixtures import random_params, tiny_config

TOKENS = np.array([[3, 4, 5, 6, 2, 0], [7, 8, 2, 9, 0, 0], [5, 5, 3, 2, 8, 1], [9, 3, 0, 0, 0, 0]],
                  np.int32)
TARGETS = np.array([[3, 4, 1, 0], [5, 6, 7, 1], [8, 1, 0, 0], [2, 2, 2, 1]], np.int32)
BATCH = {'encoder_input_tokens': TOKENS, 'decoder_target_tokens': TARGETS,
         'decoder_input_tokens': np.pad(TARGETS[:, :-1], ((0, 0), (1, 0)))}


def _configs(moe: bool, remat_policy: str = 'none') -> tuple[T5Config, T5Config]:
  """(unrolled, scanned) tiny models of 4 encoder and 5 decoder layers; sparse: every 2nd layer
  an MoE (period 2), so the decoder's layer 4 is left over after its 2-block scan."""
  cfg = tiny_config(moe=moe, num_encoder_layers=4, num_decoder_layers=5)
  if moe:   # aux losses weigh in the total loss, so their gradients are compared too
    cfg = dataclasses.replace(cfg, moe=dataclasses.replace(
        cfg.moe, load_balancing_loss_weight=0.1, router_z_loss_weight=0.01))
  return cfg, dataclasses.replace(cfg, scan_layers=True, remat_policy=remat_policy)


def _params(cfg: T5Config):
  return random_params(EncoderDecoder(cfg), BATCH['encoder_input_tokens'],
                       BATCH['decoder_input_tokens'], BATCH['decoder_target_tokens'])


def _loss(cfg: T5Config, params, batch=BATCH):
  """(loss, (logits, loss metrics)) of a forward pass without dropout."""
  logits, state = EncoderDecoder(cfg).apply(
      {'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
      batch['decoder_target_tokens'], mutable=['moe_metrics'])
  loss, metrics = compute_loss(cfg, logits, batch, state.get('moe_metrics'))
  return loss, (logits, metrics)


def _close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree_util.tree_map(
      lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol),
      a, b)


def test_scan_params_round_trip_and_layout():
  cfg, scfg = _configs(moe=True)
  params = _params(cfg)
  scanned = scan.scan_params(params, scfg)
  want = nn.unbox(jax.eval_shape(EncoderDecoder(scfg).init, jax.random.key(0), TOKENS,
                                 BATCH['decoder_input_tokens'], TARGETS)['params'])
  assert (jax.tree_util.tree_map(np.shape, scanned) ==
          jax.tree_util.tree_map(lambda s: s.shape, want))
  # Layer i lives at layers/layers_{i % 2}, block i // 2: layer 3 is the second MoE block.
  np.testing.assert_array_equal(
      scanned['encoder']['layers']['layers_1']['moe']['router']['kernel'][1],
      params['encoder']['layers_3']['moe']['router']['kernel'])
  np.testing.assert_array_equal(
      scanned['decoder']['layers']['layers_0']['self_attention']['query']['kernel'][1],
      params['decoder']['layers_2']['self_attention']['query']['kernel'])
  assert set(scanned['decoder']) >= {'layers', 'layers_4'} and 'layers_3' not in scanned['decoder']
  np.testing.assert_array_equal(scanned['decoder']['layers_4']['mlp']['wo']['kernel'],
                                params['decoder']['layers_4']['mlp']['wo']['kernel'])
  back = scan.unscan_params(scanned, scfg)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)
  host = jax.tree_util.tree_map(np.asarray, params)     # checkpoints on the host stay numpy
  assert isinstance(scan.scan_params(host, scfg)['encoder']['layers']['layers_0']['mlp']['wo']
                    ['kernel'], np.ndarray)


def _grad_fn(cfg: T5Config):
  return jax.jit(jax.value_and_grad(lambda p: _loss(cfg, p), has_aux=True))


@functools.lru_cache(maxsize=None)
def _unrolled(moe: bool):
  """((loss, (logits, metrics)), grads) of the unrolled model (shared by two tests)."""
  cfg, _ = _configs(moe)
  return _grad_fn(cfg)(_params(cfg))


@pytest.mark.parametrize('moe, remat_policy', [(False, 'none'), (True, 'none'), (True, 'full')],
                         ids=['dense', 'sparse', 'sparse_remat'])
def test_scanned_model_equals_unrolled(moe, remat_policy):
  """Also with every block recomputed in the backward pass (remat_policy='full'), the MoE
  layers' sown metrics included."""
  cfg, scfg = _configs(moe, remat_policy)
  (loss, (logits, metrics)), grads = _unrolled(moe)
  (s_loss, (s_logits, s_metrics)), s_grads = _grad_fn(scfg)(scan.scan_params(_params(cfg), scfg))
  _close(s_logits, logits)
  _close(s_loss, loss)
  assert set(s_metrics) == set(metrics)
  _close(s_metrics, metrics)
  _close(scan.unscan_params(s_grads, scfg), grads)
  jaxpr = str(jax.make_jaxpr(lambda p: _loss(scfg, p)[0])(scan.scan_params(_params(cfg), scfg)))
  remat = re.search(r'\b(checkpoint|remat\d*)\[', jaxpr)   # jax.checkpoint's primitive
  assert bool(remat) == (remat_policy != 'none')
  if moe:   # the per-layer metrics list layers 1, 3 of the encoder, then of the decoder
    assert metrics['moe/load_balancing_loss_per_layer'].shape == (4,)
    assert metrics['moe/expert_load_per_layer'].shape == (4, cfg.moe.num_experts)
    assert float(metrics['moe/load_balancing_loss']) > 0


def test_params_carry_the_layers_axis_and_shard_on_8_devices():
  cfg, scfg = _configs(moe=True)
  boxed = jax.eval_shape(EncoderDecoder(scfg).init, jax.random.key(0), TOKENS,
                         BATCH['decoder_input_tokens'], TARGETS)['params']
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
  for stack in scan.STACKS:
    for box in jax.tree_util.tree_leaves(boxed[stack][scan.SCANNED], is_leaf=is_box):
      assert box.names[0] == 'layers' and box.value.shape[0] == 2, box
  partitioner = partitioning.Partitioner(partitioning.make_mesh((2, 2, 2)))
  specs = partitioner.partition_specs(boxed)
  block = specs['encoder'][scan.SCANNED]['layers_1']
  assert block['moe']['experts']['wi_0'] == P(None, 'expert', None, 'model')
  assert block['attention']['query']['kernel'] == P(None, None, 'model', None)

  params = _params(cfg)
  sharded = jax.device_put(scan.scan_params(params, scfg), partitioner.shardings(boxed))
  wi = sharded['encoder'][scan.SCANNED]['layers_1']['moe']['experts']['wi_0']
  assert {s.data.shape for s in wi.addressable_shards} == {(2, 2, 16, 6)}
  with partitioner.activate():
    s_loss, (s_logits, _) = jax.jit(lambda p: _loss(scfg, p))(sharded)
  (loss, (logits, _)), _ = _unrolled(True)
  _close(s_logits, logits)
  _close(s_loss, loss)


def test_decoding_scanned_equals_unrolled():
  """Greedy decoding of the dense model, beam search of the sparse one: a scanned cache holds
  [blocks, B * W, ...], and beam search must reorder its second axis."""
  cfg, scfg = _configs(moe=False)
  params = _params(cfg)
  greedy = decoding.greedy_decode(EncoderDecoder(cfg), params, TOKENS, 5, eos_id=1)
  s_greedy = decoding.greedy_decode(EncoderDecoder(scfg), scan.scan_params(params, scfg),
                                    TOKENS, 5, eos_id=1)
  np.testing.assert_array_equal(s_greedy, greedy)
  cfg, scfg = _configs(moe=True)
  params = _params(cfg)
  tokens, scores = decoding.beam_search(EncoderDecoder(cfg), params, TOKENS[:2], 4,
                                        beam_size=3, alpha=0.6)
  s_tokens, s_scores = decoding.beam_search(EncoderDecoder(scfg), scan.scan_params(params, scfg),
                                            TOKENS[:2], 4, beam_size=3, alpha=0.6)
  np.testing.assert_array_equal(s_tokens, tokens)
  _close(s_scores, scores)


def test_a_pattern_that_does_not_repeat_is_refused():
  moe = MoeConfig(num_experts=4, encoder_sparse_layout='top', encoder_sparse_every=2)
  with pytest.raises(ValueError, match=r'scan_layers=True: the encoder sparse blocks \(6, 7\) '
                                       r'of 8 layers do not repeat'):
    T5Config(num_encoder_layers=8, num_decoder_layers=8, moe=moe, scan_layers=True)
  with pytest.raises(ValueError, match=r'decoder sparse blocks \(1,\) of 2 layers do not repeat'):
    T5Config(num_encoder_layers=2, num_decoder_layers=2, scan_layers=True,
             moe=dataclasses.replace(moe, encoder_sparse_layout='all'))
  unrolled = T5Config(num_encoder_layers=8, num_decoder_layers=8, moe=moe)   # fine unscanned
  assert unrolled.encoder_sparse_blocks() == (6, 7)
  # Sparse every 3rd of 8 layers: 2 blocks of 3, layers 6 and 7 left over; ST-MoE-32B's 27
  # layers sparse every 4th: 6 blocks of 4 and 3 left over.
  periodic = T5Config(num_encoder_layers=8, num_decoder_layers=27, scan_layers=True,
                      moe=MoeConfig(num_experts=4, encoder_sparse_every=3, decoder_sparse_every=4))
  assert (periodic.layer_period('encoder'), periodic.layer_period('decoder')) == (3, 4)
  assert (scan.num_blocks(periodic, 'encoder'), scan.num_blocks(periodic, 'decoder')) == (2, 6)
  assert T5Config(num_encoder_layers=8, scan_layers=True).layer_period('encoder') == 1
  with pytest.raises(ValueError, match=r"remat_policy='full': .*set T5Config.scan_layers=True"):
    T5Config(remat_policy='full')
  with pytest.raises(ValueError, match=r"remat_policy='dots': choose one of"):
    T5Config(scan_layers=True, remat_policy='dots')


def test_scan_params_errors_and_gin_round_trip(tmp_path):
  _, scfg = _configs(moe=True)
  params = _params(_configs(moe=True)[0])
  scanned = scan.scan_params(params, scfg)
  del params['encoder']['layers_3']
  with pytest.raises(ValueError, match=r"scan_params: encoder lacks \['layers_3'\] of its 4"):
    scan.scan_params(params, scfg)
  del scanned['decoder']['layers']
  with pytest.raises(ValueError, match=r"unscan_params: decoder has no scanned 'layers' module"):
    scan.unscan_params(scanned, scfg)
  path = write_model_gin(str(tmp_path), scfg)   # what MODEL_DIR/model.gin records
  assert 'T5Config.scan_layers = True' in open(path).read()
  assert gin_config.config_from_gin([path]) == scfg


def test_per_layer_moe_metrics_of_a_scanned_stack_come_in_layer_order():
  """Block b of a scanned stack holds layers b * P + j: with two MoE layers per block
  (j = 0, 1), the per-layer list interleaves the blocks' rows, layer 0, 1, 2, 3, then the
  layer left over after the scan, then the decoder."""
  tree = {'encoder': {'layers': {
      'layers_0': {'moe': {'load_balancing_loss': (jnp.array([0.0, 2.0]),)}},
      'layers_1': {'moe': {'load_balancing_loss': (jnp.array([1.0, 3.0]),)}}},
      'layers_4': {'moe': {'load_balancing_loss': (jnp.array(4.0),)}}},   # left over
          'decoder': {'layers_0': {'moe': {'load_balancing_loss': (jnp.array(5.0),)}}}}
  out = collect_moe_metrics(tree)
  np.testing.assert_array_equal(out['load_balancing_loss_per_layer'], [0, 1, 2, 3, 4, 5])


def test_the_converter_fits_unrolled_checkpoints_to_a_scanned_model_and_exports_them_unrolled():
  """Imported (HF) params are unrolled: retargeting them to a scanned gin model scans them, and
  exporting a scanned model's params gives the unrolled model's HF tensors."""
  cfg, scfg = _configs(moe=False)
  params = jax.tree_util.tree_map(np.asarray, _params(cfg))
  scanned = retarget.retarget_params(cfg, params, scfg)
  jax.tree_util.tree_map(np.testing.assert_array_equal, scanned, scan.scan_params(params, scfg))
  hf_config, tensors = hf_checkpoint.params_to_hf(scfg, scanned)
  want_config, want = hf_checkpoint.params_to_hf(cfg, params)
  assert hf_config == want_config and set(tensors) == set(want)
  for name, value in want.items():
    np.testing.assert_array_equal(tensors[name], value)


def test_an_unrolled_checkpoint_for_a_scanned_model_is_refused_with_the_conversion_named():
  from moe_flan.trainer import checkpoints  # pylint: disable=g-import-not-at-top
  model = {'encoder/layers/layers_0/mlp/wo/kernel': (2, 24, 16)}
  ckpt = {'encoder/layers_0/mlp/wo/kernel': np.zeros((24, 16))}
  assert 'the model scans its layers' in checkpoints._layout_hint(model, ckpt)
  assert 'the checkpoint scans' in checkpoints._layout_hint(
      {k: v.shape for k, v in ckpt.items()}, dict.fromkeys(model))
  assert checkpoints._layout_hint(model, dict.fromkeys(model)) == ''
