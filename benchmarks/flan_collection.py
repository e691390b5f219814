"""FLAN Collection data path: prepare, and the training input pipeline from the prepared shards,
each beside a trivial reader of the same data, and the pipeline against a train step's rate.

  python -m benchmarks.flan_collection [--size_mb 256] [--tasks_per_source 12] [--quick]

1. Generates an export in the published schema (inputs, targets, task_source, task_name,
   template_type), half Parquet and half JSONL: 5 sources x --tasks_per_source tasks x 4
   template types (zs/fs x opt/noopt), few-shot inputs ~4x longer, 1% exact duplicates, 0.1%
   rows with an empty `inputs`.
2. Prepare (`tasks.flan_collection.prepare`, storing token ids: `vocabulary='default'`) and a
   baseline that only parses the same files
   (pyarrow batches, json.loads per line), each in a fresh child process: rows/s, their ratio,
   and each child's peak resident memory (VmHWM), also above a child that only imports the
   same modules (the bound prepare must keep whatever the input size).
3. In one fresh child process, registers the result two or three times (reading the stored ids
   packed by tasks.packing, the default; the same packed by seqio's packer, `packer='seqio'`,
   giving the same batches; and, unless --no_text_path, tokenizing the stored text while
   reading, as a collection prepared without a vocabulary is read) and times, round-robin over
   the rounds, packed `flan2022` batches at instruction-tuning lengths (2048 -> 512, seqio
   tasks grouped by task) from `tasks.pipeline.get_batches` of each, against a trivial reader of the same train shards
   (`tf.data.TFRecordDataset` + parse, batched by 64, no tokenizing, mixing or packing), each
   round after a few untimed batches that empty the prefetch stock: examples/s, the
   pipelines' tokens/s (non-padding) and token slots/s, their ratios to the reader, start-up
   times and the child's peak memory, and per round the process's CPU seconds (token slots
   per CPU second: a pipeline's cost, less sensitive than wall-clock rates to other jobs on a
   shared machine).
4. Headroom: the ids pipeline's token slots/s over those of the train steps recorded in
   benchmarks/results (CPU 'base-like', H200 'switch-base-like'), i.e. how many such steps one
   host's pipeline keeps fed, also per core of this machine (tf.data uses every core).
Writes benchmarks/results/flan_collection/cpu[_quick].json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'benchmarks', 'results')
SOURCES = ('Flan2021', 'T0', 'NIv2', 'CoT', 'Dialog')
TEMPLATES = ('zs_opt', 'zs_noopt', 'fs_opt', 'fs_noopt')
LENGTHS = {'inputs': 2048, 'targets': 512}
# Recorded train steps: (results file, record name), whose token slots/s are the consumption.
CONSUMERS = (('cpu.json', 'base-like'), ('gpu_h200/gpu_run1.json', 'switch-base-like'))
_MARK = 'FLAN_BENCH_RESULT '
PREPARE_MODULES = 'tasks.flan_collection.prepare'
PIPELINE_MODULES = 'tasks,tasks.pipeline,tasks.flan_collection'
BASELINE_BATCH = 64   # parsed examples per trivial-reader element
BASELINE_MIN_EXAMPLES = 4096   # per round, so a round is long beside its prefetch stock
DRAIN_BATCHES = 8     # untimed baseline elements / 4 at the start of every round (see _drain)


def _words(rng: random.Random, n: int) -> List[str]:
  syllables = ('ka', 'lo', 'mi', 'nu', 'pe', 'ra', 'si', 'to', 'va', 'de', 'an', 'er', 'in')
  return [''.join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def rows(size_bytes: int, tasks_per_source: int, seed: int = 0):
  """Yields export rows (dicts) until about `size_bytes` of JSON has been produced."""
  rng = random.Random(seed)
  vocab = _words(rng, 5000)
  written, recent = 0, []
  while written < size_bytes:
    if recent and rng.random() < 0.01:
      row = rng.choice(recent)                                            # exact duplicate
    elif rng.random() < 0.001:
      row = {'inputs': '', 'targets': 'x', 'task_source': 'T0', 'task_name': 'bad',
             'template_type': 'zs_opt'}                                   # rejected: empty
    else:
      source, ttype = rng.choice(SOURCES), rng.choice(TEMPLATES)
      n_in = rng.randint(60, 200) * (4 if ttype.startswith('fs') else 1)
      row = {'inputs': ' '.join(rng.choices(vocab, k=n_in)) + '?',
             'targets': ' '.join(rng.choices(vocab, k=rng.randint(3, 40))),
             'task_source': source,
             'task_name': f'{source.lower()}_task_{rng.randrange(tasks_per_source):03d}',
             'template_type': ttype}
      recent = (recent + [row])[-100:]
    written += len(json.dumps(row)) + 1
    yield row


def generate(src_dir: str, size_bytes: int, tasks_per_source: int) -> int:
  """Writes export.jsonl and export.parquet (about half the rows each); returns the rows."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  os.makedirs(src_dir, exist_ok=True)
  columns = ('inputs', 'targets', 'task_source', 'task_name', 'template_type')
  schema = pa.schema([(c, pa.string()) for c in columns])
  n, chunk = 0, []
  with open(os.path.join(src_dir, 'export.jsonl'), 'w', encoding='utf-8') as jf, \
      pq.ParquetWriter(os.path.join(src_dir, 'export.parquet'), schema) as pw:
    for row in rows(size_bytes, tasks_per_source):
      n += 1
      if n % 2:
        jf.write(json.dumps(row) + '\n')
        continue
      chunk.append(row)
      if len(chunk) == 8192:
        pw.write_table(pa.table({c: [r[c] for r in chunk] for c in columns}, schema=schema))
        chunk = []
    if chunk:
      pw.write_table(pa.table({c: [r[c] for r in chunk] for c in columns}, schema=schema))
  return n


def _peak_rss_mib() -> float:
  """This process's resident high-water mark (VmHWM: the current address space only)."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024
  return float('nan')


def _child(args: List[str]) -> Dict[str, Any]:
  """Runs `python -m benchmarks.flan_collection --child ...`; returns its result dict."""
  env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES='', JAX_PLATFORMS='cpu')
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.flan_collection', '--child'] + args,
                        env=env, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f'child {args[0]} failed: {proc.stderr[-3000:]}')
  line = [l for l in proc.stdout.splitlines() if l.startswith(_MARK)][-1]
  return dict(json.loads(line[len(_MARK):]), child_wall_s=time.perf_counter() - start)


def child_imports(modules: str) -> Dict[str, Any]:
  """The interpreter with `modules` (comma-separated) imported: what a child costs before work."""
  import importlib  # pylint: disable=g-import-not-at-top
  for name in modules.split(','):
    importlib.import_module(name)
  return {'modules': modules}


def child_read_raw(src_dir: str) -> Dict[str, Any]:
  """The prepare baseline: parse every row of the export and touch its text, nothing else."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  start, n, chars = time.perf_counter(), 0, 0
  with open(os.path.join(src_dir, 'export.jsonl'), encoding='utf-8') as f:
    for line in f:
      row = json.loads(line)
      n, chars = n + 1, chars + len(row['inputs']) + len(row['targets'])
  for batch in pq.ParquetFile(os.path.join(src_dir, 'export.parquet')).iter_batches(4096):
    for inp, tgt in zip(batch.column('inputs').to_pylist(), batch.column('targets').to_pylist()):
      n, chars = n + 1, chars + len(inp) + len(tgt)
  return {'rows': n, 'chars': chars, 'seconds': time.perf_counter() - start}


def child_prepare(src_dir: str, out: str, num_shards: int, vocabulary: str = 'default'
                  ) -> Dict[str, Any]:
  from tasks.flan_collection import prepare  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  index = prepare.prepare(src_dir, out, log=lambda *a: None, num_shards=num_shards,
                          vocabulary=vocabulary)
  return {'seconds': time.perf_counter() - start, 'bad_rows': index['bad_rows'],
          'units': len(index['units']),
          'examples': sum(s['examples'] for u in index['units'] for s in u['splits'].values()),
          'duplicates': sum(s['duplicates'] for u in index['units']
                            for s in u['splits'].values())}


def _baseline_iterator(data_dir: str):
  """Parsed train examples of every shard, interleaved: the trivial reader."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from tasks.flan_collection import index as index_lib, tokens, writing
  index = index_lib.load(data_dir)
  description = writing.feature_description(tokens.ID_FEATURES.values() if index.get(
      'vocabulary') else ())
  files = sorted(os.path.join(data_dir, s['file']) for u in index['units']
                 for s in u['splits'].get('train', {}).get('shards', []))
  ds = tf.data.Dataset.from_tensor_slices(files).interleave(
      tf.data.TFRecordDataset, cycle_length=16, num_parallel_calls=tf.data.AUTOTUNE)
  def parse(record):   # every feature parsed; the id lists are reduced to their count
    ex = tf.io.parse_single_example(record, description)
    return {'inputs': ex['inputs'], 'targets': ex['targets'],
            'ids': sum((tf.size(ex[k]) for k in description if k.endswith('_ids')),
                       tf.constant(0))}

  ds = ds.map(parse,
              num_parallel_calls=tf.data.AUTOTUNE).repeat().batch(BASELINE_BATCH)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _drain(it, n: int) -> None:
  # Both iterators prefetch in the background while the other is timed; consuming more items
  # than their prefetch depth, untimed, empties that stock so the timed items come at the
  # producer's steady rate.
  for _ in range(n):
    next(it)


def _time_baseline(it, n: int) -> Tuple[float, int, int]:
  _drain(it, DRAIN_BATCHES * 4)
  start, chars, examples = time.perf_counter(), 0, 0
  while examples < n:
    ex = next(it)
    examples += len(ex['inputs'])
    chars += sum(len(x) for x in ex['inputs']) + sum(len(x) for x in ex['targets'])
  return time.perf_counter() - start, chars, examples


def _cpu_s() -> float:
  return time.process_time()    # every thread of this process (tf.data's too), ns resolution


def _time_pipeline(it, n: int, drain: int) -> Tuple[float, int, int, float]:
  """(seconds, tokens, examples, CPU seconds of this process) for `n` batches, after `drain`
  untimed ones. Both packers make rows a block of max(lengths) = 2,048 examples at a time
  (~1,400 rows, ~175 batches of 8 here), so a pipeline's stock made while the others were timed
  can be several blocks: the drain must be longer than that, or the round times the stock."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  _drain(it, drain)
  start, cpu, tokens, examples = time.perf_counter(), _cpu_s(), 0, 0
  for _ in range(n):
    batch = next(it)
    tokens += int((batch['encoder_input_tokens'] > 0).sum() +
                  (batch['decoder_target_tokens'] > 0).sum())
    examples += int(sum(len(np.unique(r[r > 0])) for r in batch['encoder_segment_ids']))
  return time.perf_counter() - start, tokens, examples, _cpu_s() - cpu


# Contenders: (key, name prefix, read stored ids, packer of tasks.pipeline.get_batches).
CONTENDERS = (('p', '', True, 'vectorized'), ('s', 'seqio_', True, 'seqio'),
              ('t', 'text_', False, 'vectorized'))


def child_pipeline(data_dir: str, batch_size: int, batches: int, rounds: int,
                   text_path: int = 1, drain: int = 8) -> Dict[str, Any]:
  """Round-robin: per round `batches` packed batches from the stored token ids packed by
  tasks.packing ('p'), as many packed by seqio's packer ('s', the same batches), as many from
  the text path ('t', tokenizing while reading; when `text_path`), and as many raw examples as
  the previous ids round packed (at least BASELINE_MIN_EXAMPLES), in rotating order."""
  import tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from tasks import flan_collection, pipeline  # pylint: disable=g-import-not-at-top
  iterators, startup = {}, {}
  for who, prefix, use_tokens, packer in CONTENDERS[:2 + bool(text_path)]:
    start = time.perf_counter()
    registered = flan_collection.register(data_dir, group_by='task', name_prefix=prefix,
                                          use_tokens=use_tokens)
    iterators[who] = pipeline.get_batches(f'{prefix}flan2022', 'train', LENGTHS, batch_size,
                                          seed=0, packer=packer)
    next(iterators[who])
    startup[who] = time.perf_counter() - start
  base = _baseline_iterator(data_dir)
  next(base)
  per_round = []
  for r in range(rounds):
    order = (list(iterators) + ['b'])
    order = order[r % len(order):] + order[:r % len(order)]
    got: Dict[str, Any] = {}
    for who in order:
      if who != 'b':
        (got[f'{who}_s'], got[f'{who}_tokens'], got[f'{who}_examples'],
         got[f'{who}_cpu_s']) = _time_pipeline(iterators[who], batches, drain)
      else:   # as many examples as an ids round packs (~), from the previous round
        n = max(BASELINE_MIN_EXAMPLES, per_round[-1]['p_examples'] if per_round else 0)
        got['b_s'], got['b_chars'], got['b_examples'] = _time_baseline(base, n)
    per_round.append(got)
  return {'startup_s': startup['p'], 'text_startup_s': startup.get('t'),
          'seqio_packer_startup_s': startup['s'],
          'seqio_tasks': len(registered['tasks']), 'rounds': per_round,
          'batch_size': batch_size, 'batches_per_round': batches, 'drain_batches': drain}


def summarise_pipeline(res: Dict[str, Any], who: str = 'p') -> Dict[str, Any]:
  """Per-round rates of contender `who` ('p' ids, 's' ids with seqio's packer, 't' text) and
  their medians; ratio = its examples/s / the trivial reader's examples/s in the same round;
  per CPU second: token slots over the process's CPU time in the round (on a shared machine
  the cost of a slot, whatever the other jobs take; background prefetching of the other
  contenders counts too, so it is a lower bound)."""
  import statistics  # pylint: disable=g-import-not-at-top
  slots_per_batch = res['batch_size'] * sum(LENGTHS.values())
  rr = []
  for r in res['rounds']:
    seconds = r[f'{who}_s']
    p_ex, b_ex = r[f'{who}_examples'] / seconds, r['b_examples'] / r['b_s']
    rr.append({'pipeline_examples_per_s': p_ex, 'baseline_examples_per_s': b_ex,
               'pipeline_tokens_per_s': r[f'{who}_tokens'] / seconds,
               'pipeline_token_slots_per_s': res['batches_per_round'] * slots_per_batch / seconds,
               'pipeline_batches_per_s': res['batches_per_round'] / seconds,
               'pipeline_token_slots_per_cpu_s': (res['batches_per_round'] * slots_per_batch /
                                                  r[f'{who}_cpu_s']),
               'ratio': p_ex / b_ex})
  med = {k: statistics.median(x[k] for x in rr) for k in rr[0]}
  med['ratio_min'] = min(x['ratio'] for x in rr)
  med['ratio_max'] = max(x['ratio'] for x in rr)
  med['fill'] = med['pipeline_tokens_per_s'] / med['pipeline_token_slots_per_s']
  return med


def paired_ratios(res: Dict[str, Any], a: str, b: str) -> Dict[str, float]:
  """Contender a over b per round (same batches per round): wall-clock token slots/s and
  token slots per CPU second, median and range over the rounds."""
  import statistics  # pylint: disable=g-import-not-at-top
  wall = [r[f'{b}_s'] / r[f'{a}_s'] for r in res['rounds']]
  cpu = [r[f'{b}_cpu_s'] / r[f'{a}_cpu_s'] for r in res['rounds']]
  return {'wall': statistics.median(wall), 'wall_min': min(wall), 'wall_max': max(wall),
          'cpu': statistics.median(cpu), 'cpu_min': min(cpu), 'cpu_max': max(cpu)}


def consumption() -> Dict[str, Any]:
  """{file:record: token slots/s of a recorded train step} (missing files are left out)."""
  out = {}
  for rel, name in CONSUMERS:
    path = os.path.join(RESULTS, rel)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      saved = json.load(f)
    for rec in saved['records']:
      if rec['case'] == 'train_step' and rec['name'] == name and rec['status'] == 'ok':
        p = rec['params']
        slots = rec['metrics']['examples_per_s'] * (p['inputs_len'] + p['targets_len'])
        out[f'{rel}:{name}'] = {'token_slots_per_s': slots, 'batch': p['batch'],
                                'lengths': [p['inputs_len'], p['targets_len']],
                                'date': saved.get('date')}
  return out


def _versions() -> Dict[str, str]:
  out = {'python': platform.python_version()}
  for mod in ('tensorflow', 'seqio', 'pyarrow', 'jax'):
    try:
      out[mod] = __import__(mod).__version__
    except Exception:  # noqa: BLE001  (a version we cannot read is left out)
      pass
  return out


def headroom_over_steps(pipe: Dict[str, Any]) -> Dict[str, Any]:
  """{recorded train step: the pipeline's token slots/s over the step's consumption (per host,
  per core, per CPU second; seqio's packer and the text path beside)}, printed."""
  headroom = {}
  for name, c in consumption().items():
    headroom[name] = dict(c, headroom=pipe['pipeline_token_slots_per_s'] / c['token_slots_per_s'],
                          headroom_per_core=pipe['token_slots_per_s_per_core'] /
                          c['token_slots_per_s'],
                          headroom_per_cpu_s=pipe['pipeline_token_slots_per_cpu_s'] /
                          c['token_slots_per_s'],
                          seqio_packer_headroom=(pipe['seqio_packer']['pipeline_token_slots_per_s']
                                                 / c['token_slots_per_s']),
                          seqio_packer_headroom_per_cpu_s=(
                              pipe['seqio_packer']['pipeline_token_slots_per_cpu_s'] /
                              c['token_slots_per_s']))
    if 'text_path' in pipe:
      headroom[name]['text_path_headroom'] = (pipe['text_path']['pipeline_token_slots_per_s'] /
                                              c['token_slots_per_s'])
    print(f'headroom vs {name}: {headroom[name]["headroom"]:.2f}x, per core '
          f'{headroom[name]["headroom_per_core"]:.2f}x, per CPU second '
          f'{headroom[name]["headroom_per_cpu_s"]:.2f}x (seqio\'s packer '
          f'{headroom[name]["seqio_packer_headroom"]:.2f}x, per CPU second '
          f'{headroom[name]["seqio_packer_headroom_per_cpu_s"]:.2f}x; '
          f'{c["token_slots_per_s"]:.0f} token slots/s)', flush=True)
  return headroom


def run(args: argparse.Namespace, workdir: str) -> Dict[str, Any]:
  src, data = os.path.join(workdir, 'src'), os.path.join(workdir, 'data')
  t = time.perf_counter()
  n_rows = generate(src, int(args.size_mb * (1 << 20)), args.tasks_per_source)
  size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
  print(f'generated {n_rows} rows, {size / 2**20:.0f} MiB in {time.perf_counter() - t:.0f} s',
        flush=True)
  raw = _child(['read_raw', src])
  prep = _child(['prepare', src, data, str(args.num_shards), 'default'])
  prep['imports_rss_mib'] = _child(['imports', PREPARE_MODULES])['peak_rss_mib']
  prep['peak_above_imports_mib'] = prep['peak_rss_mib'] - prep['imports_rss_mib']
  prepare = {'input_rows': n_rows, 'input_bytes': size, **prep,
             'rows_per_s': n_rows / prep['seconds'], 'raw_read': raw,
             'raw_rows_per_s': raw['rows'] / raw['seconds'],
             'ratio_prepare_to_raw_read':
                 (n_rows / prep['seconds']) / (raw['rows'] / raw['seconds'])}
  print(f'prepare {prepare["rows_per_s"]:.0f} rows/s (peak {prep["peak_rss_mib"]:.0f} MiB, '
        f'{prep["peak_above_imports_mib"]:.0f} above its imports) vs raw '
        f'read {prepare["raw_rows_per_s"]:.0f} rows/s (peak {raw["peak_rss_mib"]:.0f} MiB): '
        f'{prepare["ratio_prepare_to_raw_read"]:.3f}x', flush=True)
  pipe_raw = _child(['pipeline', data, str(args.batch_size), str(args.batches), str(args.rounds),
                     str(int(not args.no_text_path)), str(args.drain)])
  imports = _child(['imports', PIPELINE_MODULES])['peak_rss_mib']
  cores = len(os.sched_getaffinity(0))
  pipe = dict(summarise_pipeline(pipe_raw), startup_s=pipe_raw['startup_s'],
              imports_rss_mib=imports, peak_above_imports_mib=pipe_raw['peak_rss_mib'] - imports,
              seqio_tasks=pipe_raw['seqio_tasks'], peak_rss_mib=pipe_raw['peak_rss_mib'],
              batch_size=args.batch_size, lengths=LENGTHS, cores=cores, rounds=pipe_raw['rounds'])
  pipe['token_slots_per_s_per_core'] = pipe['pipeline_token_slots_per_s'] / cores
  _print_pipeline('stored ids', pipe)
  pipe['seqio_packer'] = dict(summarise_pipeline(pipe_raw, 's'),
                              startup_s=pipe_raw['seqio_packer_startup_s'])
  pipe['over_seqio_packer'] = paired_ratios(pipe_raw, 'p', 's')
  _print_pipeline("stored ids, seqio's packer", dict(pipe['seqio_packer'],
                                                     seqio_tasks=pipe['seqio_tasks']))
  print('tasks.packing over seqio\'s packer, same batches, paired by round: {wall:.2f}x '
        '[{wall_min:.2f}-{wall_max:.2f}] token slots/s, {cpu:.2f}x [{cpu_min:.2f}-{cpu_max:.2f}] '
        'token slots per CPU second'.format(**pipe['over_seqio_packer']), flush=True)
  if not args.no_text_path:
    pipe['text_path'] = dict(summarise_pipeline(pipe_raw, 't'),
                             startup_s=pipe_raw['text_startup_s'])
    pipe['ids_over_text'] = (pipe['pipeline_token_slots_per_s'] /
                             pipe['text_path']['pipeline_token_slots_per_s'])
    _print_pipeline('text path', dict(pipe['text_path'], seqio_tasks=pipe['seqio_tasks']))
  print(f'peak {pipe["peak_rss_mib"]:.0f} MiB ({pipe["peak_above_imports_mib"]:.0f} above its '
        f'imports); {cores} cores: {pipe["token_slots_per_s_per_core"]:.0f} token slots/s per '
        'core', flush=True)
  return {'prepare': prepare, 'pipeline': pipe, 'headroom': headroom_over_steps(pipe)}


def _print_pipeline(label: str, pipe: Dict[str, Any]) -> None:
  print(f'{label}: {pipe["pipeline_examples_per_s"]:.0f} examples/s, '
        f'{pipe["pipeline_tokens_per_s"]:.0f} tokens/s ({pipe["pipeline_token_slots_per_s"]:.0f} '
        f'slots/s, {pipe["pipeline_token_slots_per_cpu_s"]:.0f} per CPU second, '
        f'fill {pipe["fill"]:.2f}) vs trivial reader '
        f'{pipe["baseline_examples_per_s"]:.0f} examples/s: {pipe["ratio"]:.3f}x '
        f'[{pipe["ratio_min"]:.3f}-{pipe["ratio_max"]:.3f}]; start-up {pipe["startup_s"]:.0f} s '
        f'({pipe["seqio_tasks"]} seqio tasks)', flush=True)


def _parse(argv):
  p = argparse.ArgumentParser(prog='python -m benchmarks.flan_collection', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='tiny sizes (a smoke run)')
  p.add_argument('--size_mb', type=float, default=None, help='export size (256; quick: 2)')
  p.add_argument('--tasks_per_source', type=int, default=None, help='12; quick: 2')
  p.add_argument('--num_shards', type=int, default=16)
  p.add_argument('--batch_size', type=int, default=None, help='packed rows per batch (8; quick 2)')
  p.add_argument('--batches', type=int, default=None, help='batches per round (800; quick: 2)')
  p.add_argument('--rounds', type=int, default=None, help='timed rounds (5; quick: 2)')
  p.add_argument('--drain', type=int, default=None,
                 help='untimed packed batches before each round (600, > 3 blocks of rows; '
                      'quick: 2)')
  p.add_argument('--no_text_path', action='store_true',
                 help='skip timing the text path (tokenizing while reading) beside the ids')
  p.add_argument('--results_dir', default=os.path.join(RESULTS, 'flan_collection'))
  p.add_argument('--workdir', default=None, help='where to generate (default: a temp dir)')
  args = p.parse_args(argv)
  for key, full, quick in (('size_mb', 256, 2), ('tasks_per_source', 12, 2), ('batch_size', 8, 2),
                           ('batches', 800, 2), ('rounds', 5, 2), ('drain', 600, 2)):
    if getattr(args, key) is None:
      setattr(args, key, quick if args.quick else full)
  return args


def main(argv=None) -> Dict[str, Any]:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == '--child':
    kind, rest = argv[1], argv[2:]
    fn = {'imports': lambda: child_imports(rest[0]),
          'read_raw': lambda: child_read_raw(*rest),
          'prepare': lambda: child_prepare(rest[0], rest[1], int(rest[2]), rest[3]),
          'pipeline': lambda: child_pipeline(rest[0], *map(int, rest[1:]))}[kind]
    out = fn()
    print(_MARK + json.dumps(dict(out, peak_rss_mib=_peak_rss_mib())), flush=True)
    return out
  args = _parse(argv)
  workdir = tempfile.mkdtemp(prefix='flan_collection_bench_', dir=args.workdir)
  try:
    measured = run(args, workdir)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  commit = subprocess.run(['git', '-C', REPO, 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True).stdout.strip()
  result = {'command': ('python -m benchmarks.flan_collection ' + ' '.join(argv)).strip(),
            'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
            'commit': commit,
            'machine': {'cpu_cores': os.cpu_count(), 'load_avg_1m': os.getloadavg()[0],
                        'platform': platform.platform(), **_versions()},
            'settings': {k: getattr(args, k) for k in ('size_mb', 'tasks_per_source',
                                                       'num_shards', 'batch_size', 'batches',
                                                       'rounds', 'drain', 'no_text_path')},
            **measured}
  os.makedirs(args.results_dir, exist_ok=True)
  path = os.path.join(args.results_dir, 'cpu_quick.json' if args.quick else 'cpu.json')
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
  print(f'wrote {path}')
  return result


if __name__ == '__main__':
  main()
