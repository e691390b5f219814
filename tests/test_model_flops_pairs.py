"""FLOPs per token of the dense and sparse models the paper compares are equal, and
moe_flan/model/flops.py's forward count agrees with XLA's count of the compiled forward.

XLA counts every FLOP it runs; flops.py counts only useful matmul work (active experts, no
dispatch). With einsum dispatch the compiled forward also runs the one-hot mask einsums, the
dispatch and combine einsums (O(T * E * C * D) per group) and the experts on every capacity slot,
used or not; the test adds exactly that work (`_einsum_dispatch_flops`) to flops.py's count. What
is left is elementwise work (softmaxes, activations, norms, the router's top-k), about 1% at
tiny sizes, and less at real ones where matmuls grow faster than elementwise work.
"""
import glob
import os

import gin
import jax
import jax.numpy as jnp
import pytest

from moe_flan import config as config_lib
from moe_flan.model import EncoderDecoder, flops
from moe_flan.moe import capacity
from moe_flan.trainer import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Elementwise work XLA counts beyond the matmuls; measured 0.9-1.1% on the tiny models.
ELEMENTWISE_TOLERANCE = 0.03


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _model(name: str, bindings=()) -> config_lib.T5Config:
  gin.clear_config()
  gin.parse_config_files_and_bindings([os.path.join(REPO, 'gin', 'models', f'{name}.gin')],
                                      list(bindings))
  return config_lib.T5Config()


def _per_token(cfg: config_lib.T5Config, inputs_len: int, targets_len: int) -> float:
  return flops.forward_flops(cfg, 1, inputs_len, targets_len) / (inputs_len + targets_len)


@pytest.mark.parametrize('dense,sparse,bindings', [
    ('t5_1_1_base', 'switch_base', []),      # the paper's Switch pair: top-1, experts as wide
    # The tiny pair at Switch routing: top-1 of 8 experts each as wide as the dense MLP.
    ('t5_1_1_tiny', 'flan_moe_tiny', ['MoeConfig.num_selected_experts = 1']),
    # Top-2 keeps the FLOPs when each expert is half as wide as the dense MLP.
    ('t5_1_1_tiny', 'flan_moe_tiny', ['MoeConfig.expert_mlp_dim = 128']),
])
@pytest.mark.parametrize('lengths', [(512, 128), (2048, 512)])
def test_dense_and_sparse_pairs_have_equal_flops_per_token(dense, sparse, bindings, lengths):
  d, s = _model(dense), _model(sparse, bindings)
  assert s.moe is not None and d.moe is None
  ratio = _per_token(s, *lengths) / _per_token(d, *lengths)
  assert 1.0 < ratio < 1.05, (dense, sparse, bindings, lengths, ratio)   # + the router's D x E
  # More parameters at the same FLOPs: the point of the comparison.
  count = lambda c: sum(x.size for x in jax.tree.leaves(jax.eval_shape(
      lambda: EncoderDecoder(c).init({'params': jax.random.key(0)},
                                     jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32),
                                     jnp.ones((1, 8), jnp.int32)))))
  if dense.endswith('tiny'):    # (base sizes: eval_shape of 0.2-2B params is slow to trace)
    assert count(s) > 1.3 * count(d)


def _einsum_dispatch_flops(cfg: config_lib.T5Config, batch: int, inputs_len: int,
                           targets_len: int) -> float:
  """FLOPs the einsum dispatcher runs beyond flops.py's count in an eval-mode forward."""
  moe, d = cfg.moe, cfg.emb_dim
  expert = d * moe.expert_mlp_dim * len(moe.expert_activations) + moe.expert_mlp_dim * d
  macs = 0
  for length, blocks, k in (
      (inputs_len, cfg.encoder_sparse_blocks(), moe.num_selected_experts),
      (targets_len, cfg.decoder_sparse_blocks(), moe.decoder_effective_num_selected_experts)):
    g, t = capacity.token_groups(batch, length, moe.group_size, moe.routing_groups, False)
    c = capacity.expert_capacity(t, moe.num_experts, k, moe.eval_capacity_factor,
                                 moe.min_capacity, moe.capacity_convention)
    e = moe.num_experts
    masks = 2 * g * t * k * e * c                  # 'GTSE,GTSC->GTEC' for dispatch and combine
    move = 2 * g * t * e * c * d                   # 'GTEC,GTD->GECD' and 'GTEC,GECD->GTD'
    padding = g * e * c * expert - batch * length * k * expert   # experts on every slot
    macs += len(blocks) * (masks + move + padding)
  return 2.0 * macs


def _compiled_forward_flops(cfg: config_lib.T5Config, batch: int, inputs_len: int,
                            targets_len: int) -> float:
  model = EncoderDecoder(cfg)
  enc = jnp.ones((batch, inputs_len), jnp.int32)
  dec = jnp.ones((batch, targets_len), jnp.int32)
  params = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, enc, dec, dec))
  forward = lambda p: model.apply(p, enc, dec, dec, enable_dropout=False,
                                  mutable=['moe_metrics'])[0]
  cost = jax.jit(forward).lower(params).compile().cost_analysis()
  return float(cost['flops'])


@pytest.mark.parametrize('name', ['t5_1_1_tiny', 'flan_moe_tiny'])
def test_forward_flops_agree_with_the_compiled_forward(name):
  cfg = _model(name)
  batch, inputs_len, targets_len = 2, 32, 8
  counted = flops.forward_flops(cfg, batch, inputs_len, targets_len)
  dispatch = _einsum_dispatch_flops(cfg, batch, inputs_len, targets_len) if cfg.moe else 0.0
  if cfg.moe:
    assert cfg.moe.dispatch == 'einsum' and dispatch > 0.2 * counted
  compiled = _compiled_forward_flops(cfg, batch, inputs_len, targets_len)
  assert 1.0 <= compiled / (counted + dispatch) < 1.0 + ELEMENTWISE_TOLERANCE, (
      compiled, counted, dispatch)


PRESETS = sorted(glob.glob(os.path.join(REPO, 'gin', 'experiments', '*.gin')))


def test_there_are_experiment_presets():
  assert PRESETS, 'gin/experiments/ holds no preset'


@pytest.mark.parametrize('preset_file', PRESETS, ids=os.path.basename)
def test_experiment_presets_compare_models_of_equal_flops_per_token(preset_file):
  from moe_flan.experiments import preset  # pylint: disable=g-import-not-at-top
  cli.configure_gin(cli.Flags((preset_file,), ("EXPERIMENT_DIR = '/unused'",), ()))
  _, experiment = preset.flan_moe_experiment()
  models = {name: preset.resolve_model(spec) for name, spec in experiment.models.items()}
  dense = [name for name, cfg in models.items() if cfg.moe is None]
  baseline = experiment.dense_baseline or dense[0]
  sparse = [name for name, cfg in models.items() if cfg.moe is not None]
  assert models[baseline].moe is None and sparse
  lengths = (experiment.task_feature_lengths['inputs'], experiment.task_feature_lengths['targets'])
  reference = _per_token(models[baseline], *lengths)
  for name in sparse:
    ratio = _per_token(models[name], *lengths) / reference
    assert 1.0 < ratio < 1.05, (os.path.basename(preset_file), name, ratio)
