"""List how every parameter of a gin model is sharded: path, shape, logical axes, PartitionSpec.

  python -m moe_flan.list_shardings --gin_file=gin/models/switch_base.gin \
      --gin_file=gin/partitioning/expert_parallel.gin

prints one line per parameter for the mesh the gin files describe (on this machine's devices;
set XLA_FLAGS=--xla_force_host_platform_device_count=N to pretend to have N). Nothing is
allocated: the params are shapes only (`jax.eval_shape`). The golden files under
tests/golden/partition_specs/ are these listings, so a changed sharding is a visible diff.
Flags: --gin_file, --gin.NAME=VALUE, --gin_bindings, --gin_search_paths (as moe_flan.train).
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

import jax
import numpy as np

from moe_flan import config as config_lib
from moe_flan.model import abstract_params
from moe_flan.partitioning import mesh as mesh_lib
from moe_flan.partitioning import partitioner as part_lib
from moe_flan.partitioning import rules as rules_lib
from moe_flan.trainer import cli


def _is_box(x: Any) -> bool:
  return hasattr(x, 'names') and hasattr(x, 'value')


def describe(boxed_params: Any, partitioner: part_lib.Partitioner) -> str:
  """One line per boxed parameter: `path  shape  (logical axes)  ->  PartitionSpec`."""
  specs = partitioner.partition_specs(boxed_params)
  flat_boxes = jax.tree_util.tree_flatten_with_path(boxed_params, is_leaf=_is_box)[0]
  flat_specs = jax.tree.leaves(specs)
  mesh = ', '.join(f'{k}={v}' for k, v in partitioner.mesh.shape.items())
  lines = [f'# mesh: {mesh}']
  total = 0
  for (path, box), spec in sorted(zip(flat_boxes, flat_specs), key=lambda e: str(e[0][0])):
    names = tuple(getattr(box, 'names', ()))
    shape = tuple(getattr(box, 'value', box).shape)
    total += int(np.prod(shape))
    lines.append(f'{jax.tree_util.keystr(path, simple=True, separator="/"):<60} '
                 f'{str(list(shape)):<18} {str(names):<36} -> {spec}')
  lines.append(f'# parameters: {total:,}')
  return '\n'.join(lines) + '\n'


def model_listing(gin_files: Sequence[str], bindings: Sequence[str] = (),
                  search_paths: Sequence[str] = ()) -> str:
  """Parses the gin files (model + partitioning overlay; found as the trainer finds them) and
  lists the param shardings."""
  cli.parse_gin(gin_files, bindings, search_paths)
  config = config_lib.T5Config()
  partitioner = part_lib.Partitioner(mesh_lib.make_mesh(), rules_lib.logical_axis_rules())
  return describe(abstract_params(config), partitioner)


def main(argv: Optional[Sequence[str]] = None) -> int:
  flags = cli.parse_flags(sys.argv[1:] if argv is None else argv, prog='moe_flan.list_shardings')
  sys.stdout.write(model_listing(flags.gin_files, flags.gin_bindings, flags.gin_search_paths))
  return 0


def console_main() -> None:
  cli.console_entry(main, 'moe_flan.list_shardings')


if __name__ == '__main__':
  console_main()
