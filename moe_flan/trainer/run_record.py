"""What a training run states about itself at start, in its log and in MODEL_DIR.

- `config.gin`: the operative gin configuration (every parameter the run's configurables were
  called with, as t5x writes it), so a run directory says how it was made;
- `mesh.json`: the mesh axes and sizes, the processes and devices it ran on, and the MoE
  dispatcher of the train step;
- one log line with the same, first thing: a mesh of 1 device where 8 were meant (a forgotten
  XLA_FLAGS, a missing accelerator) is visible before any step.
"""
from __future__ import annotations

import os
from typing import Any

import gin
import jax

from moe_flan import atomic_file
from moe_flan import config as config_lib

CONFIG_GIN = 'config.gin'
MESH_JSON = 'mesh.json'


def describe(mesh: jax.sharding.Mesh, model_config: config_lib.T5Config) -> dict[str, Any]:
  """The facts `mesh.json` holds: mesh axis sizes, processes, devices, platform, dispatcher."""
  sparse = bool(model_config.encoder_sparse_blocks() or model_config.decoder_sparse_blocks())
  return {'mesh': {str(k): int(v) for k, v in mesh.shape.items()},
          'processes': jax.process_count(), 'devices': jax.device_count(),
          'local_devices': jax.local_device_count(), 'platform': jax.default_backend(),
          'moe_dispatch': model_config.moe.dispatch if sparse else None}


def log_line(facts: dict[str, Any]) -> str:
  mesh = ' x '.join(f'{k}={v}' for k, v in facts['mesh'].items())
  dispatch = (f"MoE dispatch '{facts['moe_dispatch']}'" if facts['moe_dispatch']
              else 'no MoE layers')
  xla_flags = os.environ.get('XLA_FLAGS', '')
  return (f"moe_flan: mesh {mesh} on {facts['devices']} {facts['platform']} device(s) in "
          f"{facts['processes']} process(es); {dispatch}"
          + (f'; XLA_FLAGS={xla_flags}' if xla_flags else ''))


def write(model_dir: str, mesh: jax.sharding.Mesh, model_config: config_lib.T5Config) -> str:
  """Writes MODEL_DIR/config.gin and mesh.json (process 0 only) and returns the log line."""
  facts = describe(mesh, model_config)
  if jax.process_index() == 0:
    atomic_file.write_text(os.path.join(model_dir, CONFIG_GIN), gin.operative_config_str())
    # Unsorted: the mesh axes keep their order.
    atomic_file.write_json(os.path.join(model_dir, MESH_JSON), facts, sort_keys=False)
  return log_line(facts)
