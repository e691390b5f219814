"""Sparse upcycling: experts copy the dense MLP, so an MoE layer = dense MLP x combine weights."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan import config as config_lib
from moe_flan.layers.mlp import MlpBlock
from moe_flan.model import EncoderDecoder
from moe_flan.moe import MoeLayer, ROUTERS
from moe_flan.model import upcycling
from moe_flan.trainer import train_state as ts

LENGTHS = {'inputs': 8, 'targets': 8}
MOE = config_lib.MoeConfig(num_experts=4, num_selected_experts=2, expert_mlp_dim=32,
                           group_size=16, train_capacity_factor=8.0, eval_capacity_factor=8.0)


def _config(moe):
  return config_lib.T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8,
                             num_encoder_layers=2, num_decoder_layers=2, mlp_dim=32, moe=moe)


def _init(cfg, seed):
  """Random params of the model's shapes (eval_shape only: nothing is compiled)."""
  abstract = nn.meta.unbox(ts.abstract_params(EncoderDecoder(cfg), LENGTHS))
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda s: (0.3 * rs.randn(*s.shape)).astype(s.dtype), abstract)


@pytest.fixture(scope='module')
def params():
  dense = _init(_config(None), 0)
  fresh = _init(_config(MOE), 1)
  return dense, fresh, upcycling.upcycle_params(dense, fresh)


def test_experts_copy_the_dense_mlp_and_routers_stay_fresh(params):
  dense, fresh, up = params
  flat_d = flax.traverse_util.flatten_dict(dense, sep='/')
  flat_f = flax.traverse_util.flatten_dict(fresh, sep='/')
  flat_u = flax.traverse_util.flatten_dict(up, sep='/')
  n_experts = 0
  for key, value in flat_u.items():
    src = upcycling.dense_source(key)
    if '/moe/experts/' in key:
      n_experts += 1
      for e in range(MOE.num_experts):
        np.testing.assert_array_equal(value[e], flat_d[src])
    elif '/moe/router/' in key:
      np.testing.assert_array_equal(value, flat_f[key])
    else:
      np.testing.assert_array_equal(value, flat_d[key])   # backbone copied as is
  assert n_experts == 2 * 3   # encoder + decoder sparse block, wi_0 / wi_1 / wo


def test_upcycled_moe_layer_is_dense_mlp_times_combine_weight_sum(params):
  dense, _, up = params
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 16))
  mlp = MlpBlock(intermediate_dim=32, activations=('gelu', 'linear'))
  y_dense = mlp.apply({'params': dense['encoder']['layers_1']['mlp']}, x)
  moe_params = up['encoder']['layers_1']['moe']
  layer = MoeLayer(MOE, 16, 'tokens_choose', 2)
  y_moe, sown = layer.apply({'params': moe_params}, x, mutable=['moe_metrics'])
  dropped = jax.tree.leaves(sown['moe_metrics']['fraction_dropped'])[0]
  assert float(dropped) == 0.0
  # The token's combine weights, from the router kernel and the router function directly.
  logits = jnp.einsum('GTD,DE->GTE', x.reshape(1, 16, 16), moe_params['router']['kernel'])
  routing = ROUTERS['tokens_choose'](logits, jnp.ones((1, 16), bool), num_selected_experts=2,
                                     capacity=16, batch_prioritized_routing=False)
  weight_sum = jnp.sum(routing.combine_weight, axis=-1).reshape(2, 8, 1)
  assert float(jnp.max(jnp.abs(weight_sum - 1.0))) > 1e-3   # a real scaling, not identity
  np.testing.assert_allclose(y_moe, y_dense * weight_sum, rtol=1e-5, atol=1e-6)


def test_upcycling_rejects_mismatched_expert_width(params):
  dense, _, _ = params
  wide = _init(_config(config_lib.MoeConfig(num_experts=4, expert_mlp_dim=64, group_size=16)), 1)
  with pytest.raises(ValueError, match='expert_mlp_dim must equal mlp_dim'):
    upcycling.upcycle_params(dense, wide)
