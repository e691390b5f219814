"""Mesh, rule table, Partitioner specs/batches and distributed settings (no compilation)."""
import argparse
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from moe_flan.partitioning import distributed
from moe_flan.partitioning import mesh as mesh_lib
from moe_flan.partitioning import partitioner as part_lib
from moe_flan.partitioning import rules as rules_lib


def _partitioner(shape, **rule_kwargs):
  return part_lib.Partitioner(mesh_lib.make_mesh(shape),
                              rules_lib.logical_axis_rules(**rule_kwargs))


# ---- mesh -----------------------------------------------------------------------------------
@pytest.mark.parametrize('shape,want', [(None, (8, 1, 1)), ((2, -1, 1), (2, 4, 1)),
                                        ((-1, 2, 2), (2, 2, 2)), ((1, 4, 2), (1, 4, 2))])
def test_make_mesh_shapes(shape, want):
  mesh = mesh_lib.make_mesh(shape)
  assert tuple(mesh.shape.values()) == want
  assert mesh.axis_names == ('data', 'expert', 'model')
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


@pytest.mark.parametrize('shape,fragment', [
    ((3, 2, 1), 'mesh_shape=(3, 2, 1) needs 6 devices'),
    ((3, -1, 1), 'does not divide the 8 available'),
    ((-1, -1, 2), 'at most one entry may be -1'),
    ((8, 1), 'must have 3 entries'),
    ((8, 0, 1), 'must be positive'),
])
def test_make_mesh_rejects_bad_shapes(shape, fragment):
  with pytest.raises(ValueError, match=fragment.replace('(', r'\(').replace(')', r'\)')):
    mesh_lib.make_mesh(shape)


def test_make_mesh_on_a_device_subset():
  mesh = mesh_lib.make_mesh((2, 2, 1), devices=jax.devices()[:4])
  assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()[:4]]


# ---- rules ----------------------------------------------------------------------------------
def _spec(names, rules):
  return nn.logical_to_mesh_axes(names, rules)


def test_rule_table_maps_t5x_names():
  rules = rules_lib.logical_axis_rules()
  assert _spec(('batch', 'length', 'embed'), rules) == P(('data', 'expert'), None, None)
  assert _spec(('embed', 'mlp'), rules) == P(None, 'model')
  assert _spec(('embed', 'heads', 'kv'), rules) == P(None, 'model', None)
  assert _spec(('vocab', 'embed'), rules) == P('model', None)
  assert _spec(('expert', 'embed', 'mlp'), rules) == P('expert', None, 'model')
  assert _spec(('embed', 'unmodeled'), rules) == P(None, None)
  # Expert-major buffers: experts on 'expert', groups fall back to the remaining 'data'.
  assert _spec(('expert', 'expert_group', 'capacity', 'embed'), rules) == P(
      'expert', 'data', None, None)
  # Token-major groups: over data x expert.
  assert _spec(('expert_group', 'length', 'embed'), rules) == P(('data', 'expert'), None, None)


def test_fsdp_shards_params_embed_over_data_but_not_activations():
  rules = rules_lib.logical_axis_rules(fsdp=True)
  assert _spec(('embed', 'mlp'), rules) == P('data', 'model')
  assert _spec(('expert', 'embed', 'mlp'), rules) == P('expert', 'data', 'model')
  # The batch already uses 'data', so activations keep embed replicated.
  assert _spec(('batch', 'length', 'embed'), rules) == P(('data', 'expert'), None, None)


def test_additional_rules_take_precedence_and_are_checked():
  rules = rules_lib.logical_axis_rules(additional_rules=(('length', 'model'),))
  assert _spec(('batch', 'length', 'embed'), rules) == P(('data', 'expert'), 'model', None)
  with pytest.raises(ValueError, match="unknown logical axis 'lenght'"):
    rules_lib.logical_axis_rules(additional_rules=(('lenght', 'model'),))


# ---- Partitioner ----------------------------------------------------------------------------
class _Tiny(nn.Module):
  num_experts: int = 4
  heads: int = 4

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.normal()
    box = nn.with_logical_partitioning
    w = self.param('wi', box(init, ('expert', 'embed', 'mlp')), (self.num_experts, 8, 16))
    q = self.param('q', box(init, ('embed', 'heads', 'kv')), (8, self.heads, 2))
    return jnp.einsum('BD,EDF->BF', x, w).sum() + jnp.einsum('BD,DHK->B', x, q).sum()


def _abstract(**kw):
  return jax.eval_shape(_Tiny(**kw).init, jax.random.key(0), jnp.ones((2, 8)))


def test_partition_specs_follow_rules_and_mesh():
  specs = _partitioner((2, 2, 2)).partition_specs(_abstract())['params']
  assert specs == {'wi': P('expert', None, 'model'), 'q': P(None, 'model', None)}


@pytest.mark.parametrize('num_experts,shape,want', [
    (8, (1, 4, 2), P('expert', None, 'model')),   # 2 experts per device
    (4, (1, 4, 2), P('expert', None, 'model')),   # 1 expert per device
    (2, (1, 4, 2), P(None, None, 'model')),       # fewer experts: every device stores all
])
def test_expert_axis_vs_expert_partitions(num_experts, shape, want):
  specs = _partitioner(shape).partition_specs(_abstract(num_experts=num_experts))
  assert specs['params']['wi'] == want


def test_indivisible_sizes_fail_naming_values():
  with pytest.raises(ValueError, match=r"params/wi: dimension 0 \('expert'\) has size 6.*size 4"):
    _partitioner((2, 4, 1)).partition_specs(_abstract(num_experts=6))
  with pytest.raises(ValueError, match=r"params/q: dimension 1 \('heads'\) has size 3.*size 2"):
    _partitioner((2, 2, 2)).partition_specs(_abstract(heads=3))


def test_unknown_logical_name_fails():
  box = nn.LogicallyPartitioned(jax.ShapeDtypeStruct((4, 4), jnp.float32), ('embed', 'mpl'))
  with pytest.raises(ValueError, match=r"unknown logical axis name\(s\) \['mpl'\]"):
    _partitioner((8, 1, 1)).partition_specs({'w': box})


def test_create_sharded_places_params_on_mesh():
  partitioner = _partitioner((1, 4, 2))
  variables = partitioner.create_sharded(_Tiny().init, jax.random.key(0), jnp.ones((2, 8)))
  wi = variables['params']['wi']
  assert wi.names == ('expert', 'embed', 'mlp')
  assert wi.value.sharding.spec == P('expert', None, 'model')
  # Each device holds a (4/4, 8, 16/2) block, i.e. one expert and half of F.
  assert {s.data.shape for s in wi.value.addressable_shards} == {(1, 8, 8)}
  want = _Tiny().init(jax.random.key(0), jnp.ones((2, 8)))['params']['wi'].value
  np.testing.assert_allclose(np.asarray(wi.value), np.asarray(want), rtol=1e-6, atol=1e-8)


def test_shard_batch_and_data_shard_info():
  partitioner = _partitioner((2, 2, 2))
  assert partitioner.data_shard_info() == (0, 1)  # one process feeds everything
  local = {'tokens': np.arange(8 * 3).reshape(8, 3)}
  batch = partitioner.shard_batch(local)
  assert batch['tokens'].shape == (8, 3)
  assert batch['tokens'].sharding.spec == P(('data', 'expert'))
  np.testing.assert_array_equal(np.asarray(batch['tokens']), local['tokens'])
  # Rows 0-1 sit on the devices at (data 0, expert 0), replicated over 'model'.
  first = [s for s in batch['tokens'].addressable_shards if s.index[0].start == 0]
  assert len(first) == 2 and all(s.data.shape == (2, 3) for s in first)


def test_bad_batch_fails_naming_values():
  partitioner = _partitioner((2, 2, 2))
  with pytest.raises(ValueError, match='batch size 6 is not divisible by the 4 batch partitions'):
    partitioner.shard_batch({'tokens': np.zeros((6, 3))})
  with pytest.raises(ValueError, match='different leading sizes'):
    partitioner.shard_batch({'a': np.zeros((4, 3)), 'b': np.zeros((8, 3))})


# ---- distributed ----------------------------------------------------------------------------
def test_single_process_without_settings_is_a_no_op(monkeypatch):
  for var in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
              distributed.ENV_PROCESS_ID, 'SLURM_JOB_ID'):
    monkeypatch.delenv(var, raising=False)
  assert distributed.initialize() is False
  assert distributed.initialize(num_processes=1) is False


@pytest.mark.parametrize('kwargs,fragment', [
    (dict(num_processes=4), 'num_processes=4 but no coordinator_address'),
    (dict(coordinator_address='10.0.0.1:1234', num_processes=2), 'process_id \\(got None\\)'),
    (dict(coordinator_address='10.0.0.1:1234', num_processes=2, process_id=2),
     r'process_id=2 must be in \[0, num_processes=2\)'),
    (dict(coordinator_address='10.0.0.1', num_processes=2, process_id=0), 'HOST:PORT'),
    (dict(num_processes=0), 'num_processes=0 must be >= 1'),
])
def test_bad_distributed_settings_fail_fast(kwargs, fragment, monkeypatch):
  monkeypatch.delenv(distributed.ENV_COORDINATOR, raising=False)
  with pytest.raises(ValueError, match=fragment):
    distributed.initialize(**kwargs)


def test_environment_settings_are_read(monkeypatch):
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, '3')
  monkeypatch.delenv(distributed.ENV_COORDINATOR, raising=False)
  with pytest.raises(ValueError, match='num_processes=3 but no coordinator_address'):
    distributed.initialize()
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, 'three')
  with pytest.raises(ValueError, match="MOE_FLAN_NUM_PROCESSES='three'"):
    distributed.initialize()


def test_unreachable_coordinator_times_out_instead_of_hanging():
  """Process 1 of 2 with nobody serving the coordinator port: a clear error within the timeout."""
  code = ('from moe_flan.partitioning import distributed\n'
          'distributed.initialize("127.0.0.1:1", 2, 1, timeout_s=3)\n')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode != 0
  assert 'coordinator_address=' in proc.stderr and '127.0.0.1:1' in proc.stderr, proc.stderr[-2000:]


def test_flags_parse_and_check(monkeypatch):
  for var in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
              distributed.ENV_PROCESS_ID, 'SLURM_JOB_ID'):
    monkeypatch.delenv(var, raising=False)
  parser = argparse.ArgumentParser()
  distributed.add_flags(parser)
  args = parser.parse_args(['--num_processes=2', '--process_id=1'])
  assert (args.num_processes, args.process_id, args.distributed_timeout_s) == (2, 1, 300)
  with pytest.raises(ValueError, match='num_processes=2 but no coordinator_address'):
    distributed.initialize_from_flags(args)
  assert distributed.initialize_from_flags(parser.parse_args([])) is False
