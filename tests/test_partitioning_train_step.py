"""A full train step (the trainer's `make_train_step`: forward, loss, backward, AdamW update) of a
tiny sparse EncoderDecoder gives the same loss, metrics and updated params on every mesh as on
one device, for every dispatch path, with params and optimizer state born sharded and batches fed
per process."""
import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from moe_flan import partitioning
from moe_flan.config import MoeConfig, T5Config
from moe_flan.moe import DISPATCHERS
from moe_flan.model import EncoderDecoder
from moe_flan.trainer import builder
from moe_flan.trainer import train_state as ts
from moe_flan.trainer import train_step as step_lib

B, LI, LT, V = 8, 8, 4, 64
NUM_STEPS = 2


def _config(dispatch: str) -> T5Config:
  moe = MoeConfig(num_experts=4, num_selected_experts=2, dispatch=dispatch, group_size=4,
                  expert_mlp_dim=16, min_capacity=1, train_capacity_factor=1.0,
                  encoder_sparse_layout='all', decoder_sparse_layout='all',
                  load_balancing_loss_weight=0.01, router_z_loss_weight=1e-3)
  # One block per stack, both sparse: every kind of layer once, and a short compile.
  return T5Config(vocab_size=V, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=1,
                  num_decoder_layers=1, mlp_dim=32, moe=moe)


def _batches():
  rng = np.random.default_rng(0)
  out = []
  for _ in range(NUM_STEPS):
    targets = rng.integers(1, V, (B, LT)).astype(np.int32)
    targets[-1, -1] = 0                                    # some padding
    out.append({
        'encoder_input_tokens': rng.integers(1, V, (B, LI)).astype(np.int32),
        'decoder_input_tokens': np.concatenate([np.zeros((B, 1), np.int32), targets[:, :-1]], 1),
        'decoder_target_tokens': targets,
        'decoder_loss_weights': (targets > 0).astype(np.float32),
    })
  return out


# eps well above float32 noise: Adam divides by sqrt(v), which would blow a gradient that is
# zero up to rounding (1e-9 here, -1e-9 there) into a full-size update of random sign.
TX = optax.adamw(1e-2, eps=1e-3)


@functools.lru_cache(maxsize=None)
def _initial_state(mesh_shape, fsdp=False):
  """(partitioner, TrainState shardings, step-0 state born sharded) on one mesh and rule table
  (`fsdp`: gin/partitioning/fsdp.gin's, parameters' embed axis over 'data').

  Cached per mesh and shared by every dispatcher: the parameter tree, its logical axes and its
  initial values do not depend on the dispatch path, and the init compile costs seconds. The
  steps never donate their input, so the cached state stays valid.
  """
  model = EncoderDecoder(_config('einsum'))
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  partitioner = partitioning.Partitioner(partitioning.make_mesh(mesh_shape, devices),
                                         partitioning.logical_axis_rules(fsdp=fsdp))
  init = ts.init_params_fn(model, {'inputs': LI, 'targets': LT})
  with partitioner.activate():
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    param_shardings = partitioner.shardings(boxed)
  params = nn.meta.unbox(boxed)
  flat_specs = {k: v.spec for k, v in builder.flax.traverse_util.flatten_dict(
      param_shardings, sep='/').items()}
  opt_shardings = builder.opt_state_shardings(jax.eval_shape(TX.init, params),
                                              ts.param_shapes(params), flat_specs,
                                              partitioner.mesh)
  repl = partitioner.replicated
  shardings = ts.TrainState(step=repl, params=param_shardings, opt_state=opt_shardings, rng=repl)

  def fresh(rng):
    values = jax.tree.map(lambda b: b.value, init(rng), is_leaf=lambda b: hasattr(b, 'names'))
    return ts.new_state(values, TX, rng)

  with partitioner.activate():
    state = jax.jit(fresh, out_shardings=shardings)(jax.random.PRNGKey(0))
  return partitioner, shardings, state


def _train(dispatch: str, mesh_shape=(1, 1, 1), fsdp=False):
  """Runs NUM_STEPS steps; returns (per-step metrics, final params as numpy, final state)."""
  config = _config(dispatch)
  model = EncoderDecoder(config)
  partitioner, shardings, state = _initial_state(tuple(mesh_shape), fsdp)
  frozen = jax.tree.map(lambda _: False, state.params)
  step = step_lib.make_train_step(model, config, TX, lambda s: 1e-2, frozen)
  history = []
  repl = partitioner.replicated
  with partitioner.activate():
    jitted = jax.jit(step, in_shardings=(shardings, partitioner.data_sharding),
                     out_shardings=(shardings, repl))
    for batch in _batches():
      state, metrics = jitted(state, partitioner.shard_batch(batch))
      history.append(jax.device_get(metrics))
  return history, jax.device_get(state.params), state


@functools.lru_cache(maxsize=None)
def _one_device(dispatch: str):
  """The one-device run of `dispatch`, computed once and shared by all its meshes."""
  # 'expert_parallel' and 'scatter' give the same numbers (tests/test_partitioning_moe.py);
  # on one device the scatter path needs no shard_map.
  history, params, _ = _train('scatter' if dispatch == 'expert_parallel' else dispatch)
  return history, params


def _assert_same_run(got, want):
  (g_hist, g_params), (w_hist, w_params) = got, want
  for g, w in zip(g_hist, w_hist):
    for name in ('loss', 'cross_entropy', 'accuracy', 'grad_norm'):
      if name in w:
        np.testing.assert_allclose(g[name], w[name], rtol=2e-5, atol=1e-6, err_msg=name)
  flat_g = jax.tree_util.tree_flatten_with_path(g_params)[0]
  flat_w = jax.tree.leaves(w_params)
  for (path, a), b in zip(flat_g, flat_w):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=jax.tree_util.keystr(path))


def _check_against_one_device(dispatch: str, mesh_shape, fsdp=False):
  """NUM_STEPS steps of `dispatch` on `mesh_shape` == its one-device run; params stay sharded."""
  history, params, state = _train(dispatch, mesh_shape, fsdp)
  _assert_same_run((history, params), _one_device(dispatch))
  assert history[1]['loss'] < history[0]['loss'] + 1.0   # a sane, finite run
  experts = state.params['encoder']['layers_0']['moe']['experts']['wi_0']
  want = partitioning.Partitioner(partitioning.make_mesh(mesh_shape),
                                  partitioning.logical_axis_rules(fsdp=fsdp)).spec_for(
      ('expert', 'embed', 'mlp'), experts.shape)
  assert experts.sharding.spec == want  # the updated params stay sharded
  assert ('data' in jax.tree.leaves(tuple(want))) == (fsdp and mesh_shape[0] > 1)


# The layouts of gin/partitioning/*.gin on 8 devices: (mesh, FSDP rule). expert_parallel_shard_map
# is expert_parallel's layout with the 'expert_parallel' dispatcher, so it is one of the cases.
OVERLAYS = {
    'data_parallel': ((8, 1, 1), False),
    'expert_parallel': ((2, 4, 1), False),
    'expert_model_parallel': ((1, 4, 2), False),
    'expert_model_parallel-2x2x2': ((2, 2, 2), False),
    'fsdp': ((8, 1, 1), True),
}


# Every built-in dispatch path in DISPATCHERS (a new entry is covered too) under every overlay,
# each against its own one-device run (computed once per dispatcher). (2, 2, 2) shards all three
# axes (batch over data x expert, 2 of the 4 experts per expert shard, expert weights split over
# 'model'); fsdp also splits every weight's embed axis over 'data'.
@pytest.mark.parametrize('overlay', list(OVERLAYS))
@pytest.mark.parametrize('dispatch', list(DISPATCHERS))
def test_train_step_matches_one_device(dispatch, overlay):
  _check_against_one_device(dispatch, *OVERLAYS[overlay])
