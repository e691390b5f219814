"""Pod plans of the paper's models: for each, the smallest TPU slice (fewest chips, then least
HBM) and overlay on which `python -m moe_flan.aot` compiles its instruction-tuning step and
finds it fits, at gin/runs/instruction_tune.gin's batch size and feature lengths.

  python -m benchmarks.aot_plans --model switch_base            # one model, its candidates in order
  python -m benchmarks.aot_plans --assemble                     # results/aot/*.json -> aot.json, table

Each model's candidates are tried in order, each a separate `moe_flan.aot` process (a compile
of a base-size model takes minutes of CPU), until one fits; every attempt is kept in
results/aot/<model>.json, and `--assemble` writes benchmarks/results/aot.json and prints the
Markdown table of launch/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'benchmarks', 'results')
RUN_FILE = 'gin/runs/instruction_tune.gin'
EP = 'gin/partitioning/expert_parallel_shard_map.gin'
DP = 'gin/partitioning/data_parallel.gin'
EMP = 'gin/partitioning/expert_model_parallel.gin'

# model -> candidates (topology, overlay, extra gin flags), smallest first. MoE models use the
# explicit expert-parallel dispatcher, to which the all-to-all goal applies. Its routing groups
# must split over every (data x expert) shard in both stacks, or the trainer refuses the run:
# the decoder's 64 x 128 = 8,192 tokens make 4 groups of 2,048 for 4 shards (the encoder 16),
# 8 of 1,024 for 8 shards, 16 of 512 for data 2 x expert 8.
EP4 = ['--gin.EXPERT_PARTITIONS=4', '--gin.MoeConfig.group_size=2048']
EP8 = ['--gin.EXPERT_PARTITIONS=8', '--gin.MoeConfig.group_size=1024']
CANDIDATES: dict[str, list[tuple[str, str, list[str]]]] = {
    't5_1_1_base': [('v5e:2x2', DP, []), ('v5p:2x2x1', DP, [])],
    'gshard_base': [('v5e:2x2', EP, EP4), ('v5p:2x2x1', EP, EP4)],
    'st_moe_base': [('v5e:2x2', EP, EP4), ('v5p:2x2x1', EP, EP4)],
    'expert_choice_base': [('v5e:2x2', EP, EP4), ('v5p:2x2x1', EP, EP4)],
    'switch_base': [('v5p:2x2x1', EP, EP4), ('v5p:2x2x2', EP, EP8)],
    # Expert x model x data (FSDP) parallelism, 4 x 4 x 4 on 64 v5p chips: one torus axis each.
    # (Expert 8 x model 4 x data 2 is refused by jax.make_mesh, before compiling: 8 and 2 are not
    # products of the 4x4x4 torus's axes.) With FSDP every weight, the experts' too, is split
    # 64 ways; 512-token routing groups split both stacks' groups over the 16 data x expert shards.
    'st_moe_32b': [('v5p:4x4x4', EMP, ['--gin.EXPERT_PARTITIONS=4', '--gin.MODEL_PARTITIONS=4',
                                       '--gin.logical_axis_rules.fsdp=True',
                                       '--gin.MoeConfig.group_size=512',
                                       "--gin.MoeConfig.dispatch='expert_parallel'"])],
}


# Scanned plans rematerialise every block: a scan keeps each block's residuals for the backward
# pass, which the TPU compiler cannot recompute across the loop as it does in an unrolled step
# (T5.1.1-base on v5e:2x2 needed 18.55 GiB of temporaries scanned without remat, 7.37 GiB
# unrolled). Everything is recomputed but the MoE layers' exchanged tokens (for a dense model
# the same as 'full'), so the backward pass does not repeat the forward all-to-alls.
REMAT_POLICY = 'save_moe_exchanges'


def command(model: str, topology: str, overlay: str, extra: list[str], out: str,
            scan_layers: bool = True) -> list[str]:
  """The moe_flan.aot command of one candidate. The layers are scanned (T5Config.scan_layers,
  with REMAT_POLICY) unless told otherwise: the compiler then compiles one block of layers
  instead of every layer, which takes a base model's compile from about 600 CPU-seconds and
  8 GB to a fraction."""
  scan = (['--gin.T5Config.scan_layers=True', f"--gin.T5Config.remat_policy='{REMAT_POLICY}'"]
          if scan_layers else [])
  return [sys.executable, '-m', 'moe_flan.aot', f'--gin_file=gin/models/{model}.gin',
          f'--gin_file={RUN_FILE}', f'--gin_file={overlay}', *extra, *scan,
          f'--topology={topology}', f'--out={out}']


def _status_bytes(pid: int, field: str) -> int:
  """A /proc/PID/status memory field of process `pid` in bytes (Linux), 0 once it is gone."""
  try:
    with open(f'/proc/{pid}/status') as f:
      return next((int(line.split()[1]) * 1024 for line in f if line.startswith(field + ':')), 0)
  except OSError:
    return 0


def run_limited(cmd: list[str], env: dict[str, str], timeout_s: float,
                max_rss_bytes: float) -> dict[str, Any]:
  """Runs `cmd`, stopping it past `timeout_s` of wall time or `max_rss_bytes` of resident set
  (0: no limit), sampled every 0.5 s. Returns its exit status (None when stopped), why it was
  stopped, the last 3,000 characters of its output, wall and CPU seconds and peak resident
  set: the child's own high-water mark (VmHWM, last sampled before it ended; not wait4's
  ru_maxrss, which on Linux starts from the parent's peak when the child execs)."""
  t0 = time.time()
  with tempfile.TemporaryFile('w+') as log:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True)
    stopped, peak = None, 0
    while True:
      pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid:
        break
      rss, elapsed = _status_bytes(proc.pid, 'VmRSS'), time.time() - t0
      peak = max(peak, _status_bytes(proc.pid, 'VmHWM'))
      if max_rss_bytes and rss > max_rss_bytes:
        stopped = (f'stopped at a resident set of {rss / 2 ** 30:.2f} GiB (limit '
                   f'{max_rss_bytes / 2 ** 30:.2f} GiB) after {elapsed:.0f} s')
      elif elapsed > timeout_s:
        stopped = f'no result within {timeout_s:.0f} s'
      if stopped:
        proc.kill()
        _, status, usage = os.wait4(proc.pid, 0)
        break
      time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here, not by Popen
    log.seek(0)
    tail = log.read()[-3000:]
  return {'returncode': None if stopped else proc.returncode, 'stopped': stopped,
          'wall_s': round(time.time() - t0, 1), 'cpu_s': round(usage.ru_utime + usage.ru_stime),
          'peak_rss_bytes': peak, 'output_tail': stopped or tail}


def plan_model(model: str, timeout_s: float, max_candidates: int = 0,
               max_rss_bytes: float = 0, scan_layers: bool = True) -> dict[str, Any]:
  """Tries `model`'s candidates in order (the first `max_candidates`, all if 0) until one
  fits, each within `timeout_s` and `max_rss_bytes` (see run_limited), with its layers scanned
  or unrolled; returns every attempt and writes them to results/aot/<model>.json, after the
  attempts already recorded there (the table shows the latest that fit)."""
  os.makedirs(os.path.join(RESULTS, 'aot'), exist_ok=True)
  path = os.path.join(RESULTS, 'aot', f'{model}.json')
  earlier = []
  if os.path.exists(path):
    with open(path) as f:
      earlier = json.load(f)['attempts']
  attempts = []
  for topology, overlay, extra in CANDIDATES[model][:max_candidates or None]:
    out = os.path.join(tempfile.gettempdir(), f'aot_plan.{model}.{topology.replace(":", "_")}.json')
    cmd = command(model, topology, overlay, extra, out, scan_layers)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
    attempt = {'command': ' '.join(cmd[1:]), 'scan_layers': scan_layers,
               'remat_policy': REMAT_POLICY if scan_layers else 'none',
               'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
                   timespec='seconds'), 'load_average': os.getloadavg()}
    attempt.update(run_limited(cmd, env, timeout_s, max_rss_bytes))
    if attempt['returncode'] in (0, 1) and os.path.exists(out):
      with open(out) as f:
        attempt['report'] = json.load(f)
    attempts.append(attempt)
    if attempt['returncode'] == 0:
      break
  result = {'model': model, 'attempts': earlier + attempts}
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  return result


def _row(model: str, result: dict[str, Any]) -> str:
  fit = next((a for a in reversed(result['attempts']) if a.get('returncode') == 0), None)
  shown = fit or (result['attempts'][-1] if result['attempts'] else None)
  if shown is not None and 'report' not in shown and 'date' in shown:   # run, no report
    flags = dict(a.split('=', 1) for a in shown['command'].split() if '=' in a)
    topology, overlay = flags['--topology'], os.path.basename(flags['--gin_file'])
    frame = re.search(r'xla::[\w:]+', shown['output_tail'])
    why = (f"not finished: {shown['stopped']}" if shown['stopped'] else
           f"the compiler crashed (signal {-shown['returncode']}"
           + (f" in {frame.group(0)}" if frame else '') + ')'
           if (shown['returncode'] or 0) < 0 else
           f"failed: {shown['output_tail'].strip().splitlines()[-1].rstrip('.')}")
    return (f"| {model} | {topology}, tried | {overlay.removesuffix('.gin')} | {why}, "
            f"{shown['cpu_s']} CPU-s ({shown['date'][:10]}, load "
            f"{shown['load_average'][0]:.0f}) | | | | |")
  if shown is None or 'report' not in shown:
    why = shown['output_tail'].strip().splitlines()[-1] if shown else 'not run'
    return f'| {model} | - | - | not planned: {why} | | | | |'
  r = shown['report']
  if result.get('superseded'):   # a configuration the command now refuses, kept as measured
    model = f"{model} ({result['superseded']})"
  m = r['memory_per_chip']
  mesh = 'x'.join(str(v) for v in r['mesh'].values())
  overlay = os.path.basename(r['gin_files'][-1]).removesuffix('.gin')
  if m.get('refused_by_compiler'):
    return (f"| {model} | {r['topology']} ({r['num_chips']}), tried | {overlay} {mesh} | DOES NOT "
            f"FIT (the compiler refused it): {m['what']} {m['required_bytes'] / 2 ** 30:.2f} GiB "
            f"of {m['available_bytes'] / 2 ** 30:.2f} GiB available, {shown['cpu_s']} CPU-s "
            "| | | | |")
  f = r['flops']
  ratios = [l['ratio'] for l in r['moe_layers'] if l['ratio'] is not None]
  a2a = sum(c['bytes_per_chip'] for c in r['collectives'] if c['kind'] == 'all-to-all')
  coll = sum(c['bytes_per_chip'] for c in r['collectives'])
  gib = lambda x: f'{x / 2 ** 30:.1f}'
  return (f"| {model} | {r['topology']} ({r['num_chips']}) | {overlay} {mesh} | "
          f"{'fits' if m['fits'] else 'DOES NOT FIT'}: {gib(m['total'])} / {gib(m['hbm_bytes'])} "
          f"GiB | {gib(coll)} GiB ({gib(a2a)} a2a) | "
          + (f"{max(ratios):.2f}x" if ratios else '-') +
          f" | {f['model_flops_per_step']:.3g} / {f['xla_flops_per_step']:.3g}"
          + ('*' if r.get('scan_layers') and 'xla_loop_flops_added_per_chip' not in f else '')
          + ' | '

          + (f"{100 * f['mfu_upper_bound']:.0f}%" if f['mfu_upper_bound'] else '-')
          + f" | {r['compile_s']:.0f} s"
          + (f", {shown['cpu_s']} CPU-s" if shown.get('cpu_s') else '')
          + (f", {gib(shown['peak_rss_bytes'])} GiB RSS" if shown.get('peak_rss_bytes') else '')
          + (f", scanned (remat {shown.get('remat_policy', 'none')})" if r.get('scan_layers')
             else ', unrolled') + ' |')


def _host() -> dict[str, Any]:
  """What compiled the plans: package versions, CPU count and memory of this host."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  versions = {}
  for package in ('jax', 'jaxlib', 'libtpu'):
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      versions[package] = None
  return {**versions, 'cpus': os.cpu_count(),
          'memory_bytes': os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')}


def assemble() -> str:
  """results/aot/<model>.json -> results/aot.json; returns the Markdown table."""
  models, rows = {}, []
  for model in CANDIDATES:
    path = os.path.join(RESULTS, 'aot', f'{model}.json')
    if os.path.exists(path):
      with open(path) as f:
        models[model] = json.load(f)
    rows.append(_row(model, models.get(model, {'attempts': []})))
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
  doc = {'date': datetime.date.today().isoformat(), 'commit': commit, 'host': _host(),
         'run_file': RUN_FILE, 'goals': {
             'all_to_all_ratio': 'expert-parallel all-to-all bytes per MoE layer <= 1.25x the '
                                 'analytic minimum (scatter / expert_parallel dispatch)',
             'no_expert_replication': 'no expert parameter or optimizer tensor replicated '
                                      "across the 'expert' axis (compiled shardings)"},
         'models': models}
  with open(os.path.join(RESULTS, 'aot.json'), 'w') as f:
    json.dump(doc, f, indent=1)
  head = ('| model | slice (chips) | overlay, mesh d x e x m | HBM per chip | collectives per '
          'chip per step | a2a / minimum | FLOPs per step: model / XLA | MFU bound | compile |\n'
          '|---|---|---|---|---|---|---|---|---|')
  return head + '\n' + '\n'.join(rows)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', action='append', default=[], choices=sorted(CANDIDATES))
  parser.add_argument('--timeout_s', type=float, default=4 * 3600)
  parser.add_argument('--max_candidates', type=int, default=0,
                      help="try only each model's first N candidates (0: all)")
  parser.add_argument('--max_rss_gb', type=float, default=0,
                      help='stop a compile whose resident set passes this many GiB (0: no limit)')
  parser.add_argument('--unrolled', action='store_true',
                      help='compile every layer (T5Config.scan_layers=False), not one scanned block')
  parser.add_argument('--assemble', action='store_true')
  args = parser.parse_args()
  for model in args.model:
    plan_model(model, args.timeout_s, args.max_candidates, args.max_rss_gb * 2 ** 30,
               scan_layers=not args.unrolled)
  if args.assemble:
    print(assemble())
  return 0


if __name__ == '__main__':
  sys.exit(main())
