"""Benchmark runner: `python -m benchmarks.run --suite cpu [--quick]` or `--suite gpu`.

Measures the XLA matmul peak, runs the suite's cases (each in this process, candidates side by
side), writes benchmarks/results/<suite>[_quick].json and prints the tables of ratios and the
targets. A case that fails is recorded as failed and the others still run.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

SUITES = {
    'cpu': ('moe_layer', 'train_step', 'input_pipeline', 'memory', 'hf_switch', 'grouped_matmul',
            'step_buffers', 'eval_rank'),
    'gpu': ('train_step', 'moe_layer', 'memory'),
}
_PEAK_SIZE = {('cpu', False): 2048, ('cpu', True): 256, ('gpu', False): 8192, ('gpu', True): 1024}


def _parse(argv):
  p = argparse.ArgumentParser(prog='python -m benchmarks.run', description=__doc__)
  p.add_argument('--suite', choices=sorted(SUITES), default='cpu')
  p.add_argument('--quick', action='store_true', help='tiny shapes, few repeats (CI)')
  p.add_argument('--cases', default='', help='comma-separated subset of the suite\'s cases')
  p.add_argument('--repeats', type=int, default=None, help='timed rounds per comparison')
  p.add_argument('--results_dir', default=None, help='default: benchmarks/results')
  return p.parse_args(argv)


def main(argv=None) -> dict:
  args = _parse(sys.argv[1:] if argv is None else argv)
  if args.suite == 'gpu':
    # JAX would take 75% of the GPU's memory up front, leaving the memory case's child
    # processes (one model each, while this process still holds its own) too little.
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  if args.suite == 'cpu':
    os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  from benchmarks import context, peak, report, targets   # after the platform is chosen
  cases = [c for c in args.cases.split(',') if c] or list(SUITES[args.suite])
  unknown = sorted(set(cases) - set(SUITES[args.suite]))
  if unknown:
    raise ValueError(f'--cases: {unknown} not in suite {args.suite!r}: {SUITES[args.suite]}')
  dtype = 'bfloat16' if args.suite == 'gpu' else 'float32'
  repeats = args.repeats or (2 if args.quick else 5)
  peak_rec = peak.measure(_PEAK_SIZE[(args.suite, args.quick)], dtype, repeats=repeats)
  bandwidth = peak.measure_bandwidth(16 if args.quick else 256, repeats=repeats)
  peak_rec['bytes_per_s'] = bandwidth['bytes_per_s']
  peak_rec['in_place_bytes_per_s'] = bandwidth['in_place_bytes_per_s']
  ctx = context.Context(args.suite, args.quick, dtype, repeats, peak_rec)
  ctx.log(f'matmul peak {peak_rec["flops_per_s"] / 1e9:.1f} GFLOP/s ({dtype}, '
          f'{peak_rec["size"]}^3); memory bandwidth {bandwidth["bytes_per_s"] / 1e9:.1f} GB/s '
          f'(fresh output), {bandwidth["in_place_bytes_per_s"] / 1e9:.1f} GB/s (in place)')
  command = ('python -m benchmarks.run ' + ' '.join(sys.argv[1:] if argv is None else argv)).strip()
  path = report.results_path(args.suite, args.quick, args.results_dir or report.RESULTS_DIR)
  records, result = [], {}
  for name in cases:
    start = time.time()
    try:
      records += importlib.import_module(f'benchmarks.{name}').run(ctx)
    except Exception as e:  # noqa: BLE001  (one broken case must not hide the others)
      traceback.print_exc()
      records.append(context.record(name, name, '-', status='failed',
                                    reason=f'{type(e).__name__}: {str(e)[:300]}'))
    ctx.log(f'{name} done in {time.time() - start:.0f} s')
    # Written after every case (complete=False until the end), so a cut-off run keeps its cases.
    result = report.build(args.suite, args.quick, command, peak_rec, records,
                          targets.evaluate(args.suite, records))
    result['complete'] = name == cases[-1]
    report.write(result, path)
  print(f'\n## {args.suite}{" (quick)" if args.quick else ""} — {result["date"]} — '
        f'{result["machine"]["cpu_model"]}, {result["machine"]["cpu_cores"]} cores\n')
  print(f'XLA matmul peak: {peak_rec["flops_per_s"] / 1e9:.1f} GFLOP/s ({dtype}); streaming '
        f'memory bandwidth {peak_rec["bytes_per_s"] / 1e9:.1f} GB/s\n')
  summary = report.moe_layer_summary(records)
  if summary:
    print('MoE layer fwd+bwd time / dense FFN of equal active FLOPs (medians):\n')
    print(summary + '\n')
  print(report.table(records) + '\n')
  print(report.targets_table(result['targets']) + '\n')
  print(f'wrote {path}')
  return result


if __name__ == '__main__':
  main()
