"""FLOPs per token of the paper's base-size sparse models over T5.1.1-base, as their published
flaxformer configs (flaxformer/t5x/configs/moe/models/*_base.gin) imply them.

Only Switch (top-1, experts as wide as the dense MLP) does the dense model's work per token.
The others, as published, do more, and the gin files keep them as published:
  GShard (tokens_choose_base): top-2 in every 4th layer -> 3 of 12 MLPs per stack run twice;
  ST-MoE (st_moe_base): top-2 every 4th layer plus an extra dense MLP in each sparse block ->
    3 of 12 MLPs per stack run three times;
  experts-choose (experts_choose_base): every 2nd layer; the encoder's experts fill
    capacity-factor (1.0) * T / E slots each (no factor k), one expert per token on average;
    the decoder routes top-2 -> 6 of 12 decoder MLPs run twice.
The expected ratio is counted here from those layouts (extra MLP work and the routers' D x E
logits per sparse layer) on top of the dense count, apart from flops.py's per-layer loop.
"""
import dataclasses
import os

import gin
import pytest

from moe_flan import config as config_lib
from moe_flan.model import flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _model(name: str) -> config_lib.T5Config:
  gin.clear_config()
  gin.parse_config_files_and_bindings([os.path.join(REPO, 'gin', 'models', f'{name}.gin')], [])
  return config_lib.T5Config()


# name: (sparse layers per stack, active MLPs per encoder token, per decoder token, in a sparse
# block (experts, plus ST-MoE's extra dense MLP), number of experts); the flaxformer configs'.
LAYOUTS = {
    'switch_base': (6, 1, 1, 128),
    'gshard_base': (3, 2, 2, 64),
    'st_moe_base': (3, 3, 3, 64),
    'expert_choice_base': (6, 1, 2, 64),
}
# The ratios the published configs imply at (inputs, targets) = (512, 128) and (2048, 512).
DOCUMENTED = {'switch_base': (1.005, 1.004), 'gshard_base': (1.126, 1.100),
              'st_moe_base': (1.250, 1.198), 'expert_choice_base': (1.052, 1.042)}


@pytest.mark.parametrize('name', sorted(LAYOUTS))
def test_paper_models_flops_per_token_over_t5_base(name):
  dense, sparse = _model('t5_1_1_base'), _model(name)
  layers, enc_active, dec_active, experts = LAYOUTS[name]
  assert (len(sparse.encoder_sparse_blocks()), len(sparse.decoder_sparse_blocks()),
          sparse.moe.num_experts) == (layers, layers, experts)
  d, f = dense.emb_dim, dense.mlp_dim
  mlp = d * f * 2 + f * d                       # gated-GELU MLP multiply-adds per token
  assert sparse.moe.expert_mlp_dim == f
  for (li, lt), documented in zip([(512, 128), (2048, 512)], DOCUMENTED[name]):
    extra = layers * (li * ((enc_active - 1) * mlp + d * experts) +
                      lt * ((dec_active - 1) * mlp + d * experts))
    base = flops.forward_flops(dense, 1, li, lt)
    ratio = flops.forward_flops(sparse, 1, li, lt) / base
    assert ratio == pytest.approx((base + 2 * extra) / base, rel=1e-12)
    assert ratio == pytest.approx(documented, abs=1e-3)


def test_experts_choose_work_follows_the_capacity_convention():
  cfg = _model('expert_choice_base')
  li, lt = 512, 128
  ours = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, capacity_convention='ours'))
  # Under our convention each expert has cf * k * T / E slots: k = 2 MLPs per encoder token
  # (cf = 1) in each of the 6 sparse encoder layers instead of 1.
  d, f, k = cfg.emb_dim, cfg.mlp_dim, cfg.moe.num_selected_experts
  assert (k, cfg.moe.train_capacity_factor) == (2, 1.0)
  added = 6 * li * (d * f * 2 + f * d) * (k - 1)
  assert flops.forward_flops(ours, 1, li, lt) - flops.forward_flops(cfg, 1, li, lt) == \
      pytest.approx(2 * added)
