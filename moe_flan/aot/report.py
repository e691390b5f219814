"""What a compiled train step costs on a TPU slice: HBM per chip, FLOPs, a roofline step time,
every collective, and each MoE layer's all-to-all bytes against the analytic minimum.

All numbers come from the compiled executable (memory_analysis, cost_analysis, its input
shardings and HLO text) except the model FLOPs, counted from the config as the benchmarks do
(`moe_flan.model.flops`), and the chip figures of `topology.CHIPS`.
"""
from __future__ import annotations

import collections
import os
import re
from typing import Any, Optional

import jax
import numpy as np

from moe_flan.aot import hlo
from moe_flan.aot import topology
from moe_flan.aot.compiled_step import CompiledStep, TrainRun
from moe_flan.model import flops as flops_lib
from moe_flan.moe import capacity as capacity_lib
from moe_flan.moe import dispatch as dispatch_lib
from moe_flan.partitioning import mesh as mesh_lib

# The performance goals this report checks (see `goals`).
ALL_TO_ALL_RATIO_GOAL = 1.25     # scatter / expert-parallel dispatch, vs the analytic minimum
GOAL_DISPATCHES = ('scatter', 'expert_parallel')


def _leaf_bytes(abstract: Any, shardings: Any) -> int:
  """Bytes per device of a tree of arrays under its shardings (unpadded)."""
  total = 0
  for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    total += int(np.prod(s.shard_shape(a.shape))) * np.dtype(a.dtype).itemsize
  return total


def _input_shardings(step: CompiledStep) -> tuple[Any, Any]:
  """(state shardings, batch shardings) of the compiled executable's (state, batch) arguments
  (the last two; with step buffers the spare state and gradients come first)."""
  args = step.compiled.input_shardings[0]
  return args[-2], args[-1]


def memory(step: CompiledStep, s: topology.Slice, devices_per_chip: int) -> dict[str, Any]:
  """HBM per chip: the compiler's totals, and the state's parts from the compiled shardings."""
  ma = step.compiled.memory_analysis()
  per_device = (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
                + ma.temp_size_in_bytes + ma.generated_code_size_in_bytes)
  state_sh, batch_sh = _input_shardings(step)
  state = step.parts.abstract_state
  total = per_device * devices_per_chip
  hbm = s.chip.hbm_bytes
  return {
      'hbm_bytes': hbm,
      'parameters': _leaf_bytes(state.params, state_sh.params) * devices_per_chip,
      'optimizer_state': _leaf_bytes(state.opt_state, state_sh.opt_state) * devices_per_chip,
      'batch': _leaf_bytes(step.batch, batch_sh) * devices_per_chip,
      'arguments': ma.argument_size_in_bytes * devices_per_chip,
      'outputs': ma.output_size_in_bytes * devices_per_chip,
      'aliased': ma.alias_size_in_bytes * devices_per_chip,
      'temporaries': ma.temp_size_in_bytes * devices_per_chip,
      'generated_code': ma.generated_code_size_in_bytes * devices_per_chip,
      'total': total,
      'fits': total <= hbm,
      'margin_bytes': hbm - total,
      'margin_fraction': (hbm - total) / hbm,
  }


def replicated_expert_tensors(step: CompiledStep, mesh: jax.sharding.Mesh) -> list[str]:
  """Paths of expert parameters and optimizer-state leaves that some devices differing only in
  their 'expert' coordinate hold identically (i.e. replicated across 'expert')."""
  if mesh.shape[mesh_lib.EXPERT] == 1:
    return []
  state_sh = _input_shardings(step)[0]
  expert_axis = mesh_lib.MESH_AXES.index(mesh_lib.EXPERT)
  rows = np.moveaxis(mesh.devices, expert_axis, -1).reshape(-1, mesh.shape[mesh_lib.EXPERT])
  num_experts = step.run.model.moe.num_experts if step.run.model.moe else 0
  found = []
  for part in ('params', 'opt_state'):
    abstract = jax.tree_util.tree_leaves_with_path(getattr(step.parts.abstract_state, part))
    for (path, a), sh in zip(abstract, jax.tree.leaves(getattr(state_sh, part))):
      name = jax.tree_util.keystr(path, simple=True, separator='/')
      # Expert tensors lead with the expert dimension (Adafactor's (1,) placeholders do not).
      if '/experts/' not in f'/{name}/' or not a.shape or a.shape[0] != num_experts:
        continue
      index = sh.devices_indices_map(a.shape)
      key = lambda d: tuple((i.start, i.stop) for i in index[d])
      if any(len({key(d) for d in row}) < len(row) for row in rows):
        found.append(f'{part}/{name}')
  return found


def collective_table(found: list[hlo.Collective], mesh_shape: dict[str, int]) -> list[dict]:
  """Per (kind, mesh axes): instructions, executions per step, bytes per chip per step."""
  rows: dict[tuple[str, str], dict] = {}
  for c in found:
    axes = 'slices (DCN)' if c.dcn else hlo.mesh_axes_of(c.groups, mesh_shape)
    row = rows.setdefault((c.kind, axes), {'kind': c.kind, 'mesh_axes': axes, 'instructions': 0,
                                           'count': 0, 'bytes_per_chip': 0.0,
                                           'link_bytes_per_chip': 0.0})
    row['instructions'] += 1
    row['count'] += c.executions
    row['bytes_per_chip'] += c.buffer_bytes * c.executions
    row['link_bytes_per_chip'] += c.link_bytes * c.executions
  order = {k: i for i, k in enumerate(hlo.KINDS)}
  return sorted(rows.values(), key=lambda r: (order[r['kind']], r['mesh_axes']))


def _dispatched_slots(cfg, batch: int, length: int, k: int) -> int:
  """Expert slots one MoE layer fills per step in training, G groups x E experts x capacity C,
  as the layer computes them (its capacity convention: 'flaxformer' has no factor k, so a
  top-2 layer fills about half the slots of tokens x k x capacity factor); tokens x k for
  a dropless dispatch."""
  moe = cfg.moe
  if dispatch_lib.is_dropless(moe.dispatch):
    return batch * length * k
  g, t = capacity_lib.token_groups(batch, length, moe.group_size, moe.routing_groups,
                                   training=True)
  c = capacity_lib.expert_capacity(t, moe.num_experts, k, moe.train_capacity_factor,
                                   moe.min_capacity, moe.capacity_convention)
  return g * moe.num_experts * c


def _layer_source(cfg, path: str) -> tuple[str, float]:
  """(the `hlo.Collective.moe_layer` of the ops of the MoE layer at `path`, the share of their
  executions that are this layer's). A scanned stack runs one op for sublayer i % P of every
  block, once per block: each of its layers gets 1 / blocks of the op's executions (the layers
  left over after the scan have ops of their own)."""
  if not cfg.scan_layers:
    return path, 1.0
  stack, layer = path.split('/')
  i, period = int(layer.removeprefix('layers_')), cfg.layer_period(stack)
  blocks = (cfg.num_encoder_layers if stack == 'encoder' else cfg.num_decoder_layers) // period
  if i >= blocks * period:   # a layer left over after the scan runs unrolled
    return path, 1.0
  return f'{stack}/layers/layers_{i % period}', 1.0 / blocks


def moe_layers(step: CompiledStep, found: list[hlo.Collective], mesh: jax.sharding.Mesh
               ) -> list[dict]:
  """Each MoE layer's collectives and its all-to-all bytes per chip vs the analytic minimum:
  2 passes (forward, backward) x 2 exchanges (dispatch, combine) x the expert slots the layer
  fills per step (groups x experts x capacity; about tokens x k x capacity factor) per chip x
  d_model x bytes per activation element."""
  cfg = step.run.model
  if cfg.moe is None:
    return []
  data = step.run.data
  partitions = step.parts.partitioner.num_batch_partitions
  itemsize = np.dtype(cfg.dtype).itemsize
  # Multi-slice executables drop the op_name metadata of in-slice collectives: their bytes
  # cannot be put on a layer, and a ratio of 0 would pass the goal falsely.
  unattributed = any(c.kind == 'all-to-all' and not c.dcn and c.moe_layer is None for c in found)
  out = []
  for path in cfg.sparse_block_paths():
    encoder = path.startswith('encoder/')
    length = data.task_feature_lengths['inputs' if encoder else 'targets']
    k = cfg.moe.num_selected_experts if encoder else cfg.moe.decoder_effective_num_selected_experts
    slots = _dispatched_slots(cfg, data.batch_size, length, k) / partitions
    minimum = 4 * slots * cfg.emb_dim * itemsize
    source, share = _layer_source(cfg, path)
    mine = [c for c in found if c.moe_layer == source]
    a2a = sum(c.buffer_bytes * c.executions for c in mine if c.kind == 'all-to-all') * share
    other = collections.Counter()
    for c in mine:
      if c.kind != 'all-to-all':
        other[c.kind] += c.buffer_bytes * c.executions * share
    expert_parallel = mesh.shape[mesh_lib.EXPERT] > 1
    out.append({
        'layer': path, 'all_to_all_count': round(sum(c.executions for c in mine
                                                     if c.kind == 'all-to-all') * share),
        'all_to_all_bytes_per_chip': a2a,
        'analytic_min_bytes_per_chip': minimum if expert_parallel else 0.0,
        'ratio': (a2a / minimum if expert_parallel and minimum and (a2a or not unattributed)
                  else None),
        'all_to_all_unattributed': bool(expert_parallel and unattributed and not a2a),
        'other_collective_bytes_per_chip': dict(other),
    })
  return out


def _roofline(step: CompiledStep, s: topology.Slice, devices_per_chip: int,
              table: list[dict], hlo_text: str) -> dict[str, Any]:
  ca = step.compiled.cost_analysis() or {}
  cfg, data = step.run.model, step.run.data
  lengths = data.task_feature_lengths
  model_flops = flops_lib.train_step_flops(cfg, data.batch_size, lengths['inputs'],
                                           lengths['targets'])
  # XLA's cost analysis counts a while loop's body once: a scanned stack's other blocks'
  # matmul FLOPs are added from the HLO text (their elementwise FLOPs are not), its bytes
  # accessed stay one block's, so the HBM time is a lower bound; the compute time comes from
  # the model's FLOPs when those are more.
  looped, once = hlo.loop_flops(hlo_text)
  added_chip = max(looped - once, 0.0) * devices_per_chip
  xla_flops_chip = float(ca.get('flops', 0.0)) * devices_per_chip + added_chip
  bytes_chip = float(ca.get('bytes accessed', 0.0)) * devices_per_chip
  link_chip = sum(r['link_bytes_per_chip'] for r in table) * devices_per_chip
  compute_chip = max(xla_flops_chip, model_flops / s.num_chips if cfg.scan_layers else 0.0)
  times = {'compute_s': compute_chip / s.chip.peak_bf16_flops,
           'hbm_s': bytes_chip / s.chip.hbm_bytes_per_s,
           'ici_s': link_chip / s.chip.ici_bytes_per_s}
  bound = max(times.values())
  xla_estimate = float(ca.get('optimal_seconds', -1.0))
  return {
      'model_flops_per_step': model_flops,
      'xla_flops_per_step': xla_flops_chip * s.num_chips,
      'xla_flops_per_chip': xla_flops_chip,
      'xla_bytes_accessed_per_chip': bytes_chip,
      'xla_estimated_step_s': xla_estimate if xla_estimate > 0 else None,
      'xla_loop_flops_added_per_chip': added_chip,
      'xla_costs_count_loop_bodies_once': bool(cfg.scan_layers),
      'roofline': dict(times, step_time_lower_bound_s=bound,
                       limited_by=max(times, key=times.get).removesuffix('_s')),
      'mfu_upper_bound': (model_flops / (s.num_chips * s.chip.peak_bf16_flops * bound)
                          if bound > 0 else None),
  }


def goals(cfg, layers: list[dict], replicated: list[str], expert_parallel: bool
          ) -> dict[str, Any]:
  """The plan's performance goals: all-to-all within ALL_TO_ALL_RATIO_GOAL x the minimum (for
  the scatter / expert-parallel dispatches) and no expert tensor replicated across 'expert'."""
  ratios = [l['ratio'] for l in layers if l['ratio'] is not None]
  applies = bool(cfg.moe) and cfg.moe.dispatch in GOAL_DISPATCHES and expert_parallel
  return {
      'all_to_all_ratio_goal': ALL_TO_ALL_RATIO_GOAL,
      'all_to_all_max_ratio': max(ratios) if ratios else None,
      'all_to_all_goal_applies': applies,
      'all_to_all_goal_met': (max(ratios) <= ALL_TO_ALL_RATIO_GOAL) if applies and ratios
                             else None,
      'expert_tensors_replicated_across_expert': replicated,
      'no_expert_replication_goal_met': not replicated if expert_parallel and cfg.moe else None,
  }


def build(step: CompiledStep, s: topology.Slice, mesh: jax.sharding.Mesh,
          gin_files: Optional[list[str]] = None, gin_bindings: Optional[list[str]] = None
          ) -> dict[str, Any]:
  """The full report (JSON-ready) of a compiled step on slice `s`."""
  devices = mesh.devices.size
  devices_per_chip = max(devices // s.num_chips, 1)
  mesh_shape = dict(mesh.shape)
  hlo_text = step.compiled.as_text()
  found = hlo.collectives(hlo_text, devices)
  table = collective_table(found, mesh_shape)
  layers = moe_layers(step, found, mesh)
  replicated = replicated_expert_tensors(step, mesh)
  cfg = step.run.model
  return {
      **_header(step.run, s, mesh, gin_files, gin_bindings),
      'devices_per_chip': devices_per_chip, 'optimizer': step.run.optimizer.name,
      'reuse_step_buffers': step.reuse_step_buffers,
      'num_params': int(sum(np.prod(a.shape) for a in jax.tree.leaves(
          step.parts.abstract_state.params))),
      'memory_per_chip': memory(step, s, devices_per_chip),
      'flops': _roofline(step, s, devices_per_chip, table, hlo_text),
      'collectives': table,
      'moe_layers': layers,
      'goals': goals(cfg, layers, replicated, mesh_shape[mesh_lib.EXPERT] > 1),
      'lower_s': round(step.lower_s, 1), 'compile_s': round(step.compile_s, 1),
  }


def _header(run: TrainRun, s: topology.Slice, mesh: jax.sharding.Mesh,
            gin_files: Optional[list[str]], gin_bindings: Optional[list[str]]) -> dict[str, Any]:
  """What was planned: the slice, mesh, gin, batch, model dtype and dispatch, versions."""
  cfg, data = run.model, run.data
  return {
      'topology': s.name, 'num_slices': s.num_slices, 'chip': s.kind,
      'num_chips': s.num_chips, 'mesh': dict(mesh.shape), 'gin_files': list(gin_files or []),
      'gin_bindings': list(gin_bindings or []), 'batch_size': data.batch_size,
      'feature_lengths': dict(data.task_feature_lengths), 'dtype': cfg.dtype,
      'dispatch': cfg.moe.dispatch if cfg.moe else None, 'scan_layers': cfg.scan_layers,
      'versions': {'jax': jax.__version__, 'libtpu': _libtpu_version()},
      'libtpu_init_args': os.environ.get('LIBTPU_INIT_ARGS', ''),
  }


# libtpu's refusal of a program that cannot fit, e.g. "RESOURCE_EXHAUSTED: Ran out of memory on
# HBM, the total memory required for HLO temporaries (19.81G) exceeds available HBM (15.75G)."
# The sizes are XLA's human-readable bytes, powers of 1,024.
_HBM_REFUSAL = re.compile(r'Ran out of memory on HBM.*?required for (?P<what>[^(]+?) '
                          r'\((?P<required>[\d.]+)(?P<ru>[KMGT]?)\) exceeds available HBM '
                          r'\((?P<available>[\d.]+)(?P<au>[KMGT]?)\)')
_UNITS = {'': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40}


def hbm_refusal(message: str) -> Optional[dict[str, Any]]:
  """{what, required_bytes, available_bytes, compiler_message} when `message` is the compiler's
  out-of-HBM refusal, else None."""
  m = _HBM_REFUSAL.search(message)
  if m is None:
    return None
  line = next(l for l in message.splitlines() if 'Ran out of memory on HBM' in l)
  return {'what': m['what'].strip(),
          'required_bytes': round(float(m['required']) * _UNITS[m['ru']]),
          'available_bytes': round(float(m['available']) * _UNITS[m['au']]),
          'compiler_message': line.strip()}


def refused(refusal: dict[str, Any], run: TrainRun, s: topology.Slice, mesh: jax.sharding.Mesh,
            gin_files: Optional[list[str]] = None, gin_bindings: Optional[list[str]] = None
            ) -> dict[str, Any]:
  """The report of a step the compiler refused for HBM: DOES NOT FIT with the bytes it named
  (no FLOPs, collectives or layers: there is no executable to read them from)."""
  return {
      **_header(run, s, mesh, gin_files, gin_bindings),
      'memory_per_chip': dict(refusal, fits=False, refused_by_compiler=True,
                              hbm_bytes=topology.CHIPS[s.kind].hbm_bytes,
                              shortfall_bytes=refusal['required_bytes'] -
                              refusal['available_bytes']),
  }


def _libtpu_version() -> Optional[str]:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version('libtpu')
  except metadata.PackageNotFoundError:
    return None
