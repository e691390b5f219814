"""The train loop end to end on a tiny FLAN-MoE: train, checkpoint, restore, continue; metrics,
TensorBoard events and plots; NaN guard; bad input rejected before anything compiles."""
import dataclasses
import glob
import json
import os

import numpy as np
import pytest

from moe_flan import config as config_lib
from moe_flan.trainer import builder, checkpoints as ck, data as data_lib, loop, nan_guard
from moe_flan.trainer import optimizers, plots


pytestmark = pytest.mark.usefixtures('persistent_compilation_cache')


def tiny_model(emb_dim=16, vocab_size=3072):  # 3072: the shipped vocabulary's size
  moe = config_lib.MoeConfig(num_experts=4, num_selected_experts=2, expert_mlp_dim=16,
                             group_size=64, encoder_sparse_layout='all',
                             decoder_sparse_layout='all')
  return config_lib.T5Config(vocab_size=vocab_size, emb_dim=emb_dim, num_heads=2, head_dim=8,
                             num_encoder_layers=1, num_decoder_layers=1, mlp_dim=16, moe=moe)


# (the start-up truncation check is tested in test_trainer_cli; it costs seconds per build here)
# Four tasks of the embedded mixture: still a sampled mixture, at a tenth of the pipeline set-up
# cost of all 45 (building a train or validation pipeline costs ~0.15 s of CPU per task).
DATA = data_lib.DataConfig('flan_embedded_n4', {'inputs': 32, 'targets': 8}, batch_size=8,
                           truncation_check_examples=0)


def _train(model_dir, steps, lr=1e-2, period=2, model=None, **run):
  return loop.train(str(model_dir), model or tiny_model(), DATA,
                    loop.RunConfig(train_steps=steps, log_period=1, **run),
                    optimizers.OptimizerConfig(schedule=optimizers.ScheduleConfig(
                        base_learning_rate=lr)),
                    ck.CheckpointConfig(period=period))


def _records(model_dir, split='train'):
  with open(os.path.join(model_dir, 'metrics', f'{split}.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('run'))
  first = _train(model_dir, 4, eval_period=2, eval_steps=1)
  after_first = _records(model_dir)
  second = _train(model_dir, 6, eval_period=2, eval_steps=1)
  return model_dir, first, after_first, second


def test_train_checkpoint_restore_continue(trained):
  model_dir, first, after_first, second = trained
  assert first.step == 4 and second.step == 6
  assert [r['step'] for r in after_first] == [1, 2, 3, 4]
  records = _records(model_dir)
  assert [r['step'] for r in records] == [1, 2, 3, 4, 5, 6]
  assert records[:4] == after_first            # the continuation did not rewrite history
  assert sorted(int(d) for d in os.listdir(os.path.join(model_dir, 'checkpoints'))
                if d.isdigit()) == [2, 4, 6]
  with open(os.path.join(model_dir, 'mesh.json')) as f:   # what the run ran on
    assert json.load(f) == {'mesh': {'data': 8, 'expert': 1, 'model': 1}, 'processes': 1,
                            'devices': 8, 'local_devices': 8, 'platform': 'cpu',
                            'moe_dispatch': 'einsum'}
  assert os.path.isfile(os.path.join(model_dir, 'config.gin'))
  for r in records:
    for key in ('loss', 'accuracy', 'moe/load_balancing_loss', 'moe/router_z_loss', 'z_loss',
                'learning_rate', 'grad_norm', 'step_time', 'tokens_per_second'):
      assert np.isfinite(r[key]), key
    assert np.asarray(r['moe/expert_load_per_layer']).shape == (2, 4)
    assert np.asarray(r['moe/fraction_dropped_per_layer']).shape == (2,)
  assert [r['step'] for r in _records(model_dir, 'eval')] == [2, 4, 6]
  assert glob.glob(os.path.join(model_dir, 'train', 'events.out.tfevents.*'))
  assert glob.glob(os.path.join(model_dir, 'eval', 'events.out.tfevents.*'))
  for png in (plots.LOSS_PNG, plots.EXPERT_PNG):
    with open(os.path.join(model_dir, png), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_model_dir_of_another_shape_is_refused_before_compiling(trained, monkeypatch):
  model_dir = trained[0]
  monkeypatch.setattr(builder.TrainSetup, 'initial_state',
                      lambda self: pytest.fail('reached state initialisation'))
  with pytest.raises(ValueError, match=r'(?s)refusing to resume.*token_embedder/embedding: '
                                       r'model \(3072, 32\) vs checkpoint \(3072, 16\)'):
    _train(model_dir, 8, model=tiny_model(emb_dim=32))


@pytest.mark.parametrize('setting,value,match', [
    ('task', 'no_such_task', "MIXTURE_OR_TASK_NAME='no_such_task' is not a registered"),
    ('init', '/no/such/checkpoint', "'/no/such/checkpoint' does not exist"),
    ('vocab', 3071, r"T5Config.vocab_size=3071 is smaller than the 'inputs' vocabulary of "
                    r"'flan_embedded_n4' \(3072 ids\)"),
    ('batch', 6, r'batch size 6 is not divisible by the 8 batch partitions'),
])
def test_bad_input_fails_before_compiling(tmp_path, monkeypatch, setting, value, match):
  """...and before MODEL_DIR is created: no empty run directory is left behind."""
  monkeypatch.setattr(builder.TrainSetup, 'initial_state',
                      lambda self: pytest.fail('reached state initialisation'))
  data = DATA
  if setting == 'task':
    data = dataclasses.replace(DATA, mixture_or_task_name=value)
  if setting == 'batch':
    data = dataclasses.replace(DATA, batch_size=value)
  ckpt = ck.CheckpointConfig(initial_checkpoint_path=value if setting == 'init' else None)
  model_dir = tmp_path / 'run'
  with pytest.raises(ValueError, match=match):
    model = tiny_model(vocab_size=value) if setting == 'vocab' else tiny_model()
    loop.train(str(model_dir), model, data, loop.RunConfig(train_steps=1),
               optimizers.OptimizerConfig(), ckpt)
  assert not model_dir.exists()


def test_nan_guard_stops_and_never_saves_nan(tmp_path):
  # An absurd learning rate blows the params up after the first update.
  with pytest.raises(nan_guard.NonFiniteError, match=r'step \d+: (loss|grad_norm|params)'):
    _train(tmp_path, 6, lr=1e30, period=1)
  cp = ck.Checkpointer(str(tmp_path), ck.CheckpointConfig(period=1))
  steps = cp.manager.all_steps()
  cp.close()
  records = _records(str(tmp_path))
  bad_step = len(records) + 1 if all(np.isfinite(r['loss']) for r in records) else None
  for step in steps:
    if bad_step is not None:
      assert step < bad_step
    flat = ck.load_params(os.path.join(str(tmp_path), 'checkpoints', str(step)), None)
    assert all(np.all(np.isfinite(v)) for v in flat.values()), f'checkpoint {step} holds NaN'


def test_host_slices_give_every_process_count_the_same_global_batches():
  """Two processes' slices of batches 3 and 4 (a resume point) stack to the global batches one
  process reads: the data order does not depend on how many hosts read it."""
  one = data_lib.host_slices(DATA, 0, 1, start_batch=3)
  halves = [data_lib.host_slices(DATA, i, 2, start_batch=3) for i in (0, 1)]
  for _ in range(2):
    whole = next(one)
    first, second = next(halves[0]), next(halves[1])
    assert whole['encoder_input_tokens'].shape[0] == DATA.batch_size
    for k, v in whole.items():
      np.testing.assert_array_equal(np.concatenate([first[k], second[k]]), v, err_msg=k)
  assert not np.array_equal(first['encoder_input_tokens'], second['encoder_input_tokens'])
