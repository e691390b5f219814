"""Train step: freezing keeps frozen params bit-identical, microbatching equals one big batch."""
import functools

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest

from moe_flan import config as config_lib
from moe_flan.model import EncoderDecoder
from moe_flan.trainer import freezing, optimizers, train_state as ts, train_step as step_lib

LENGTHS = {'inputs': 8, 'targets': 8}


def tiny_config(**moe_overrides):
  # One block per stack, both sparse: the smallest model with every param group (fast compile).
  moe = dict(num_experts=4, num_selected_experts=2, expert_mlp_dim=16, group_size=64,
             train_capacity_factor=8.0, eval_capacity_factor=8.0, min_capacity=4,
             encoder_sparse_layout='all', decoder_sparse_layout='all')
  moe.update(moe_overrides)
  return config_lib.T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8,
                             num_encoder_layers=1, num_decoder_layers=1, mlp_dim=16,
                             moe=config_lib.MoeConfig(**moe))


def fake_batch(seed=0, batch=8, length=8):
  r = np.random.RandomState(seed)
  tgt = r.randint(2, 64, (batch, length)).astype(np.int32)
  return {'encoder_input_tokens': r.randint(2, 64, (batch, length)).astype(np.int32),
          'decoder_target_tokens': tgt,
          'decoder_input_tokens': np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
          'decoder_loss_weights': np.ones_like(tgt, np.float32)}


@functools.lru_cache(maxsize=None)
def _params(cfg):
  """The model and random params of its shapes (eval_shape only: init is not compiled)."""
  model = EncoderDecoder(cfg)
  rs = np.random.RandomState(0)
  abstract = nn.meta.unbox(ts.abstract_params(model, LENGTHS))
  return model, jax.tree.map(lambda s: (0.2 * rs.randn(*s.shape)).astype(s.dtype), abstract)


# No aux losses (they are not linear in the batch) and no drops (capacity factor 8), so
# microbatching must reproduce the full batch; one config shared by all tests (compiles once).
CFG = tiny_config(load_balancing_loss_weight=0.0, router_z_loss_weight=0.0)


@functools.lru_cache(maxsize=None)
def _run(cfg, frozen_groups=(), num_microbatches=1, steps=2, lr=1e-2):
  model, params = _params(cfg)
  ocfg = optimizers.OptimizerConfig(schedule=optimizers.ScheduleConfig(base_learning_rate=lr),
                                    min_dim_size_to_factor=4, num_microbatches=num_microbatches)
  schedule = optimizers.make_schedule(ocfg.schedule)
  tx = freezing.with_freezing(optimizers.make_optimizer(ocfg, schedule), params, frozen_groups)
  mask = freezing.frozen_mask(params, frozen_groups)
  step = jax.jit(step_lib.make_train_step(model, cfg, tx, schedule, mask, num_microbatches))
  state = ts.new_state(params, tx, jax.random.PRNGKey(1))
  history = []
  for i in range(steps):
    state, metrics = step(state, fake_batch(i))
    history.append(jax.device_get(metrics))
  return params, state, history


def test_param_groups_by_path():
  assert freezing.param_group('encoder/layers_1/moe/router/kernel') == 'router'
  assert freezing.param_group('decoder/layers_1/moe/experts/wi_0') == 'experts'
  assert freezing.param_group('token_embedder/embedding') == 'embeddings'
  assert freezing.param_group('decoder/logits_dense/kernel') == 'embeddings'
  assert freezing.param_group('encoder/layers_0/mlp/wi_0/kernel') == 'non_expert'
  assert freezing.param_group('encoder/layers_1/attention/query/kernel') == 'non_expert'
  with pytest.raises(ValueError, match='frozen_groups'):
    freezing.check_groups(['gate'])


def test_frozen_params_stay_bit_identical():
  frozen = ('router', 'experts')    # the paper's gate / expert freezing ablations together
  params0, state, history = _run(CFG, frozen_groups=frozen)
  flat0 = flax.traverse_util.flatten_dict(params0, sep='/')
  flat1 = flax.traverse_util.flatten_dict(jax.device_get(state.params), sep='/')
  moved = {g: 0 for g in freezing.GROUPS}
  for k, v0 in flat0.items():
    group = freezing.param_group(k)
    v0, v1 = np.asarray(v0), np.asarray(flat1[k])
    if group in frozen:
      assert v0.tobytes() == v1.tobytes(), f'frozen {k} changed'
    else:
      assert not np.array_equal(v0, v1), f'trainable {k} did not move'
      moved[group] += 1
  assert moved['non_expert'] > 0 and moved['embeddings'] == 2
  # Frozen params carry no optimizer state (set_to_zero): fewer state numbers than unfrozen.
  _, state_all, _ = _run(CFG)
  n_frozen = sum(np.size(x) for x in jax.tree.leaves(state.opt_state))
  assert n_frozen < sum(np.size(x) for x in jax.tree.leaves(state_all.opt_state))
  assert all(np.isfinite(h['loss']) for h in history)


def test_frozen_mask_covers_embeddings():
  _, params = _params(CFG)
  mask = flax.traverse_util.flatten_dict(freezing.frozen_mask(params, ['embeddings']), sep='/')
  assert {k for k, f in mask.items() if f} == {'token_embedder/embedding',
                                               'decoder/logits_dense/kernel'}


def test_microbatches_accumulate_to_the_full_batch_gradient():
  _, s1, h1 = _run(CFG)
  _, s2, h2 = _run(CFG, num_microbatches=2)
  for i in range(2):
    np.testing.assert_allclose(h1[i]['loss'], h2[i]['loss'], rtol=1e-5)
    np.testing.assert_allclose(h1[i]['grad_norm'], h2[i]['grad_norm'], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_metrics_hold_moe_per_layer_arrays():
  _, _, history = _run(CFG)
  m = history[0]
  assert m['moe/expert_load_per_layer'].shape == (2, 4)   # 1 sparse block per stack, E=4
  np.testing.assert_allclose(m['moe/expert_load_per_layer'].sum(-1), 1.0, rtol=1e-5)
  assert m['moe/fraction_dropped_per_layer'].shape == (2,)
  for name in ('loss', 'accuracy', 'grad_norm', 'learning_rate', 'moe/load_balancing_loss',
               'moe/router_z_loss', 'num_tokens'):
    assert np.ndim(m[name]) == 0, name
  assert m['num_tokens'] == 64
