"""moe_flan/model/flops.py (the MFU numerator of the benchmarks and moe_flan.aot) against the
matmuls the model really runs: every dot_general and ragged dot in the forward pass's jaxpr,
counted at 2 FLOPs per multiply-add."""
import math

import jax
import jax.extend
import pytest

from moe_flan.model import flops
from benchmarks import train_step
from moe_flan.config import MoeConfig, T5Config
from moe_flan.model import EncoderDecoder


def _dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params['dimension_numbers']
  lhs = eqn.invars[0].aval.shape
  # Every output element takes one multiply-add per contracted lhs element.
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def _ragged_flops(eqn) -> float:
  """ragged_dot (rows sorted by group, one group's weights each): rows x K x N."""
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  return 2.0 * lhs[0] * lhs[1] * rhs[2]


def _matmul_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_flops(eqn)
    elif name == 'ragged_dot_general':
      total += _ragged_flops(eqn)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += _matmul_flops(sub) * eqn.params.get('length', 1)
  return total


def _forward_jaxpr(cfg: T5Config, batch: int, inputs_len: int, targets_len: int):
  w = train_step.Workload('w', cfg, batch, inputs_len, targets_len)
  data = train_step.random_batch(w)
  model = EncoderDecoder(cfg)
  params = jax.eval_shape(
      lambda: model.init({'params': jax.random.key(0)}, data['encoder_input_tokens'],
                         data['decoder_input_tokens'], data['decoder_target_tokens']))
  return jax.make_jaxpr(
      lambda p: model.apply(p, data['encoder_input_tokens'], data['decoder_input_tokens'],
                            data['decoder_target_tokens'], enable_dropout=False,
                            mutable=['moe_metrics']))(params).jaxpr


SMALL = dict(vocab_size=96, emb_dim=32, num_heads=4, head_dim=8, num_encoder_layers=3,
             num_decoder_layers=2, mlp_dim=48)


@pytest.mark.parametrize('moe', [
    None,
    # Dropless on ragged_dot runs exactly the routed rows through the experts, as flops.py
    # counts them; top-2 in the encoder, top-1 in the decoder.
    MoeConfig(num_experts=4, num_selected_experts=2, decoder_num_selected_experts=1,
              dispatch='dropless', grouped_matmul='ragged_dot', expert_mlp_dim=40,
              group_size=24, encoder_sparse_every=1, decoder_sparse_every=2),
], ids=['dense', 'moe'])
def test_forward_flops_equal_the_models_matmuls(moe):
  cfg = T5Config(**SMALL, moe=moe)
  batch, inputs_len, targets_len = 3, 8, 6
  counted = _matmul_flops(_forward_jaxpr(cfg, batch, inputs_len, targets_len))
  # The combine (each token's weighted sum of its k expert outputs) is an einsum too; flops.py
  # leaves it out with the rest of the dispatch work.
  combine = 0.0
  if moe:
    combine = 2.0 * batch * cfg.emb_dim * (
        inputs_len * moe.num_selected_experts * len(cfg.encoder_sparse_blocks())
        + targets_len * moe.decoder_num_selected_experts * len(cfg.decoder_sparse_blocks()))
    assert combine > 0
  model = flops.forward_flops(cfg, batch, inputs_len, targets_len)
  assert model + combine == pytest.approx(counted, rel=1e-12)
  assert flops.train_step_flops(cfg, batch, inputs_len, targets_len) == 3 * model
