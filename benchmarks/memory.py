"""The memory case: peak memory of a train step.

Each model runs in a fresh subprocess (`python -m benchmarks.memory --child NAME ...`) so the
high-water marks belong to that model alone: host RSS high-water marks after
imports, after building (params + optimizer state + compile) and after two steps (VmHWM from
/proc/self/status, else `resource.getrusage`); on an
accelerator also the device's `peak_bytes_in_use` from `jax.Device.memory_stats()`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

from benchmarks import context as ctx_lib

CASE = 'memory'
_MARK = 'MEMORY_RESULT '


def _max_rss_bytes() -> int:
  """This process's peak resident set size.

  Linux's VmHWM (/proc/self/status) belongs to the current address space; getrusage's
  ru_maxrss is not used first because it survives fork + exec, so a child started by a large
  parent would report the parent's high-water mark."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024            # kB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB


def child(name: str, suite: str, quick: bool) -> dict:
  """Runs in the subprocess: builds the workload `name`, runs two steps, reports memory."""
  import jax
  from benchmarks import timing, train_step
  after_imports = _max_rss_bytes()
  w = {x.name: x for x in train_step.workloads(suite, quick)}[name]
  step = train_step.build_step(train_step.workload_config(w, suite), train_step.random_batch(w))
  timing.block(step())
  after_first = _max_rss_bytes()
  timing.block(step())
  out = {'host_rss_after_imports_bytes': after_imports,
         'host_rss_peak_after_first_step_bytes': after_first,
         'host_rss_peak_bytes': _max_rss_bytes()}
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    out['device_peak_bytes_in_use'] = int(stats['peak_bytes_in_use'])
    out['device_bytes_limit'] = int(stats.get('bytes_limit', 0))
  return out


def run(ctx: ctx_lib.Context) -> list[dict]:
  from benchmarks import train_step
  rows = []
  env = dict(os.environ)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = repo + os.pathsep + env.get('PYTHONPATH', '')
  for w in train_step.workloads(ctx.suite, ctx.quick):
    if w.dispatch:     # the same model as a workload before it, on another dispatcher
      continue
    cmd = [sys.executable, '-m', 'benchmarks.memory', '--child', w.name, '--suite', ctx.suite]
    cmd += ['--quick'] if ctx.quick else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo, timeout=900)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(_MARK)]
    if proc.returncode or not lines:
      rows.append(ctx_lib.record(CASE, w.name, 'train_step', status='failed',
                                 reason=f'exit {proc.returncode}: {proc.stderr[-300:]}'))
      continue
    metrics = json.loads(lines[-1][len(_MARK):])
    metrics['host_rss_peak_gib'] = metrics['host_rss_peak_bytes'] / 2**30
    ctx.log(f'{w.name}: host RSS peak {metrics["host_rss_peak_gib"]:.2f} GiB')
    rows.append(ctx_lib.record(CASE, w.name, 'train_step', metrics=metrics,
                               params={'batch': w.batch, 'inputs_len': w.inputs_len,
                                       'targets_len': w.targets_len}))
  return rows


def _main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--child', required=True)
  p.add_argument('--suite', default='cpu')
  p.add_argument('--quick', action='store_true')
  args = p.parse_args()
  if args.suite == 'cpu':
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  print(_MARK + json.dumps(child(args.child, args.suite, args.quick)), flush=True)


if __name__ == '__main__':
  _main()
