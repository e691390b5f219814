"""Partitioner: turns logical axis names into shardings on one mesh, and feeds it batches.

    partitioner = Partitioner(make_mesh((2, 4, 1)), logical_axis_rules())
    with partitioner.activate():                 # mesh + flax rules for with_logical_constraint
      abstract = jax.eval_shape(model.init, rngs, *dummy)   # boxed: nn.LogicallyPartitioned
      variables = partitioner.create_sharded(model.init, rngs, *dummy)  # born sharded
      step = jax.jit(train_step, in_shardings=(partitioner.shardings(abstract_state),
                                               partitioner.data_sharding), ...)
      batch = partitioner.shard_batch(host_local_numpy_batch)
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from moe_flan import axes
from moe_flan.partitioning import mesh as mesh_lib
from moe_flan.partitioning import rules as rules_lib


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.Partitioned)


def logical_spec(names: Sequence[Optional[str]], shape: Sequence[int],
                 mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh, rules: rules_lib.Rules,
                 where: str = 'array') -> PartitionSpec:
  """PartitionSpec of an array with logical axis `names` and `shape` on `mesh` under `rules`.

  An 'expert' dimension smaller than the mesh axes it maps to (which it must divide) is not
  split at all: every device along those axes stores all the experts (memory as under data
  parallelism). The numbers are those of one device; the 'expert_parallel' dispatcher then
  computes each expert's tokens on `expert_partitions / num_experts` of those devices, slicing
  its local copy. Splitting fewer experts over more partitions would need a second mesh axis.
  Raises:
    ValueError: naming the array, dimension and sizes when a dimension does not divide.
  """
  rules_lib.check_known_names(names, where)
  if len(names) != len(shape):
    raise ValueError(f'{where}: {len(names)} logical names {tuple(names)} for shape '
                     f'{tuple(shape)}')
  spec = list(nn.logical_to_mesh_axes(tuple(names), rules))
  for i, (name, size, mesh_axes) in enumerate(zip(names, shape, spec)):
    parts = mesh_lib.mesh_axis_size(mesh, mesh_axes)
    if size % parts == 0:
      continue
    if name == axes.EXPERT and parts % size == 0:
      spec[i] = None  # fewer experts than expert partitions: replicate them
      continue
    raise ValueError(
        f'{where}: dimension {i} ({name!r}) has size {size}, which is not divisible by mesh '
        f'axes {mesh_axes} of size {parts} (mesh {dict(mesh.shape)}); change the mesh '
        'shape or the model size')
  return PartitionSpec(*spec)


class Partitioner:
  """Maps logical axis names to NamedShardings on `mesh` with a rule table.

  Attributes:
    mesh: the ('data', 'expert', 'model') mesh.
    rules: `(logical_name, mesh_axes)` pairs, see `moe_flan.partitioning.rules`.
  """

  def __init__(self, mesh: jax.sharding.Mesh, rules: Optional[rules_lib.Rules] = None):
    if tuple(mesh.axis_names) != mesh_lib.MESH_AXES:
      raise ValueError(f'mesh axis names {mesh.axis_names} must be {mesh_lib.MESH_AXES}')
    self.mesh = mesh
    self.rules = list(rules_lib.logical_axis_rules() if rules is None else rules)

  # ---- context -------------------------------------------------------------------------------
  @contextlib.contextmanager
  def activate(self) -> Iterator['Partitioner']:
    """Sets the mesh (jax.set_mesh) and flax logical axis rules for the enclosed code."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield self

  # ---- specs and shardings -----------------------------------------------------------------
  def spec_for(self, names: Sequence[Optional[str]], shape: Sequence[int],
               where: str = 'array') -> PartitionSpec:
    """PartitionSpec of an array with logical axis `names` and `shape`; see `logical_spec`."""
    return logical_spec(names, shape, self.mesh, self.rules, where)

  def _leaf_spec(self, path, leaf) -> PartitionSpec:
    where = jax.tree_util.keystr(path, simple=True, separator='/') or 'value'
    if isinstance(leaf, nn.LogicallyPartitioned):
      value = leaf.value
      if len(leaf.names) != len(value.shape):
        # Factored optimizer statistics (Adafactor v_row/v_col) keep their parameter's box but
        # drop a dimension; they are small, so they are replicated.
        return PartitionSpec()
      return self.spec_for(leaf.names, value.shape, where)
    if isinstance(leaf, nn.Partitioned):  # names are mesh axes already
      return PartitionSpec(*leaf.names)
    return PartitionSpec()

  def partition_specs(self, abstract_tree: Any) -> Any:
    """Tree of PartitionSpec: one per boxed parameter (P() for unboxed leaves).

    The result has the input's structure with each `nn.Partitioned` box replaced by a leaf, so
    it is a valid (prefix) `in_shardings`/`out_shardings` for both boxed and unboxed trees.
    """
    return jax.tree_util.tree_map_with_path(self._leaf_spec, abstract_tree, is_leaf=_is_box)

  def shardings(self, abstract_tree: Any) -> Any:
    """Tree of NamedSharding on this mesh, structured like `partition_specs`."""
    return jax.tree.map(lambda spec: NamedSharding(self.mesh, spec),
                        self.partition_specs(abstract_tree))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch_mesh_axes(self) -> Optional[tuple[str, ...]]:
    """Mesh axes the batch is split over (from the 'batch' rule)."""
    mesh_axes = rules_lib.mesh_axes_for(axes.BATCH, self.rules)
    return (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes

  @property
  def num_batch_partitions(self) -> int:
    return mesh_lib.mesh_axis_size(self.mesh, self.batch_mesh_axes)

  @property
  def data_sharding(self) -> NamedSharding:
    """Sharding of batch features: leading (batch) dimension split, the rest replicated."""
    return NamedSharding(self.mesh, PartitionSpec(self.batch_mesh_axes))

  def create_sharded(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Runs `fn(*args, **kwargs)` (e.g. `model.init`) under jit, its outputs born sharded.

    The output shardings come from the logical names of `jax.eval_shape(fn, ...)`, so no
    full copy of the parameters ever lives on one device. Boxes are kept in the output.
    """
    with self.activate():
      abstract = jax.eval_shape(fn, *args, **kwargs)
      return jax.jit(fn, out_shardings=self.shardings(abstract))(*args, **kwargs)

  # ---- data ----------------------------------------------------------------------------------
  def data_shard_info(self) -> tuple[int, int]:
    """(shard_id, num_shards) for this process's data pipeline (seqio ShardInfo).

    Processes that hold the same batch rows (model-parallel replicas spanning hosts) get the
    same shard; otherwise every process reads a disjoint, contiguous slice of the global batch.
    """
    parts = self.num_batch_partitions  # one row per batch partition shows the layout
    blocks: dict[int, set] = {}
    for device, index in self.data_sharding.devices_indices_map((parts,)).items():
      blocks.setdefault(device.process_index, set()).add(index[0].indices(parts)[:2])
    per_process = {p: (min(b)[0], max(b)[1]) for p, b in blocks.items()}
    distinct = sorted(set(per_process.values()))
    return distinct.index(per_process[jax.process_index()]), len(distinct)

  def check_batch_size(self, global_batch_size: int) -> None:
    parts = self.num_batch_partitions
    if global_batch_size % parts:
      raise ValueError(f'batch size {global_batch_size} is not divisible by the {parts} batch '
                       f'partitions (mesh axes {self.batch_mesh_axes} of mesh '
                       f'{dict(self.mesh.shape)})')

  def shard_batch(self, local_batch: Mapping[str, np.ndarray],
                  global_batch_size: Optional[int] = None) -> dict[str, jax.Array]:
    """Global jax.Arrays from this process's rows of the batch (each host feeds only its own).

    Args:
      local_batch: feature name -> <any>[local_batch, ...] numpy array: this process's shard
        (shard `data_shard_info()[0]` of `data_shard_info()[1]`, in order).
      global_batch_size: total rows over all processes; default local rows x num shards.
    """
    if not local_batch:
      return {}
    local_rows = {k: np.shape(v)[0] for k, v in local_batch.items()}
    if len(set(local_rows.values())) != 1:
      raise ValueError(f'batch features have different leading sizes: {local_rows}')
    rows = next(iter(local_rows.values()))
    if global_batch_size is None:
      global_batch_size = rows * self.data_shard_info()[1]
    self.check_batch_size(global_batch_size)
    sharding = self.data_sharding
    return {k: jax.make_array_from_process_local_data(
        sharding, np.asarray(v), (global_batch_size,) + tuple(np.shape(v)[1:]))
            for k, v in local_batch.items()}


def create_partitioner(mesh_shape: Optional[Sequence[int]] = None,
                       rules: Optional[rules_lib.Rules] = None) -> Partitioner:
  """A Partitioner from the gin-bound `make_mesh` and `logical_axis_rules` (overlays)."""
  mesh = mesh_lib.make_mesh(mesh_shape) if mesh_shape is not None else mesh_lib.make_mesh()
  return Partitioner(mesh, rules)
