"""Freezing parameter groups (the paper's finetuning ablations) and switching the MoE auxiliary
losses off: the masks select exactly the router / expert / non-expert params (checked against a
listing built from logical axis names and the config's sparse blocks, not from freezing's path
rules), frozen params stay bit-identical through train steps, and bad requests fail clearly."""
import os

import flax
import flax.linen as nn
import gin
import jax
import numpy as np
import pytest

from moe_flan import config as config_lib
from moe_flan.model import EncoderDecoder
from moe_flan.trainer import freezing, train_state as ts

from test_trainer_train_step import CFG, LENGTHS, _params, _run, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _gin_config(files, bindings=()) -> config_lib.T5Config:
  gin.clear_config()
  gin.add_config_file_search_path(os.path.join(REPO, 'gin'))
  gin.parse_config_files_and_bindings([os.path.join(REPO, f) for f in files], list(bindings))
  return config_lib.T5Config()


def _independent_groups(cfg: config_lib.T5Config) -> dict[str, set[str]]:
  """Each param's group from its logical axis names and the config's sparse blocks."""
  boxed = flax.traverse_util.flatten_dict(
      ts.abstract_params(EncoderDecoder(cfg), LENGTHS), sep='/')
  routers = {f'{stack}/layers_{i}/moe/router/kernel'
             for stack, blocks in (('encoder', cfg.encoder_sparse_blocks()),
                                   ('decoder', cfg.decoder_sparse_blocks())) for i in blocks}
  groups = {g: set() for g in freezing.GROUPS}
  for path, box in boxed.items():
    names = box.names
    if path in routers:
      # The gate: one [D, E] projection per sparse block.
      assert box.value.shape == (cfg.emb_dim, cfg.moe.num_experts), path
      groups['router'].add(path)
    elif 'expert' in names:
      groups['experts'].add(path)
    elif 'vocab' in names:
      groups['embeddings'].add(path)
    else:
      groups['non_expert'].add(path)
  return groups


@pytest.mark.parametrize('files,bindings', [
    (['gin/models/flan_moe_tiny.gin'], []),
    # ST-MoE's extra dense MLP in sparse blocks and an experts-choose encoder router.
    (['gin/models/flan_moe_tiny.gin'], ['MoeConfig.extra_dense_mlp = True',
                                        "MoeConfig.router_type = 'experts_choose'",
                                        "MoeConfig.decoder_router_type = 'tokens_choose'",
                                        "MoeConfig.encoder_sparse_layout = 'all'"]),
])
def test_masks_select_exactly_each_group(files, bindings):
  cfg = _gin_config(files, bindings)
  expected = _independent_groups(cfg)
  params = nn.meta.unbox(ts.abstract_params(EncoderDecoder(cfg), LENGTHS))
  n_sparse = len(cfg.encoder_sparse_blocks()) + len(cfg.decoder_sparse_blocks())
  assert len(expected['router']) == n_sparse
  assert len(expected['experts']) == 3 * n_sparse        # wi_0, wi_1, wo per sparse block
  for group in freezing.GROUPS:
    mask = flax.traverse_util.flatten_dict(freezing.frozen_mask(params, [group]), sep='/')
    assert {k for k, f in mask.items() if f} == expected[group], group
  both = flax.traverse_util.flatten_dict(
      freezing.frozen_mask(params, ['router', 'experts']), sep='/')
  assert {k for k, f in both.items() if f} == expected['router'] | expected['experts']


def test_frozen_non_expert_params_stay_bit_identical_while_the_moe_trains():
  # (test_trainer_train_step freezes the router and experts; this is the complement.)
  group = 'non_expert'
  params0, state, history = _run(CFG, frozen_groups=(group,))
  flat0 = flax.traverse_util.flatten_dict(params0, sep='/')
  flat1 = flax.traverse_util.flatten_dict(state.params, sep='/')
  frozen = flax.traverse_util.flatten_dict(freezing.frozen_mask(params0, [group]), sep='/')
  assert any(frozen.values())
  for k, v0 in flat0.items():
    v0, v1 = np.asarray(v0), np.asarray(flat1[k])
    if frozen[k]:
      assert v0.tobytes() == v1.tobytes(), f'frozen {k} changed'
    else:
      assert not np.array_equal(v0, v1), f'trainable {k} did not move'
  # set_to_zero keeps no optimizer state for the frozen group.
  _, state_all, _ = _run(CFG)
  count = lambda s: sum(np.size(x) for x in jax.tree.leaves(s.opt_state))
  assert count(state) < count(state_all)
  assert all(np.isfinite(h['loss']) for h in history)


def test_dense_model_refuses_router_and_expert_freezing():
  _, params = _params(tiny_config())
  dense_cfg = config_lib.T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8,
                                  num_encoder_layers=1, num_decoder_layers=1, mlp_dim=16)
  dense = nn.meta.unbox(ts.abstract_params(EncoderDecoder(dense_cfg), LENGTHS))
  for group in ('router', 'experts'):
    with pytest.raises(ValueError, match=f"frozen_groups: '{group}' selects no parameter"):
      freezing.frozen_mask(dense, [group])
    assert any(flax.traverse_util.flatten_dict(freezing.frozen_mask(params, [group])).values())
  mask = freezing.frozen_mask(dense, ['non_expert'])   # a dense model's own groups still work
  assert any(flax.traverse_util.flatten_dict(mask).values())


def test_bad_group_names_fail_in_one_line():
  with pytest.raises(ValueError, match="unknown group 'gate'"):
    freezing.check_groups(['gate'])
  with pytest.raises(ValueError, match=r"give a list of groups, e.g. \['router'\]"):
    freezing.check_groups('router')


def test_finetune_gin_switches_the_aux_losses_off():
  files = ['gin/models/flan_moe_tiny.gin', 'gin/runs/finetune.gin']
  required = ["MODEL_DIR = '/unused'", "MIXTURE_OR_TASK_NAME = 'emb_nli'"]
  kept = _gin_config(files, required).moe
  assert kept.load_balancing_loss_weight == 0.01 and kept.router_z_loss_weight == 1e-3
  off = _gin_config(files, required + ['LOAD_BALANCING_LOSS_WEIGHT = 0.0',
                                       'MoeConfig.router_z_loss_weight = 0.0']).moe
  assert off.load_balancing_loss_weight == 0.0 and off.router_z_loss_weight == 0.0
  # With both weights 0 the trained loss is the token loss alone, though the routers' losses
  # are still measured (test_losses checks the weighted sum when they are on).
  for h in _run(CFG)[2]:
    np.testing.assert_allclose(h['loss'], h['cross_entropy'] + h['z_loss'], rtol=1e-6)
    assert h['moe/load_balancing_loss'] > 0.5 and h['moe/router_z_loss'] > 0
