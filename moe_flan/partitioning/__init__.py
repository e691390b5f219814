"""Partitioning: the device mesh, logical-axis rules, the Partitioner, multi-host start-up."""
from moe_flan.partitioning.distributed import initialize
from moe_flan.partitioning.mesh import MESH_AXES, make_mesh
from moe_flan.partitioning.partitioner import Partitioner, create_partitioner
from moe_flan.partitioning.rules import logical_axis_rules

__all__ = ['MESH_AXES', 'Partitioner', 'create_partitioner', 'initialize', 'logical_axis_rules',
           'make_mesh']

