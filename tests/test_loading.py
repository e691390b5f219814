"""`moe_flan.load(path)`: a trained MODEL_DIR and a converted directory, as (config, params,
vocabulary), restored by the one function evaluation and inference use."""
import logging
import os
import shutil

import jax
import numpy as np
import pytest

import moe_flan
from convert_fixtures import flat, random_params
from moe_flan.config import T5Config
from moe_flan.convert import cli as convert_cli
from moe_flan.convert import hf_checkpoint
from moe_flan.trainer import builder, checkpoints, optimizers
from tasks import vocab as vocab_lib
from test_trainer_loop import DATA, tiny_model   # the trainer tests' tiny FLAN-MoE and data


def _same_params(a, b):
  fa, fb = flat(jax.device_get(a)), flat(jax.device_get(b))
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def write_model_dir(directory: str):
  """A MODEL_DIR as training leaves it (model.gin, a checkpoint of step 0 with fresh params) of
  the trainer tests' tiny FLAN-MoE; returns the params."""
  setup = builder.build(directory, tiny_model(), DATA, optimizers.OptimizerConfig(),
                        checkpoints.CheckpointConfig(async_save=False), (), seed=3)
  state, _ = setup.initial_state()
  setup.save(state, force=True)
  setup.close()
  return jax.device_get(state.params)


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('run'))
  return directory, write_model_dir(directory)


def test_load_a_trained_model_dir(model_dir):
  directory, saved = model_dir
  assert os.path.isfile(os.path.join(directory, 'model.gin'))
  config, params, vocabulary = moe_flan.load(directory)
  assert config == tiny_model()
  _same_params(params, saved)
  assert vocabulary is vocab_lib.default_vocabulary()   # what the trainer tokenized with
  # A step directory loads the same; the result also has names and says where it came from.
  loaded = moe_flan.load(os.path.join(directory, 'checkpoints', '0'))
  assert loaded.step_dir == os.path.join(directory, 'checkpoints', '0')
  assert loaded.config == config
  _same_params(loaded.params, saved)
  # Params are placed on the (default) mesh, ready for a jitted apply.
  leaf = jax.tree.leaves(params)[0]
  assert isinstance(leaf, jax.Array) and len(leaf.sharding.device_set) == jax.device_count()


def test_load_a_converted_directory(tmp_path, caplog):
  config = T5Config(vocab_size=3072, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=1,
                    num_decoder_layers=2, mlp_dim=32, mlp_activations=('gelu', 'linear'),
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)
  src, out = str(tmp_path / 'hf'), str(tmp_path / 'ckpt')
  hf_checkpoint.export_hf(config, random_params(config, seed=5), src)
  assert convert_cli.main(['--from', 'hf', '--src', src, '--out', out]) == 0
  with caplog.at_level(logging.WARNING):
    loaded = moe_flan.load(out)
  assert loaded.config == config
  _same_params(loaded.params, hf_checkpoint.import_hf(src)[1])
  # An imported model has its own tokenizer: without it, no vocabulary (and a warning saying
  # where to put it) rather than the shipped one, which would tokenize wrongly.
  assert loaded.vocabulary is None
  assert 'spiece.model' in caplog.text
  # With the HF directory's tokenizer file, the converter keeps it and load uses it.
  shutil.copy(vocab_lib.DEFAULT_SPM_PATH, os.path.join(src, 'spiece.model'))
  assert convert_cli.main(['--from', 'hf', '--src', src, '--out', out + '_spm']) == 0
  vocabulary = moe_flan.load(out + '_spm').vocabulary
  assert os.path.isfile(os.path.join(out + '_spm', 'spiece.model'))
  assert vocabulary.vocab_size == vocab_lib.default_vocabulary().vocab_size
  assert vocabulary.decode(vocabulary.encode('What is 3 plus 4?')) == 'What is 3 plus 4?'


def test_load_refuses_a_directory_without_a_model(tmp_path, model_dir):
  with pytest.raises(ValueError, match='does not exist'):
    moe_flan.load(str(tmp_path / 'nothing'))
  bare = tmp_path / 'bare'
  shutil.copytree(os.path.join(model_dir[0], 'checkpoints'), bare / 'checkpoints')
  with pytest.raises(ValueError, match=r'holds no model.gin .*moe_flan.train'):
    moe_flan.load(str(bare))


def test_vocabulary_larger_than_the_model_is_an_error(tmp_path, model_dir):
  small = tmp_path / 'small'
  shutil.copytree(model_dir[0], small)
  text = (small / 'model.gin').read_text().replace('VOCAB_SIZE = 3072', 'VOCAB_SIZE = 64')
  (small / 'model.gin').write_text(text)
  with pytest.raises(ValueError, match=r'vocabulary \(3072 ids\) does not fit .*vocab_size=64'):
    moe_flan.loading.vocabulary_for(str(small), moe_flan.loading.gin_config.config_from_gin(
        [str(small / 'model.gin')]))
