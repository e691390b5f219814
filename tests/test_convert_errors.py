"""Bad HF input and configs HF cannot express: errors that list what is missing or mismatched."""
import dataclasses
import json
import os

import numpy as np
import pytest

from convert_fixtures import DENSE, SWITCH, random_params
from moe_flan.config import MoeConfig
from moe_flan.convert import hf_checkpoint, hf_switch, safetensors_io


@pytest.fixture(scope='module')
def dense_hf():
  return hf_checkpoint.params_to_hf(DENSE, random_params(DENSE))


def test_missing_and_misshaped_and_unexpected_tensors_are_all_listed(dense_hf):
  hf_config, tensors = dense_hf
  tensors = dict(tensors)
  del tensors['encoder.block.1.layer.0.SelfAttention.k.weight']
  del tensors['lm_head.weight']
  tensors['decoder.final_layer_norm.weight'] = np.zeros((17,), np.float32)
  tensors['encoder.block.9.layer.0.SelfAttention.q.weight'] = np.zeros((2, 2), np.float32)
  config = hf_checkpoint.config_from_hf(hf_config)
  with pytest.raises(ValueError) as err:
    hf_checkpoint.params_from_hf(config, tensors)
  msg = str(err.value)
  assert '4 problem(s)' in msg
  assert 'missing tensor encoder.block.1.layer.0.SelfAttention.k.weight' in msg
  assert 'missing tensor lm_head.weight' in msg
  assert 'decoder.final_layer_norm.weight has shape (17,), expected (16,)' in msg
  assert 'unexpected tensor encoder.block.9.layer.0.SelfAttention.q.weight' in msg


def test_config_that_disagrees_with_tensors(dense_hf):
  hf_config, tensors = dense_hf
  bad = dict(hf_config, d_ff=64)
  with pytest.raises(ValueError, match=r'DenseReluDense.wi_0.weight has shape \(32, 16\), '
                                       r'expected \(64, 16\)'):
    hf_checkpoint.params_from_hf(hf_checkpoint.config_from_hf(bad), tensors)


@pytest.mark.parametrize('hf_config, match', [
    ({'model_type': 'bart', 'architectures': ['BartForConditionalGeneration']},
     "unsupported architecture.*'bart'"),
    ({'model_type': 't5', 'architectures': ['T5EncoderModel'], 'd_model': 8},
     "architectures=\\['T5EncoderModel'\\] is not supported"),
    ({'model_type': 't5', 'd_model': 8}, r"missing fields \['d_kv'"),
    (dict(model_type='t5', d_model=8, d_kv=4, num_heads=2, num_layers=1, vocab_size=8, d_ff=8,
          feed_forward_proj='gated-quick_gelu'),
     r"feed_forward_proj='gated-quick_gelu': activation 'quick_gelu' is not supported"),
    (dict(model_type='switch_transformers', d_model=8, d_kv=4, num_heads=2, num_layers=2,
          vocab_size=8, d_ff=8, dense_act_fn='quick_gelu'),
     r"dense_act_fn='quick_gelu': activation 'quick_gelu' is not supported"),
    (dict(model_type='switch_transformers', d_model=8, d_kv=4, num_heads=2, num_layers=2,
          vocab_size=8, d_ff=8, dense_act_fn='gated-gelu'),
     r"dense_act_fn='gated-gelu'.*non-gated"),
    (dict(model_type='switch_transformers', d_model=8, d_kv=4, num_heads=2, num_layers=2,
          vocab_size=8, d_ff=8, router_bias=True), 'router_bias'),
    (dict(model_type='switch_transformers', d_model=8, d_kv=4, num_heads=2, num_layers=2,
          vocab_size=8, d_ff=8, expert_capacity=0), 'expert_capacity=0'),
])
def test_unsupported_configs(hf_config, match):
  with pytest.raises(ValueError, match=match):
    hf_checkpoint.config_from_hf(hf_config)


def test_switch_export_lists_everything_hf_cannot_express():
  moe = dataclasses.replace(SWITCH.moe, router_type='experts_choose', num_selected_experts=2,
                            decoder_router_type='tokens_choose', expert_mlp_dim=48,
                            decoder_sparse_layout='none')
  config = dataclasses.replace(SWITCH, moe=moe)
  with pytest.raises(ValueError) as err:
    hf_switch.config_to_hf(config)
  msg = str(err.value)
  for needle in ("router_type='experts_choose'", 'num_selected_experts=2', 'expert_mlp_dim=48'):
    assert needle in msg, msg


def test_switch_export_rejects_unreachable_sparse_layout():
  moe = dataclasses.replace(SWITCH.moe, encoder_sparse_layout='top', encoder_sparse_every=2)
  with pytest.raises(ValueError, match=r'sparse blocks \(2, 3\) of 4 cannot be expressed'):
    hf_switch.config_to_hf(dataclasses.replace(SWITCH, moe=moe))


def test_dense_export_of_st_moe_style_config_is_refused():
  config = dataclasses.replace(DENSE, moe=MoeConfig(extra_dense_mlp=True))
  with pytest.raises(ValueError, match='extra_dense_mlp'):
    hf_checkpoint.params_to_hf(config, {})


def test_params_missing_a_leaf_on_export(dense_hf):
  params = random_params(DENSE)
  del params['encoder']['layers_0']['mlp']['wo']
  with pytest.raises(ValueError, match='missing param encoder/layers_0/mlp/wo/kernel'):
    hf_checkpoint.params_to_hf(DENSE, params)


def test_directory_without_weights_or_config(tmp_path):
  with pytest.raises(ValueError, match='no config.json'):
    hf_checkpoint.import_hf(str(tmp_path))
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 't5'}))
  with pytest.raises(ValueError, match='none of model.safetensors, '):
    safetensors_io.read_tensors(str(tmp_path))


def test_sharded_index_naming_a_missing_shard(tmp_path, dense_hf):
  hf_config, tensors = dense_hf
  safetensors_io.write_checkpoint(str(tmp_path), hf_config, tensors, max_shard_bytes=4096)
  shards = sorted(p for p in os.listdir(tmp_path) if p.startswith('model-'))
  os.remove(tmp_path / shards[-1])
  with pytest.raises(ValueError, match=f"shard '{shards[-1]}'.* is missing"):
    safetensors_io.read_tensors(str(tmp_path))


_T5 = dict(model_type='t5', d_model=8, d_kv=4, num_heads=2, num_layers=1, vocab_size=8, d_ff=8)
_SWITCH = dict(_T5, model_type='switch_transformers', num_layers=2)


@pytest.mark.parametrize('hf_config, acts', [
    # transformers' ACT2FN: 'gelu' / 'gelu_python' are the exact erf GELU, 'gelu_new' the tanh
    # approximation; T5's 'gated-gelu' means gelu_new (HF's backwards-compatibility rule).
    (dict(_T5, feed_forward_proj='gelu'), ('gelu_exact',)),
    (dict(_T5, feed_forward_proj='gated-gelu'), ('gelu', 'linear')),
    (dict(_T5, feed_forward_proj='gated-gelu_new'), ('gelu', 'linear')),
    (dict(_T5, feed_forward_proj='gated-gelu_python'), ('gelu_exact', 'linear')),
    (dict(_T5, feed_forward_proj='gelu_new'), ('gelu',)),
    (dict(_SWITCH, dense_act_fn='gelu'), ('gelu_exact',)),
    (dict(_SWITCH, dense_act_fn='gelu_new'), ('gelu',)),
    (dict(_SWITCH, dense_act_fn='relu'), ('relu',)),
])
def test_hf_activation_names_map_to_ours_and_back(hf_config, acts):
  config = hf_checkpoint.config_from_hf(hf_config)
  assert tuple(config.mlp_activations) == acts
  exported = hf_checkpoint.family_module(config).config_to_hf(config)
  again = hf_checkpoint.config_from_hf(exported)
  assert tuple(again.mlp_activations) == acts


def test_truncated_safetensors_file_is_named(tmp_path, dense_hf):
  hf_config, tensors = dense_hf
  safetensors_io.write_checkpoint(str(tmp_path), hf_config, tensors)
  path = tmp_path / 'model.safetensors'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) - 100])
  with pytest.raises(ValueError) as err:
    hf_checkpoint.import_hf(str(tmp_path))
  msg = str(err.value)
  assert str(path) in msg and f'truncated: {len(data) - 100} bytes' in msg, msg
  assert f'describes {len(data)}' in msg and '\n' not in msg
  path.write_bytes(b'{"not": "safetensors"}')
  with pytest.raises(ValueError, match=f'{path}: unreadable safetensors file'):
    hf_checkpoint.import_hf(str(tmp_path))


def test_truncated_shard_of_a_sharded_checkpoint_is_named(tmp_path, dense_hf):
  hf_config, tensors = dense_hf
  safetensors_io.write_checkpoint(str(tmp_path), hf_config, tensors, max_shard_bytes=4096)
  shard = tmp_path / sorted(p for p in os.listdir(tmp_path) if p.startswith('model-'))[1]
  shard.write_bytes(shard.read_bytes()[:20])
  with pytest.raises(ValueError, match=f'{shard}: unreadable safetensors file \\(truncated'):
    safetensors_io.read_tensors(str(tmp_path))


def test_truncated_pytorch_checkpoint_is_named(tmp_path):
  torch = pytest.importorskip('torch')
  path = tmp_path / 'pytorch_model.bin'
  torch.save({'shared.weight': torch.zeros(64, 16)}, str(path))
  path.write_bytes(path.read_bytes()[:-200])
  with pytest.raises(ValueError, match=f'{path}: unreadable PyTorch checkpoint'):
    safetensors_io.read_tensors(str(tmp_path))


def test_group_size_below_one_is_refused():
  with pytest.raises(ValueError, match=r'group_size=0: tokens per routing group must be >= 1'):
    hf_checkpoint.config_from_hf(dict(_SWITCH), group_size=0)
  assert hf_checkpoint.config_from_hf(dict(_SWITCH)).moe.routing_groups == 'sequence'
  assert hf_checkpoint.config_from_hf(dict(_SWITCH), group_size=1).moe.group_size == 1
