"""`python -m moe_flan.aot`: compile the trainer's train step for a TPU slice on this host.

  python -m moe_flan.aot --gin_file=gin/models/switch_base.gin \
    --gin_file=gin/runs/instruction_tune.gin --gin_file=gin/partitioning/expert_parallel.gin \
    --gin.EXPERT_PARTITIONS=8 --topology=v5p:2x2x2 [--num_slices=2] [--out=plan.json]

Needs libtpu (`pip install 'moe_flan[tpu]'`), no TPU, network or credentials. Prints per-chip
HBM (FITS / DOES NOT FIT), model and XLA FLOPs with a roofline step time and MFU bound, every
collective by kind and mesh axis, and each MoE layer's all-to-all bytes against the analytic
minimum; --out writes the same as JSON. MODEL_DIR need not be set.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

from moe_flan import atomic_file
from moe_flan.aot import topology   # (no JAX at import: main sets JAX_PLATFORMS first)

GIB = 1024 ** 3


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """(flags, gin bindings) from `argv`; --gin.NAME=VALUE flags become bindings."""
  # Imported here, not at the top: it imports JAX, which reads JAX_PLATFORMS (set by `main`).
  from moe_flan.trainer import cli as train_cli  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='moe_flan.aot', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  train_cli.add_gin_flags(parser)
  parser.add_argument('--topology', required=True, help='e.g. v5e:2x2, v5p:4x4x8, v6e:16x16')
  parser.add_argument('--num_slices', type=int, default=1,
                      help='slices joined by DCN; the data axis spans them')
  parser.add_argument('--out', default=None, help='also write the report as JSON here')
  parser.add_argument('--compiler_stack_mib', type=int,
                      default=topology.DEFAULT_COMPILER_STACK_MIB,
                      help="stack of libtpu's compiler fibers in MiB (default %(default)s: "
                           "ST-MoE-32B overflows libtpu's own default; 0 keeps it)")
  return train_cli.parse_with_gin(
      parser, argv,
      'at least one --gin_file is required (model, train run, partitioning overlay)')


def configure(gin_files: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str] = ()) -> None:
  """Parses gin as the trainer does; MODEL_DIR gets a placeholder (nothing is written)."""
  from moe_flan.trainer import cli as train_cli  # pylint: disable=g-import-not-at-top
  train_cli.configure_gin(train_cli.Flags(
      train_cli.split_commas(gin_files),
      ("MODEL_DIR = 'unused-by-moe_flan.aot'",) + tuple(bindings), tuple(search_paths)))


def plan(gin_files: Sequence[str], bindings: Sequence[str], topology_name: str,
         num_slices: int = 1, search_paths: Sequence[str] = (),
         compiler_stack_mib: int = topology.DEFAULT_COMPILER_STACK_MIB) -> dict[str, Any]:
  """Checks the slice, parses gin, builds, compiles and reports (see moe_flan.aot.report).
  compiler_stack_mib: see `topology.libtpu_init_args`."""
  import jax  # pylint: disable=g-import-not-at-top  (after main set JAX_PLATFORMS)
  from moe_flan.aot import compiled_step, report  # pylint: disable=g-import-not-at-top
  s = topology.parse(topology_name, num_slices)
  devices = topology.devices(s, compiler_stack_mib)   # bad names fail here, before gin or model
  configure(gin_files, bindings, search_paths)
  mesh = compiled_step.mesh_for(devices, s.num_slices)
  run = compiled_step.train_run_from_gin()
  try:
    step = compiled_step.compile_train_step(run, mesh)
  except jax.errors.JaxRuntimeError as e:   # the compiler's own verdict that it cannot fit
    refusal = report.hbm_refusal(str(e))
    if refusal is None:
      raise
    return report.refused(refusal, run, s, mesh, list(gin_files), list(bindings))
  return report.build(step, s, mesh, list(gin_files), list(bindings))


def _gib(x: float) -> str:
  for unit, size in (('GiB', GIB), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
    if abs(x) >= size:
      return f'{x / size:.2f} {unit}'
  return f'{x:.0f} B'


def format_report(r: dict[str, Any]) -> str:
  """The report as the text the command prints."""
  if r['memory_per_chip'].get('refused_by_compiler'):
    return format_refusal(r)
  m, f, g = r['memory_per_chip'], r['flops'], r['goals']
  lines = [
      f"moe_flan.aot: {r['topology']} x{r['num_slices']} ({r['num_chips']} chips {r['chip']}), "
      f"mesh {r['mesh']}, batch {r['batch_size']}, lengths {r['feature_lengths']}, "
      f"{r['num_params'] / 1e9:.3f}B params, dispatch {r['dispatch']}, "
      f"{'scanned' if r.get('scan_layers') else 'unrolled'} layers, "
      f"compiled in {r['compile_s']:.0f} s",
      f"HBM per chip: {'FITS' if m['fits'] else 'DOES NOT FIT'} -- {_gib(m['total'])} of "
      f"{_gib(m['hbm_bytes'])} (margin {_gib(m['margin_bytes'])}, "
      f"{100 * m['margin_fraction']:.1f}%)",
      f"  parameters {_gib(m['parameters'])}, optimizer state {_gib(m['optimizer_state'])}, "
      f"batch {_gib(m['batch'])}; compiler: arguments {_gib(m['arguments'])}, outputs "
      f"{_gib(m['outputs'])} (aliased {_gib(m['aliased'])}), temporaries "
      f"{_gib(m['temporaries'])}, code {_gib(m['generated_code'])}",
      f"FLOPs per step: model {f['model_flops_per_step']:.4g}, XLA {f['xla_flops_per_step']:.4g}"
      + (' (loops: matmuls every iteration, the rest one block per scanned stack)'
         if f.get('xla_costs_count_loop_bodies_once') else '')
      + f"; XLA's step estimate: {f['xla_estimated_step_s'] or 'none'}",
      f"  roofline per chip: compute {f['roofline']['compute_s'] * 1e3:.2f} ms, HBM "
      f"{f['roofline']['hbm_s'] * 1e3:.2f} ms, ICI {f['roofline']['ici_s'] * 1e3:.2f} ms -> "
      f"step >= {f['roofline']['step_time_lower_bound_s'] * 1e3:.2f} ms "
      f"({f['roofline']['limited_by']}-bound), MFU <= "
      + (f"{100 * f['mfu_upper_bound']:.1f}%" if f['mfu_upper_bound'] else 'n/a'),
      'Collectives per step (bytes per chip: buffer / sent over links):']
  for c in r['collectives']:
    lines.append(f"  {c['kind']:<19} over {c['mesh_axes']:<24} x{c['count']:<5} "
                 f"{_gib(c['bytes_per_chip']):>12} / {_gib(c['link_bytes_per_chip'])}")
  if not r['collectives']:
    lines.append('  none')
  for l in r['moe_layers']:
    ratio = (f"{l['ratio']:.2f}x the minimum" if l['ratio'] is not None else
             'the all-to-alls carry no layer names; minimum' if l.get('all_to_all_unattributed')
             else 'no expert axis')
    lines.append(f"MoE {l['layer']}: all-to-all x{l['all_to_all_count']} "
                 f"{_gib(l['all_to_all_bytes_per_chip'])} per chip ({ratio} "
                 f"{_gib(l['analytic_min_bytes_per_chip'])})")
  if g['all_to_all_goal_applies']:
    met = g['all_to_all_goal_met']
    lines.append(f"goal: all-to-all <= {g['all_to_all_ratio_goal']}x minimum: "
                 + ('not measured' if met is None else 'met' if met else 'NOT met'))
  if g['no_expert_replication_goal_met'] is not None:
    lines.append('goal: no expert tensor replicated across the expert axis: '
                 + ('met' if g['no_expert_replication_goal_met'] else
                    f"NOT met ({len(g['expert_tensors_replicated_across_expert'])} tensors)"))
  return '\n'.join(lines)


def format_refusal(r: dict[str, Any]) -> str:
  m = r['memory_per_chip']
  return (f"moe_flan.aot: {r['topology']} x{r['num_slices']} ({r['num_chips']} chips "
          f"{r['chip']}), mesh {r['mesh']}, batch {r['batch_size']}, lengths "
          f"{r['feature_lengths']}\nHBM per chip: DOES NOT FIT -- the compiler refused the step: "
          f"{m['what']} need {_gib(m['required_bytes'])}, {_gib(m['available_bytes'])} available "
          f"of the chip's {_gib(m['hbm_bytes'])} (short by {_gib(m['shortfall_bytes'])})")


def main(argv: Optional[Sequence[str]] = None) -> int:
  # A plan never opens an accelerator: without this, JAX with libtpu installed tries the TPU
  # first (and logs errors) on a CPU host. Topology compiles work on the CPU platform.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  args, bindings = parse_args(sys.argv[1:] if argv is None else argv)
  result = plan(args.gin_file, bindings, args.topology, args.num_slices, args.gin_search_paths,
                args.compiler_stack_mib)
  print(format_report(result), flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_file.write_json(args.out, result, sort_keys=False)
  return 0 if result['memory_per_chip']['fits'] else 1


def console_main() -> None:
  from moe_flan.trainer import cli as train_cli  # pylint: disable=g-import-not-at-top
  train_cli.console_entry(main, 'moe_flan.aot')
