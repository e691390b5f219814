"""`python -m moe_flan.convert`: HF dir -> moe_flan checkpoint -> HF dir, gin fitting, upcycling."""
import os
import subprocess
import sys

import numpy as np
import pytest

from convert_fixtures import DENSE, SWITCH, flat, random_params
from moe_flan.config import T5Config
from moe_flan.convert import checkpoint_dir, cli, gin_config, hf_checkpoint, safetensors_io
from moe_flan.trainer import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hf_dir(tmp_path, config, name):
  out = str(tmp_path / name)
  hf_checkpoint.export_hf(config, random_params(config, seed=3), out)
  return out


@pytest.mark.parametrize('config', [DENSE, SWITCH], ids=['t5', 'switch'])
def test_import_then_export_reproduces_every_tensor(tmp_path, config):
  src = _hf_dir(tmp_path, config, 'hf')
  assert cli.main(['--from', 'hf', '--src', src, '--out', str(tmp_path / 'ckpt'),
                   '--group_size', '8']) == 0
  # The trainer's own loader reads the directory (INITIAL_CHECKPOINT_PATH).
  loaded = checkpoints.load_params(str(tmp_path / 'ckpt'), None)
  assert set(loaded) == set(flat(hf_checkpoint.import_hf(src, group_size=8)[1]))
  # model.gin rebuilds the config; export needs no --gin_file then.
  rebuilt = gin_config.config_from_gin([str(tmp_path / 'ckpt' / 'model.gin')])
  assert rebuilt == config
  assert cli.main(['--to', 'hf', '--src', str(tmp_path / 'ckpt'),
                   '--out', str(tmp_path / 'hf2')]) == 0
  a = safetensors_io.read_tensors(src)
  b = safetensors_io.read_tensors(str(tmp_path / 'hf2'))
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
  assert (safetensors_io.read_config(src) == safetensors_io.read_config(str(tmp_path / 'hf2')))


def test_dense_import_upcycled_into_sparse_gin_model(tmp_path):
  """FLAN-MoE tiny's backbone as a dense HF T5 -> experts copy the dense MLPs, fresh routers."""
  gin_args = ['--gin_file=models/flan_moe_tiny.gin', '--gin.VOCAB_SIZE=64']
  target = gin_config.config_from_gin(['models/flan_moe_tiny.gin'], ['VOCAB_SIZE = 64'])
  dense = T5Config(**{f: getattr(target, f) for f in (
      'vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'num_encoder_layers',
      'num_decoder_layers', 'mlp_dim', 'mlp_activations', 'logits_via_embedding')})
  src = _hf_dir(tmp_path, dense, 'hf')
  out = str(tmp_path / 'ckpt')
  assert cli.main(['--from', 'hf', '--src', src, '--out', out] + gin_args) == 0
  got = checkpoint_dir.load_params(out)
  want = flat(hf_checkpoint.import_hf(src)[1])
  got_flat = flat(got)
  sparse = {f'encoder/layers_{i}' for i in target.encoder_sparse_blocks()}
  sparse |= {f'decoder/layers_{i}' for i in target.decoder_sparse_blocks()}
  assert sparse, 'the gin model must have sparse blocks'
  for block in sparse:
    for w in ('wi_0', 'wi_1', 'wo'):
      experts = got_flat[f'{block}/moe/experts/{w}']
      assert experts.shape[0] == target.moe.num_experts
      for e in range(experts.shape[0]):
        np.testing.assert_array_equal(experts[e], want[f'{block}/mlp/{w}/kernel'])
    router = got_flat[f'{block}/moe/router/kernel']
    assert router.std() > 0   # fresh init, not zeros
  for key, value in want.items():
    if not any(key.startswith(b + '/mlp/') for b in sparse):
      np.testing.assert_array_equal(got_flat[key], value, err_msg=key)
  with open(os.path.join(out, 'model.gin')) as f:
    assert "MoeConfig.router_type = 'tokens_choose'" in f.read()


def test_import_into_a_gin_model_that_does_not_fit(tmp_path, capsys):
  src = _hf_dir(tmp_path, DENSE, 'hf')
  code = cli.main(['--from', 'hf', '--src', src, '--out', str(tmp_path / 'ckpt'),
                   '--gin_file=models/t5_1_1_tiny.gin'])
  err = capsys.readouterr().err
  assert code == 2
  assert 'T5Config.vocab_size: checkpoint 64, gin 3072' in err
  assert 'T5Config.emb_dim: checkpoint 16, gin 128' in err
  assert not os.path.exists(tmp_path / 'ckpt' / 'state')


def test_export_without_any_model_config(tmp_path, capsys):
  src = _hf_dir(tmp_path, DENSE, 'hf')
  assert cli.main(['--from', 'hf', '--src', src, '--out', str(tmp_path / 'ckpt')]) == 0
  os.remove(tmp_path / 'ckpt' / 'model.gin')
  assert cli.main(['--to', 'hf', '--src', str(tmp_path / 'ckpt'),
                   '--out', str(tmp_path / 'o')]) == 2
  assert 'no --gin_file given' in capsys.readouterr().err


def test_module_entry_point_runs():
  out = subprocess.run([sys.executable, '-m', 'moe_flan.convert', '--help'], cwd=REPO,
                       capture_output=True, text=True, timeout=120, check=True)
  assert '--from' in out.stdout and '--to' in out.stdout


def test_upcycling_refuses_experts_unlike_the_dense_mlp(tmp_path, capsys):
  src = _hf_dir(tmp_path, DENSE, 'hf')
  code = cli.main(['--from', 'hf', '--src', src, '--out', str(tmp_path / 'ckpt'),
                   '--gin_file=models/flan_moe_tiny.gin', '--gin.VOCAB_SIZE=64',
                   '--gin.T5Config.emb_dim=16', '--gin.T5Config.num_heads=2',
                   '--gin.T5Config.head_dim=8', '--gin.T5Config.mlp_dim=32',
                   '--gin.T5Config.relative_attention_num_buckets=8',
                   '--gin.T5Config.relative_attention_max_distance=16',
                   "--gin.MoeConfig.expert_activations=('silu', 'linear')"])
  err = capsys.readouterr().err
  assert code == 2, err
  assert "MoeConfig.expert_activations=('silu', 'linear')" in err
  assert 'MoeConfig.expert_mlp_dim=256: upcycled experts copy a dense MLP of width 32' in err


def test_switch_import_into_gin_model_with_our_default_routing(tmp_path):
  """Routing settings carry no params: a Switch checkpoint fits a tokens_choose gin model."""
  src = _hf_dir(tmp_path, SWITCH, 'hf')
  assert cli.main(['--from', 'hf', '--src', src, '--out', str(tmp_path / 'a')]) == 0
  out = str(tmp_path / 'b')
  assert cli.main(['--from', 'hf', '--src', src, '--out', out,
                   f'--gin_file={tmp_path}/a/model.gin',
                   "--gin.MoeConfig.router_type='tokens_choose'",
                   '--gin.MoeConfig.train_capacity_factor=1.25',
                   '--gin.MoeConfig.eval_capacity_factor=2.0']) == 0
  with open(os.path.join(out, 'model.gin')) as f:
    assert "MoeConfig.router_type = 'tokens_choose'" in f.read()
  a = flat(checkpoint_dir.load_params(str(tmp_path / 'a')))
  b = flat(checkpoint_dir.load_params(out))
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_truncated_checkpoint_is_one_error_line(tmp_path, capsys):
  src = _hf_dir(tmp_path, DENSE, 'hf')
  weights = os.path.join(src, 'model.safetensors')
  with open(weights, 'rb') as f:
    data = f.read()
  with open(weights, 'wb') as f:
    f.write(data[:len(data) // 2])
  assert cli.main(['--from', 'hf', '--src', src, '--out', str(tmp_path / 'ckpt')]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f'error: {weights}: unreadable safetensors file (truncated: ')
  assert '\n' not in err and not os.path.exists(tmp_path / 'ckpt')


@pytest.mark.parametrize('value', ['0', '-4', 'x'])
def test_group_size_below_one_is_a_usage_error(tmp_path, capsys, value):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['--from', 'hf', '--src', str(tmp_path), '--out', str(tmp_path / 'o'),
              '--group_size', value])
  assert exit_info.value.code == 2
  assert 'argument --group_size: expected an integer >= 1, got ' in capsys.readouterr().err


def test_gin_files_are_found_as_the_trainer_finds_them(tmp_path, capsys, monkeypatch):
  """From outside the repository: the search-path form works, a path that is nowhere (e.g.
  gin/models/X.gin relative to another directory) is one error line naming the search path
  and the file meant; a missing include as well."""
  monkeypatch.chdir(tmp_path)
  src = _hf_dir(tmp_path, DENSE, 'hf')
  args = ['--from', 'hf', '--src', src, '--gin.VOCAB_SIZE=64']
  code = cli.main(args + ['--out', str(tmp_path / 'a'), '--gin_file=gin/models/flan_moe_tiny.gin'])
  err = capsys.readouterr().err.strip()
  assert code == 2 and '\n' not in err, err
  assert err.startswith('error: --gin_file=gin/models/flan_moe_tiny.gin: no such file relative to ')
  assert os.path.join(REPO, 'gin') in err and 'did you mean models/flan_moe_tiny.gin' in err
  (tmp_path / 'broken.gin').write_text("include 'models/no_such_model.gin'\n")
  assert cli.main(args + ['--out', str(tmp_path / 'b'), '--gin_file=broken.gin']) == 2
  err = capsys.readouterr().err.strip()
  assert 'models/no_such_model.gin' in err and 'Searched config paths' in err
  assert os.path.join(REPO, 'gin') in err and '\n' not in err
  assert gin_config.config_from_gin(['models/flan_moe_tiny.gin']).moe is not None
