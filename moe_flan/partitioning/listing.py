"""A readable listing of how every parameter is sharded: path, shape, logical axes, spec.

    python -m moe_flan.partitioning.listing --gin_file=gin/models/switch_base.gin \
        --gin_file=gin/partitioning/expert_parallel.gin

prints one line per parameter for the mesh the gin files describe (on this machine's devices;
set XLA_FLAGS=--xla_force_host_platform_device_count=N to pretend to have N). The golden files
under tests/golden/partition_specs/ are these listings, so a changed sharding is a visible diff.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Sequence

import jax
import numpy as np

from moe_flan.partitioning import partitioner as part_lib


def _is_box(x: Any) -> bool:
  return hasattr(x, 'names') and hasattr(x, 'value')


def describe(abstract_params: Any, partitioner: part_lib.Partitioner) -> str:
  """One line per boxed parameter: `path  shape  (logical axes)  ->  PartitionSpec`."""
  specs = partitioner.partition_specs(abstract_params)
  flat_boxes = jax.tree_util.tree_flatten_with_path(abstract_params, is_leaf=_is_box)[0]
  flat_specs = jax.tree.leaves(specs)
  mesh = ', '.join(f'{k}={v}' for k, v in partitioner.mesh.shape.items())
  lines = [f'# mesh: {mesh}']
  total = 0
  for (path, box), spec in sorted(zip(flat_boxes, flat_specs), key=lambda e: str(e[0][0])):
    names = tuple(getattr(box, 'names', ()))
    shape = tuple(getattr(box, 'value', box).shape)
    total += int(np.prod(shape))
    lines.append(f'{part_lib.path_str(path):<60} {str(list(shape)):<18} '
                 f'{str(names):<36} -> {spec}')
  lines.append(f'# parameters: {total:,}')
  return '\n'.join(lines) + '\n'


@functools.lru_cache(maxsize=16)
def abstract_model_params(config) -> Any:
  """Boxed ShapeDtypeStructs of `EncoderDecoder(config)`'s params (nothing is computed)."""
  from moe_flan.model import EncoderDecoder  # pylint: disable=g-import-not-at-top
  tokens = np.ones((1, 4), np.int32)
  return jax.eval_shape(
      lambda k: EncoderDecoder(config).init({'params': k, 'dropout': k}, tokens, tokens, tokens,
                                            enable_dropout=False)['params'], jax.random.key(0))


def model_listing(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> str:
  """Parses the gin files (model + partitioning overlay) and lists the param shardings."""
  import gin  # pylint: disable=g-import-not-at-top
  from moe_flan import config as config_lib  # pylint: disable=g-import-not-at-top
  from moe_flan.partitioning import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from moe_flan.partitioning import rules as rules_lib  # pylint: disable=g-import-not-at-top

  with gin.unlock_config():
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)
    config = config_lib.T5Config()
    partitioner = part_lib.Partitioner(mesh_lib.make_mesh(), rules_lib.logical_axis_rules())
  return describe(abstract_model_params(config), partitioner)


def main(argv: list[str]) -> None:
  import os  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  gin.add_config_file_search_path(os.path.join(os.path.dirname(__file__), '..', '..', 'gin'))
  files = [a.split('=', 1)[1] for a in argv if a.startswith('--gin_file=')]
  bindings = [a[len('--gin.'):].replace('=', ' = ', 1) for a in argv if a.startswith('--gin.')]
  sys.stdout.write(model_listing(files, bindings))


if __name__ == '__main__':
  main(sys.argv[1:])
