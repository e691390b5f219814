"""Distillation (gin/runs/distill.gin): the loss against NumPy, alpha = 1 is the plain train step,
an identical teacher gives KL 0 and no KL gradient, the teacher stays bit-identical, a short run
lowers the KL and resumes exactly, 8 devices (teacher expert-parallel, student data-parallel)
equal 1, and bad input fails before anything compiles."""
import dataclasses
import json
import os
import re

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan import config as config_lib
from moe_flan import config_gin, partitioning
from moe_flan.convert import checkpoint_dir
from moe_flan.model import distillation
from moe_flan.trainer import builder, checkpoints as ck, cli, data as data_lib, distill, gin_checks
from moe_flan.trainer import loop
from moe_flan.trainer import model_setup, optimizers, train_state as ts
from moe_flan.trainer import train_step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures('persistent_compilation_cache')

DATA = data_lib.DataConfig('flan_embedded', {'inputs': 32, 'targets': 8}, batch_size=8,
                           truncation_check_examples=0)
# The student: dense, tiny. The teacher: a sparse encoder with 8 experts (one per device of the
# 8-device expert-parallel mesh).
STUDENT_BINDINGS = [
    'T5Config.emb_dim = 16', 'T5Config.num_heads = 2', 'T5Config.head_dim = 8',
    'T5Config.mlp_dim = 16', 'T5Config.num_encoder_layers = 1', 'T5Config.num_decoder_layers = 1',
]


def student_model(**kw) -> config_lib.T5Config:
  base = dict(vocab_size=3072, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=1,
              num_decoder_layers=1, mlp_dim=16)
  return config_lib.T5Config(**{**base, **kw})


def teacher_model(**kw) -> config_lib.T5Config:
  moe = config_lib.MoeConfig(num_experts=8, num_selected_experts=2, expert_mlp_dim=16,
                             group_size=64, encoder_sparse_layout='all',
                             decoder_sparse_layout='none', load_balancing_loss_weight=0.01)
  return config_lib.T5Config(**{**dict(vocab_size=3072, emb_dim=24, num_heads=2, head_dim=8,
                                       num_encoder_layers=1, num_decoder_layers=1, mlp_dim=16,
                                       moe=moe), **kw})


def _optimizer(lr=1e-2):
  return optimizers.OptimizerConfig(schedule=optimizers.ScheduleConfig(base_learning_rate=lr))


def _partitioner(mesh_shape=(1, 1, 1)):
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  return partitioning.Partitioner(partitioning.make_mesh(mesh_shape, devices),
                                  partitioning.logical_axis_rules())


def _save_random(directory, config, seed, params=None):
  """A converted-checkpoint directory (state/ and model.gin) with random params of `config`
  (drawn in NumPy: no init to compile), or `params`; returns (directory, params)."""
  if params is None:
    rng = np.random.default_rng(seed)
    abstract = model_setup.build_model_setup(config, _partitioner()).abstract_params
    params = jax.tree.map(
        lambda a: (rng.normal(size=a.shape) / np.sqrt(a.shape[0] if a.ndim > 1 else 1.0)
                   ).astype(np.float32), abstract)
  checkpoint_dir.save(str(directory), params, config)
  return str(directory), params


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  """The sparse teacher's params and model.gin, as `moe_flan.convert` leaves them."""
  return _save_random(tmp_path_factory.mktemp('teacher'), teacher_model(), seed=1)[0]


# ---- the loss -----------------------------------------------------------------------------------
def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_matches_numpy_at_temperature():
  rng = np.random.default_rng(0)
  b, l, v, t, alpha = 2, 3, 7, 2.5, 0.3
  student = rng.normal(size=(b, l, v)).astype(np.float32) * 3
  teacher = rng.normal(size=(b, l, v)).astype(np.float32) * 3
  targets = np.array([[3, 1, 0], [6, 2, 5]], np.int32)        # one padding token
  batch = {'decoder_target_tokens': jnp.asarray(targets)}
  config = student_model(vocab_size=v)
  loss, metrics = distillation.distillation_loss(config, jnp.asarray(student),
                                                 jnp.asarray(teacher), batch, None, alpha, t)
  w = (targets > 0).astype(np.float64)
  log_p, log_q = _np_log_softmax(teacher / t), _np_log_softmax(student / t)
  kl = ((np.exp(log_p) * (log_p - log_q)).sum(-1) * w).sum() / w.sum()
  log_s = _np_log_softmax(student.astype(np.float64))
  ce = -(np.take_along_axis(log_s, targets[..., None], -1)[..., 0] * w).sum() / w.sum()
  log_z = np.log(np.exp(student.astype(np.float64)).sum(-1))
  z = 1e-4 * ((log_z ** 2) * w).sum() / w.sum()               # compute_loss's default z-loss
  np.testing.assert_allclose(metrics['distill/kl'], kl, rtol=1e-5)
  np.testing.assert_allclose(metrics['cross_entropy'], ce, rtol=1e-5)
  np.testing.assert_allclose(loss, alpha * ce + (1 - alpha) * t * t * kl + z, rtol=1e-5)
  log_t = _np_log_softmax(teacher.astype(np.float64))
  teacher_ce = -(np.take_along_axis(log_t, targets[..., None], -1)[..., 0] * w).sum() / w.sum()
  np.testing.assert_allclose(metrics['distill/teacher_cross_entropy'], teacher_ce, rtol=1e-5)
  # The written-out gradient of the KL term: T^2 * (softmax(s/T) - softmax(u/T)) / T * w / sum w.
  grad = jax.grad(lambda s: distillation.kl_divergence(s, jnp.asarray(teacher), batch, t))(
      jnp.asarray(student))
  expected = (np.exp(log_q) - np.exp(log_p)) / t * (w / w.sum())[..., None]
  np.testing.assert_allclose(grad, expected, atol=1e-7)


def test_identical_logits_give_zero_kl_and_zero_kl_gradient():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 11)) * 4, jnp.float32)
  batch = {'decoder_target_tokens': jnp.ones((2, 4), jnp.int32)}
  kl, grad = jax.value_and_grad(lambda s: distillation.kl_divergence(s, logits, batch, 3.0))(logits)
  assert float(kl) == 0.0
  assert not np.any(np.asarray(grad))


@pytest.mark.parametrize('alpha,temperature,match', [
    (1.5, 2.0, r'DistillConfig.alpha=1.5 must be in \[0, 1\]'),
    (-0.1, 2.0, r'DistillConfig.alpha=-0.1 must be in \[0, 1\]'),
    (0.5, 0.0, r'DistillConfig.temperature=0.0 must be > 0'),
    (0.5, -1.0, r'DistillConfig.temperature=-1.0 must be > 0'),
])
def test_bad_alpha_or_temperature(alpha, temperature, match):
  with pytest.raises(ValueError, match=match):
    distill.DistillConfig('/tmp/teacher', alpha=alpha, temperature=temperature)


# ---- the step -----------------------------------------------------------------------------------
def _batch(seed=0, b=8):
  rng = np.random.default_rng(seed)
  targets = rng.integers(1, 3072, (b, 8)).astype(np.int32)
  targets[:, -2:] = 0                                           # padding
  return {'encoder_input_tokens': rng.integers(1, 3072, (b, 32)).astype(np.int32),
          'decoder_input_tokens': np.concatenate([np.zeros((b, 1), np.int32),
                                                  targets[:, :-1]], 1),
          'decoder_target_tokens': targets,
          'decoder_loss_weights': (targets > 0).astype(np.float32)}


def _setup(model_dir, student, teacher_path, partitioner=None, **distill_kw):
  cfg = distill.DistillConfig(teacher_path, **distill_kw)
  return builder.build(str(model_dir), student, DATA, _optimizer(), ck.CheckpointConfig(period=100),
                       (), 0, partitioner=partitioner or _partitioner(), distill=cfg)


def test_alpha_one_is_the_plain_train_step_and_the_teacher_stays_bit_identical(teacher_dir,
                                                                               tmp_path):
  student = teacher_model(emb_dim=16)        # sparse: its aux losses are part of both steps
  setup = _setup(tmp_path, student, teacher_dir, alpha=1.0, temperature=3.0)
  state, _ = setup.initial_state()
  batch = setup.shard(_batch())
  plain = jax.jit(step_lib.make_train_step(setup.parts.model, student, setup.parts.tx,
                                           setup.parts.schedule, setup.parts.frozen))
  with setup.parts.partitioner.activate():
    want_state, want = plain(state, batch)
  step = setup.jit_train_step()
  got_state, got = step(state, batch)
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  assert float(got['distill/kl']) > 0 and float(got['distill/teacher_cross_entropy']) > 0
  for a, b in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(want_state.params)):
    np.testing.assert_array_equal(a, b)
  for i in range(2):                          # more steps: the teacher never changes
    got_state, _ = step(got_state, setup.shard(_batch(i + 1)))
  saved = ck.load_params(teacher_dir)
  held = {k: np.asarray(v) for k, v in
          flax.traverse_util.flatten_dict(setup.teacher_params, sep='/').items()}
  assert held.keys() == saved.keys()
  for k, v in saved.items():
    assert held[k].dtype == v.dtype and held[k].tobytes() == v.tobytes(), k
  setup.close()


def test_a_teacher_identical_to_the_student_gives_zero_kl_and_no_kl_gradient(tmp_path):
  student = student_model()                  # dense, no dropout: train mode == eval mode
  path, params = _save_random(tmp_path / 'twin', student, seed=2)
  setup = _setup(tmp_path / 'run', student, path, alpha=0.0, temperature=2.0)
  forward = setup.parts.teacher.train_forward(setup.parts.model, student)
  batch = setup.shard(_batch())
  metric = lambda name: lambda p: forward(p, batch, jax.random.PRNGKey(0),
                                          setup.teacher_params)[1][name]
  with setup.parts.partitioner.activate():
    kl, kl_grads = jax.jit(jax.value_and_grad(metric('distill/kl')))(setup.teacher_params)
    ce_grads = jax.jit(jax.grad(metric('cross_entropy')))(setup.teacher_params)
  largest = lambda tree: max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(tree))
  # The two forwards are compiled apart, so their logits may differ in the last bits: zero up to
  # float32 rounding (the loss-level test above checks exact zeros on identical logits).
  assert abs(float(kl)) < 1e-7
  assert largest(kl_grads) < 1e-5 * largest(ce_grads)
  setup.close()


# The teacher's routing groups: 8 x 32 input tokens make 8 groups of 32, one per device of the
# (1, 8, 1) mesh, so the shard_map dispatcher runs its all-to-all instead of falling back.
TEACHER_GROUPS = ('MoeConfig.group_size = 32',)


def _distill_steps(setup, start, steps=2):
  """Per-step metrics and the final params, host copies, of `steps` distillation steps from the
  host state `start` on the batches _batch(0), _batch(1), ..."""
  state, metrics = jax.device_put(start, setup.parts.state_shardings), []
  step = setup.jit_train_step()
  for i in range(steps):
    state, m = step(state, setup.shard(_batch(i)))
    metrics.append(jax.device_get(m))
  params = jax.device_get(state.params)
  setup.close()
  return metrics, params


def _assert_same_run(got, want, rtol=2e-5, param_rtol=1e-4):
  for a, b in zip(want[0], got[0]):
    for k in ('loss', 'cross_entropy', 'distill/kl', 'distill/teacher_cross_entropy',
              'grad_norm'):
      np.testing.assert_allclose(b[k], a[k], rtol=rtol, err_msg=k)
  for a, b in zip(jax.tree.leaves(want[1]), jax.tree.leaves(got[1])):
    np.testing.assert_allclose(b, a, rtol=param_rtol, atol=1e-6)


@pytest.fixture(scope='module')
def one_device(teacher_dir, tmp_path_factory):
  """(start state, (metrics, params)): the plain distillation step on one device, two steps."""
  setup = _setup(tmp_path_factory.mktemp('one_device'), student_model(), teacher_dir,
                 alpha=0.5, temperature=2.0, teacher_bindings=TEACHER_GROUPS)
  start = jax.device_get(setup.initial_state()[0])   # host copy: the steps donate the state
  return start, _distill_steps(setup, start)


def test_8_devices_teacher_expert_parallel_equals_1_device(teacher_dir, tmp_path, one_device):
  """Mesh (1, 8, 1): the teacher's 8 experts one per device, the dense student's batch split
  8 ways (data parallel) -- against one device, over two steps."""
  start, want = one_device
  setup = _setup(tmp_path, student_model(), teacher_dir, _partitioner((1, 8, 1)), alpha=0.5,
                 temperature=2.0, teacher_bindings=TEACHER_GROUPS)
  experts = [v for k, v in jax.tree_util.tree_leaves_with_path(setup.teacher_params)
             if 'experts' in jax.tree_util.keystr(k)]
  assert experts and all(v.sharding.spec[0] == 'expert' for v in experts)
  _assert_same_run(_distill_steps(setup, start), want)


def test_8_devices_teacher_under_the_shard_map_overlay_equals_1_device(teacher_dir, tmp_path,
                                                                       one_device):
  """gin/partitioning/expert_parallel_shard_map.gin on the run: the teacher (its model file says
  'einsum') takes the overlay's shard_map dispatcher, the step holds its all-to-all, and two
  steps equal the einsum teacher's on one device."""
  start, want = one_device
  cfg = distill.DistillConfig(teacher_dir, teacher_bindings=TEACHER_GROUPS)
  args = (student_model(), DATA, _optimizer(), ck.CheckpointConfig(period=100), (), 0)
  partitioner = _partitioner((1, 8, 1))         # all built before gin binds the run's values
  _configure(STUDENT_BINDINGS + [f"MODEL_DIR = '{tmp_path}'",
                                 f"TEACHER_CHECKPOINT_PATH = '{teacher_dir}'"],
             overlay='expert_parallel_shard_map.gin')
  try:
    setup = builder.build(str(tmp_path), *args, partitioner=partitioner, distill=cfg)
  finally:
    gin.clear_config()
  assert setup.parts.teacher.config.moe.dispatch == 'expert_parallel'
  state = jax.device_put(start, setup.parts.state_shardings)
  with partitioner.activate():
    hlo = setup.parts.jit_train_step().lower(state, setup.shard(_batch()),
                                             setup.teacher_params).as_text()
  assert 'all_to_all' in hlo
  _assert_same_run(_distill_steps(setup, start), want)


@pytest.mark.parametrize('option', [{'reuse_step_buffers': True}, {'num_microbatches': 2}])
def test_step_options_equal_the_plain_distill_step(teacher_dir, tmp_path, one_device, option):
  """The teacher inside the step with OptimizerConfig's step options: buffers kept from step to
  step, and gradient accumulation over 2 microbatches (each holds as many real target tokens,
  so their mean equals the whole batch's loss) -- two steps equal the plain step's."""
  start, want = one_device
  cfg = distill.DistillConfig(teacher_dir, alpha=0.5, temperature=2.0,
                              teacher_bindings=TEACHER_GROUPS)
  optimizer = dataclasses.replace(_optimizer(), **option)
  setup = builder.build(str(tmp_path), student_model(), DATA, optimizer,
                        ck.CheckpointConfig(period=100), (), 0, partitioner=_partitioner(),
                        distill=cfg)
  _assert_same_run(_distill_steps(setup, start), want, rtol=1e-5, param_rtol=1e-5)


# ---- the run type -------------------------------------------------------------------------------
def _configure(bindings, overlay='expert_parallel.gin'):
  files = [os.path.join(REPO, 'gin', 'models', 't5_1_1_tiny.gin'),
           os.path.join(REPO, 'gin', 'runs', 'distill.gin'),
           os.path.join(REPO, 'gin', 'partitioning', overlay)]
  cli.configure_gin(cli.Flags(tuple(files), tuple(bindings), ()))


def _distill_run(model_dir, teacher_dir, steps, plots=True):
  _configure(STUDENT_BINDINGS + [f'RunConfig.write_plots = {plots}',
      f"MODEL_DIR = '{model_dir}'", f"TEACHER_CHECKPOINT_PATH = '{teacher_dir}'",
      f'TRAIN_STEPS = {steps}', "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}",
      'BATCH_SIZE = 8', 'DROPOUT_RATE = 0.1', 'LOG_PERIOD = 1', 'CHECKPOINT_PERIOD = 2',
      'EVAL_PERIOD = 0', 'LEARNING_RATE = 3e-2', 'DataConfig.truncation_check_examples = 0'])
  try:
    return loop.train()
  finally:
    gin.clear_config()


def test_the_teacher_gin_is_parsed_apart_from_the_run(tmp_path):
  _configure(STUDENT_BINDINGS + [f"MODEL_DIR = '{tmp_path}'", "TEACHER_CHECKPOINT_PATH = '/t'"])
  try:
    before = config_lib.T5Config()
    # A read of the run's configuration (as run_layout_bindings reads MoeConfig.dispatch) still
    # counts after the teacher's gin files were parsed and the run's put back.
    assert 'DistillConfig.teacher_checkpoint_path' in gin_checks.unused_bindings(())
    gin_checks.query_parameter('DistillConfig.teacher_checkpoint_path')
    teacher = distill.model_config_from_gin('models/flan_moe_tiny.gin',   # under gin/, as --gin_file
                                            ['MoeConfig.num_experts = 4'])
    assert 'DistillConfig.teacher_checkpoint_path' not in gin_checks.unused_bindings(())
    assert teacher.emb_dim == 128 and teacher.moe.num_experts == 4
    assert teacher.dropout_rate == 0.0            # its own macros, not the run's DROPOUT_RATE
    assert config_lib.T5Config() == before and before.moe is None and before.emb_dim == 16
    assert gin.config_is_locked()
    assert gin.query_parameter('DistillConfig.teacher_checkpoint_path') is not None
  finally:
    gin.clear_config()


def _records(model_dir):
  with open(os.path.join(model_dir, 'metrics', 'train.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_distill_run_lowers_the_kl_and_resumes_exactly(teacher_dir, tmp_path):
  """gin/runs/distill.gin on 8 devices (expert_parallel.gin), the teacher's config from the
  model.gin beside its checkpoint; dropout on, so the resumed run must replay the same keys."""
  ref, resumed = str(tmp_path / 'ref'), str(tmp_path / 'resumed')
  _distill_run(ref, teacher_dir, 6)
  _distill_run(resumed, teacher_dir, 2, plots=False)
  assert _distill_run(resumed, teacher_dir, 6, plots=False).step == 6
  want, got = _records(ref), _records(resumed)
  assert [r['step'] for r in got] == list(range(1, 7))
  for key in ('loss', 'cross_entropy', 'distill/kl', 'distill/teacher_cross_entropy'):
    assert [r[key] for r in got] == [r[key] for r in want], key
  kl = [r['distill/kl'] for r in want]
  assert kl[-1] < 0.8 * kl[0], kl
  assert os.path.isfile(os.path.join(ref, 'loss_curves.png'))
  with open(os.path.join(ref, distill.TEACHER_GIN)) as f:
    assert 'MoeConfig.num_experts = 8' in f.read()
  with open(os.path.join(ref, 'model.gin')) as f:
    assert 'T5Config.moe = None' in f.read()            # moe_flan.load gives the student


# ---- bad input ----------------------------------------------------------------------------------
@pytest.fixture
def no_compiling(monkeypatch):
  monkeypatch.setattr(builder.TrainSetup, 'initial_state',
                      lambda self: pytest.fail('reached state initialisation'))
  monkeypatch.setattr(builder.StepParts, 'jit_train_step',
                      lambda self, reuse=None: pytest.fail('reached the train step'))


def _one_line_error(match, fn, *args, **kw):
  """The error's first line matches `match`; nothing else but what gin appends (the
  configurable it was calling) follows it."""
  with pytest.raises(ValueError) as e:
    fn(*args, **kw)
  first, *rest = str(e.value).splitlines()
  assert re.search(match, first), first
  assert all('In call to configurable' in line for line in rest), rest


def test_different_vocabularies_are_named(teacher_dir, tmp_path, no_compiling):
  _one_line_error(r'teacher T5Config.vocab_size=3072 \(.*model.gin\) vs student '
                  r'T5Config.vocab_size=3200', _setup, tmp_path, student_model(vocab_size=3200),
                  teacher_dir)


def test_a_checkpoint_of_another_teacher_is_named(teacher_dir, tmp_path, no_compiling):
  other = tmp_path / 'other.gin'
  other.write_text(config_gin.config_to_gin(teacher_model(emb_dim=32)))
  _one_line_error(r'teacher checkpoint .*teacher.* does not match the teacher config .*other.gin '
                  r'\(28 params differ\): decoder/decoder_norm/scale: model \(32,\) vs '
                  r'checkpoint \(24,\); .*; and 22 more', _setup, tmp_path / 'run', student_model(),
                  teacher_dir, teacher_gin=str(other))


def test_a_missing_teacher_checkpoint_is_named(tmp_path, no_compiling):
  _one_line_error(r"TEACHER_CHECKPOINT_PATH: .*'/no/such/teacher' does not exist", _setup,
                  tmp_path, student_model(), '/no/such/teacher')


def test_bad_settings_through_gin_fail_before_building(teacher_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(builder, 'build', lambda *a, **k: pytest.fail('reached the build'))
  for binding, match in (('DISTILL_ALPHA = 1.5', r'alpha=1.5 must be in \[0, 1\]'),
                         ('DISTILL_TEMPERATURE = 0.0', r'temperature=0.0 must be > 0')):
    _configure(STUDENT_BINDINGS + [f"MODEL_DIR = '{tmp_path}'", binding,
                                   f"TEACHER_CHECKPOINT_PATH = '{teacher_dir}'"])
    try:
      _one_line_error(match, loop.train)
    finally:
      gin.clear_config()


def test_teacher_groups_that_do_not_divide_under_the_shard_map_overlay_are_named(
    teacher_dir, tmp_path, no_compiling):
  """The teacher's 8 x 32 input tokens in groups of 64 make 4 groups, which do not divide over
  the 8 devices: its all-to-all could not run, said at build time."""
  cfg = distill.DistillConfig(teacher_dir)
  args = (student_model(), DATA, _optimizer(), ck.CheckpointConfig(period=100), (), 0)
  partitioner = _partitioner((1, 8, 1))
  _configure(STUDENT_BINDINGS + [f"MODEL_DIR = '{tmp_path}'",
                                 f"TEACHER_CHECKPOINT_PATH = '{teacher_dir}'"],
             overlay='expert_parallel_shard_map.gin')
  try:
    _one_line_error(r"MoeConfig.dispatch='expert_parallel': the teacher encoder \(inputs length "
                    r'32, batch 8\) forms 4 routing group\(s\) of MoeConfig.group_size=64 .* '
                    r'''--gin.DistillConfig.teacher_bindings="\['MoeConfig.group_size = 32'\]"$''',
                    builder.build, str(tmp_path), *args,
                    partitioner=partitioner, distill=cfg)
  finally:
    gin.clear_config()


def test_teacher_params_held_in_a_lower_dtype(teacher_dir, tmp_path):
  setup = _setup(tmp_path, student_model(), teacher_dir, teacher_param_dtype='bfloat16')
  dtypes = {v.dtype for v in jax.tree.leaves(setup.teacher_params)}
  assert dtypes == {jnp.dtype('bfloat16')}
  setup.close()


def test_the_teacher_runs_in_eval_mode(teacher_dir):
  """A teacher whose train capacity drops most tokens: the step's teacher logits are its
  eval-mode logits (eval capacity factor, no dropout), not its train-mode ones.
  `teacher_bindings` reach the teacher's config only."""
  cfg = distill.DistillConfig(teacher_dir, teacher_bindings=(
      'MoeConfig.train_capacity_factor = 0.1', 'MoeConfig.min_capacity = 1'))
  teacher = distill.build_teacher(cfg, student_model(), _partitioner())
  assert teacher.config.moe.train_capacity_factor == 0.1
  params = teacher.restore_params()
  batch = {k: jnp.asarray(v) for k, v in _batch(b=2).items()}
  apply = lambda train: teacher.side.model.apply(
      {'params': params}, **ts.model_inputs(batch), enable_dropout=train,
      rngs={'dropout': jax.random.PRNGKey(0)})
  got, eval_mode, train_mode = jax.jit(
      lambda: (teacher.logits(params, batch), apply(False), apply(True)))()
  np.testing.assert_array_equal(got, eval_mode)
  assert not np.allclose(got, train_mode, atol=1e-3)
