"""Sharded MoE layer == unsharded, on 8 simulated devices, for every dispatch path; and the
compiled expert-parallel step moves tokens with all-to-all, never the expert weights."""
import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan import partitioning
from moe_flan.config import MoeConfig
from moe_flan.moe import MoeLayer, dispatch_expert_parallel, resharding

from conftest import DISABLE_OPTIMIZATIONS_ENV

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

B, L, D, F = 8, 8, 8, 16     # 64 tokens in 8 groups of 8: the groups split over data x expert
MESHES = [(8, 1, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)]


def _layer(dispatch: str, num_experts: int, router_type: str = 'tokens_choose', k: int = 2,
           group_size: int = 8):
  cfg = MoeConfig(num_experts=num_experts, num_selected_experts=k, router_type=router_type,
                  dispatch=dispatch, group_size=group_size, expert_mlp_dim=F, min_capacity=1,
                  # capacity 3 < the 4 = 2 * 8 / 4 selections an expert gets on average: tokens
                  # are dropped, so every path must drop the same ones
                  eval_capacity_factor=0.75, decoder_sparse_layout='none')
  return MoeLayer(cfg, D, router_type, k)


def _inputs():
  kx, kp, kc = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (B, L, D))
  mask = np.ones((B, L), np.float32)
  mask[5, -3:] = 0.0                                   # padding is never routed
  return x, jnp.asarray(mask), jax.random.normal(kc, (B, L, D)), kp


def _loss_fn(layer, cotangent):
  def loss(params, x, mask):
    y, state = layer.apply({'params': params}, x, mask, mutable=['moe_metrics'])
    lb = state['moe_metrics']['load_balancing_loss'][0]
    return jnp.sum(y * cotangent) + lb, y
  return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


def _values(boxed):
  """Strips the logical-partitioning boxes (without the sharding constraint `unbox` adds)."""
  return jax.tree.map(lambda b: b.value, boxed, is_leaf=lambda b: hasattr(b, 'unbox'))


def _run(layer, partitioner=None):
  """Loss, output and gradients (params, x) under jit; sharded when a partitioner is given."""
  x, mask, cot, kp = _inputs()
  params = layer.init(kp, x, mask)['params']
  fn = _loss_fn(layer, cot)
  if partitioner is None:
    out = jax.jit(fn)(_values(params), x, mask)
    return jax.device_get(out)
  with partitioner.activate():
    shardings = partitioner.shardings(params)
    params = jax.device_put(_values(params), shardings)
    x, mask = jax.device_put((x, mask), partitioner.data_sharding)
    out = jax.jit(fn, in_shardings=(shardings, partitioner.data_sharding,
                                    partitioner.data_sharding))(params, x, mask)
    return jax.device_get(out)


@functools.lru_cache(maxsize=None)
def _unsharded(dispatch, num_experts, router_type='tokens_choose', k=2, group_size=8):
  # expert_parallel without a mesh is the scatter path; compute the reference with 'scatter'.
  ref_dispatch = 'scatter' if dispatch == 'expert_parallel' else dispatch
  return _run(_layer(ref_dispatch, num_experts, router_type, k, group_size))


def _assert_close(got, want):
  (g_loss, g_y), g_grads = got
  (w_loss, w_y), w_grads = want
  np.testing.assert_allclose(g_loss, w_loss, rtol=1e-5)
  np.testing.assert_allclose(g_y, w_y, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_grads), jax.tree.leaves(w_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _partitioner(shape, **rules):
  return partitioning.Partitioner(partitioning.make_mesh(shape),
                                  partitioning.logical_axis_rules(**rules))


@pytest.mark.parametrize('mesh_shape', MESHES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('dispatch', ['einsum', 'scatter', 'segmented', 'dropless', 'expert_parallel'])
def test_sharded_layer_matches_one_device(dispatch, mesh_shape):
  want = _unsharded(dispatch, 4)
  got = _run(_layer(dispatch, 4), _partitioner(mesh_shape))
  _assert_close(got, want)


@pytest.mark.parametrize('dispatch,num_experts,mesh_shape,rules', [
    ('expert_parallel', 8, (1, 4, 2), {}),              # 2 experts per device, F over 'model'
    ('expert_parallel', 2, (2, 4, 1), {}),              # fewer experts than partitions: replicas
    ('expert_parallel', 8, (2, 2, 2), {'fsdp': True}),  # expert weights also over 'data'
    ('einsum', 2, (2, 4, 1), {}),                       # XLA path with replicated experts
], ids=['EP_E8_P4', 'EP_E2_P4_replicas', 'EP_E8_fsdp', 'einsum_E2_P4'])
def test_expert_counts_vs_expert_partitions(dispatch, num_experts, mesh_shape, rules):
  want = _unsharded(dispatch, num_experts)
  got = _run(_layer(dispatch, num_experts), _partitioner(mesh_shape, **rules))
  _assert_close(got, want)


# 4 groups of 16 tokens on 8 batch partitions: the group axis does not divide the mesh, so the
# layer leaves its layout to XLA (resharding.constrain) instead of padding it.
@pytest.mark.parametrize('dispatch', ['einsum', 'scatter', 'segmented', 'dropless'])
def test_fewer_groups_than_batch_partitions_match_one_device(dispatch):
  want = _unsharded(dispatch, 4, group_size=16)
  got = _run(_layer(dispatch, 4, group_size=16), _partitioner((8, 1, 1)))
  _assert_close(got, want)


# XLA's SPMD partitioner logs this when a constraint has no efficient layout change from the
# array's sharding (a padded group axis after the batch reshape), and then replicates the tensor.
_REMAT = 'Involuntary full rematerialization'
_REMAT_SCRIPT = """
import jax, jax.numpy as jnp
from moe_flan import partitioning
from moe_flan.config import MoeConfig
from moe_flan.moe import MoeLayer
x = jnp.ones((16, 8, 16))            # 128 tokens: 4 groups of 32 on 8 batch partitions
# (1, 8, 1): 16 experts over 'expert', each group's tokens on two devices.
for dispatch in ('einsum', 'scatter', 'segmented', 'dropless'):
  for mesh_shape in ((8, 1, 1), (2, 4, 1), (1, 8, 1)):
    layer = MoeLayer(MoeConfig(num_experts=mesh_shape[1] * 2, dispatch=dispatch, group_size=32,
                               expert_mlp_dim=16), 16, 'tokens_choose', 2)
    p = partitioning.Partitioner(partitioning.make_mesh(mesh_shape))
    with p.activate():
      # Only the gradient's program is compiled: the variables as jit(layer.init) returns them
      # (replicated; the layer constrains its params where it uses them), as shapes.
      params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=p.replicated),
                            jax.eval_shape(layer.init, jax.random.PRNGKey(0), x))
      loss = lambda params, x: jnp.sum(layer.apply(params, x) ** 2)
      jax.jit(jax.grad(loss)).lower(params, jax.device_put(x, p.data_sharding)).compile()
    print('compiled', dispatch, mesh_shape, flush=True)
"""


def test_fewer_groups_than_batch_partitions_compile_without_full_rematerialization():
  """XLA's warnings are C++ log lines, hidden in this process (TF_CPP_MIN_LOG_LEVEL): compiled
  in a subprocess that shows them."""
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '0', 'JAX_PLATFORMS': 'cpu',
         'PYTHONPATH': REPO, **DISABLE_OPTIMIZATIONS_ENV}
  proc = subprocess.run([sys.executable, '-c', _REMAT_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count('compiled') == 12, proc.stdout
  remat = [line for line in proc.stderr.splitlines() if _REMAT in line]
  assert not remat, '\n'.join(remat[:3])


def test_expert_parallel_experts_choose():
  want = _unsharded('scatter', 4, 'experts_choose', 1)
  got = _run(_layer('expert_parallel', 4, 'experts_choose', 1), _partitioner((2, 4, 1)))
  _assert_close(got, want)


def test_expert_parallel_rejects_indivisible_expert_count():
  x, mask, _, kp = _inputs()
  partitioner, layer = _partitioner((2, 4, 1)), _layer('expert_parallel', 6)
  abstract = jax.eval_shape(layer.init, kp, x, mask)   # no mesh: shapes only
  with pytest.raises(ValueError, match=r"dimension 0 \('expert'\) has size 6.*size 4"):
    partitioner.shardings(abstract)
  # The dispatcher checks too, for params that did not come through the Partitioner.
  with partitioner.activate():
    with pytest.raises(ValueError, match=r"experts/wi_0: dimension 0 \('expert'\) has size 6"):
      jax.eval_shape(lambda p: layer.apply({'params': p}, x, mask, mutable=['moe_metrics']),
                     _values(abstract['params']))


@pytest.mark.parametrize('num_experts', [2, 4, 8])
@pytest.mark.parametrize('mesh_shape,rules', [((2, 4, 1), {}), ((1, 4, 2), {}),
                                              ((2, 2, 2), {'fsdp': True}), ((1, 8, 1), {})])
def test_expert_parallel_weight_specs_agree_with_the_partitioner(num_experts, mesh_shape, rules):
  """The dispatcher's in_specs for the expert weights (read from the active mesh and rules) are
  the specs the Partitioner placed them with, so shard_map never reshards them."""
  partitioner = _partitioner(mesh_shape, **rules)
  for names in [('expert', 'embed', 'mlp'), ('expert', 'mlp', 'embed')]:
    shape = tuple({'expert': num_experts, 'embed': D, 'mlp': F}[n] for n in names)
    assert (dispatch_expert_parallel.weight_spec(names, shape, partitioner.mesh,
                                                 partitioner.rules, 'w')
            == partitioner.spec_for(names, shape))


def _compiled_hlo(dispatch, num_experts=8, mesh_shape=(2, 4, 1)):
  partitioner = _partitioner(mesh_shape)
  layer = _layer(dispatch, num_experts)
  x, mask, cot, kp = _inputs()
  with partitioner.activate():
    abstract = jax.eval_shape(layer.init, kp, x, mask)['params']
    shardings = partitioner.shardings(abstract)
    params = _values(abstract)
    fn = jax.jit(_loss_fn(layer, cot), in_shardings=(shardings, partitioner.data_sharding,
                                                     partitioner.data_sharding))
    return fn.lower(params, x, mask).compile().as_text()


def _all_gather_shapes(hlo: str) -> list[str]:
  return re.findall(r'= (\S+) all-gather(?:-start)?\(', hlo)


def _all_gathers(hlo: str) -> list[tuple[str, str]]:
  """(result shape, jax op_name or '') of every all-gather in compiled HLO text."""
  found = []
  for line in hlo.splitlines():
    gather = re.search(r'= (\S+) all-gather(?:-start)?\(', line)
    if gather:
      op_name = re.search(r'op_name="([^"]*)"', line)
      found.append((gather.group(1), op_name.group(1) if op_name else ''))
  return found


@pytest.mark.parametrize('dispatch', ['expert_parallel', 'einsum', 'scatter'])
def test_compiled_step_uses_all_to_all_and_keeps_expert_weights_in_place(dispatch):
  """Forward + backward on (data 2, expert 4), E = 8: tokens move by all-to-all (twice each
  way) and nothing at all is all-gathered: no router probabilities <[G, T, E]> (routing.py picks
  top-k by argmax, which XLA partitions, where lax.top_k would be gathered onto every device), no
  dispatch or combine mask <[G, T, E, C]>, expert buffer, token tensor <[G, T, D]> or kernel."""
  hlo = _compiled_hlo(dispatch)
  assert len(re.findall(r'all-to-all\(', hlo)) >= 4, 'expected 2 all-to-alls forward, 2 backward'
  assert 'all-to-all' in hlo and not _all_gathers(hlo), f'all-gathered: {_all_gathers(hlo)}'


def test_expert_resharding_helpers_lower_to_all_to_all():
  """The constraints in moe_flan.moe.resharding, on a bare dispatch/combine: same numbers as
  without a mesh, and the compiled code moves tokens by all-to-all only."""
  g, t, e, c, d = 8, 8, 4, 2, 8
  kx, kd, kw = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(kx, (g, t, d))
  dispatch = jax.nn.one_hot(jax.random.randint(kd, (g, t), 0, e * c), e * c).reshape(g, t, e, c)
  w = jax.random.normal(kw, (e, d, d))

  def layer(x, dispatch, w):
    expert_in = resharding.to_expert_major(jnp.einsum('GTEC,GTD->GECD', dispatch, x))
    expert_out = jnp.tanh(jnp.einsum('EGCD,EDF->EGCF', expert_in, w))
    return jnp.einsum('GTEC,GECD->GTD', dispatch, resharding.to_group_major(expert_out))

  want = jax.jit(layer)(x, dispatch, w)
  partitioner = _partitioner((2, 4, 1))
  with partitioner.activate():
    groups = jax.sharding.NamedSharding(partitioner.mesh, jax.sharding.PartitionSpec(
        ('data', 'expert')))
    experts = jax.sharding.NamedSharding(partitioner.mesh, jax.sharding.PartitionSpec('expert'))
    fn = jax.jit(layer, in_shardings=(groups, groups, experts))
    got = fn(x, dispatch, w)
    hlo = fn.lower(x, dispatch, w).compile().as_text()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert len(re.findall(r'all-to-all\(', hlo)) >= 2, 'expected an all-to-all each way'
  assert not _all_gather_shapes(hlo), _all_gather_shapes(hlo)
