"""Safetensors directories (single and sharded), dtypes, and model.gin round trips."""
import os

import ml_dtypes
import numpy as np
import pytest

from convert_fixtures import DENSE, SWITCH, flat, random_params
from moe_flan import config_gin
from moe_flan.convert import gin_config, hf_checkpoint, safetensors_io


@pytest.fixture(scope='module')
def dense_hf():
  return hf_checkpoint.params_to_hf(DENSE, random_params(DENSE))


def test_sharded_write_reads_back_exactly(tmp_path, dense_hf):
  hf_config, tensors = dense_hf
  safetensors_io.write_checkpoint(str(tmp_path), hf_config, tensors, max_shard_bytes=4096)
  names = os.listdir(tmp_path)
  shards = [n for n in names if n.startswith('model-') and n.endswith('.safetensors')]
  assert len(shards) > 2 and 'model.safetensors.index.json' in names
  assert all(n.endswith(f'-of-{len(shards):05d}.safetensors') for n in shards)
  config, back = safetensors_io.read_checkpoint(str(tmp_path))
  assert config == hf_config and back.keys() == tensors.keys()
  for k in tensors:
    assert np.array_equal(back[k], tensors[k]), k


def test_single_file_when_small(tmp_path, dense_hf):
  safetensors_io.write_checkpoint(str(tmp_path), *dense_hf)
  assert sorted(os.listdir(tmp_path)) == ['config.json', 'model.safetensors']


def test_bfloat16_checkpoint_imports_as_float32_with_the_same_values(dense_hf):
  hf_config, tensors = dense_hf
  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
  config = hf_checkpoint.config_from_hf(hf_config)
  params = flat(hf_checkpoint.params_from_hf(config, bf16))
  assert {v.dtype for v in params.values()} == {np.dtype(np.float32)}
  again = hf_checkpoint.params_to_hf(config, hf_checkpoint.params_from_hf(config, bf16))[1]
  for k, v in bf16.items():
    np.testing.assert_array_equal(again[k], v.astype(np.float32), err_msg=k)


@pytest.mark.parametrize('config', [DENSE, SWITCH], ids=['dense', 'switch'])
def test_model_gin_rebuilds_the_config(tmp_path, config):
  path = tmp_path / 'model.gin'
  path.write_text(config_gin.config_to_gin(config, header='test'))
  assert gin_config.config_from_gin([str(path)]) == config
  # Run files override these macros, so they must be macros in the model file.
  rebuilt = gin_config.config_from_gin([str(path)], ['DROPOUT_RATE = 0.05'])
  assert rebuilt.dropout_rate == 0.05


def test_switch_layouts_reproduce_hf_block_sets():
  from moe_flan.convert import hf_switch  # pylint: disable=g-import-not-at-top
  # HF's own formula, including its num_sparse = 0 "no sparse layers" hack making block 1 sparse.
  assert hf_switch.hf_sparse_blocks(4, 0) == (1,)
  assert hf_switch.hf_sparse_blocks(1, 0) == (0,)
  assert hf_switch.hf_sparse_blocks(12, 6) == (1, 3, 5, 7, 9, 11)
  assert hf_switch.hf_sparse_blocks(6, 6) == tuple(range(6))
  assert hf_switch.hf_sparse_blocks(3, 4) == ()
  for n in range(1, 9):
    for s in range(0, n + 2):
      hf_cfg = dict(model_type='switch_transformers', d_model=8, d_kv=4, num_heads=2,
                    num_layers=n, num_decoder_layers=1, vocab_size=8, d_ff=8,
                    num_sparse_encoder_layers=s, num_sparse_decoder_layers=1)
      config = hf_checkpoint.config_from_hf(hf_cfg)
      assert config.encoder_sparse_blocks() == hf_switch.hf_sparse_blocks(n, s), (n, s)
      exported = hf_switch.config_to_hf(config)
      assert hf_switch.hf_sparse_blocks(n, exported['num_sparse_encoder_layers']) == \
          config.encoder_sparse_blocks()
