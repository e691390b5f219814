"""Look at what a mixture or task feeds the model.

  python -m tasks.inspect --mixture flan_embedded [--split train] [--samples 2] [--max_examples 500]
  python -m tasks.inspect --list
  python -m tasks.inspect --data_dir /data/flan2022                    # a prepared FLAN Collection
  python -m tasks.inspect --data_dir /data/flan2022 --mixture flan2022 --rates   # per-task rates

Per task: mixing rate, number of examples, rendered samples (decoded from the token ids the model
sees), and token-length percentiles of inputs/targets (with EOS) with the share of examples longer
than --lengths (those would be truncated, and counted, by the pipeline). With --data_dir, the
FLAN Collection prepared there is registered first and, without --mixture, summarised: examples
per source and template type, rejected rows, token-length percentiles, rendered samples.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Sequence

import numpy as np


def _task_rows(task, split: str, max_examples: int) -> List[Dict[str, np.ndarray]]:
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                        trim_output_features=False, try_in_mem_cache=False)
  return list(ds.take(max_examples).as_numpy_iterator())


def percentiles(lengths: Sequence[int]) -> str:
  p = np.percentile(lengths, [50, 90, 99]) if len(lengths) else [0, 0, 0]
  return (f'p50 {p[0]:.0f}  p90 {p[1]:.0f}  p99 {p[2]:.0f}  max '
          f'{max(lengths) if len(lengths) else 0}')


def describe(name: str, split: str = 'train', samples: int = 2, max_examples: int = 500,
             lengths: Dict[str, int] = None, out=None) -> Dict[str, Dict[str, float]]:
  """Prints the report; returns {task: {'rate', 'examples', 'inputs_p50', 'targets_p50', ...}}."""
  out = out or sys.stdout   # looked up per call, so redirected output is followed
  import seqio  # pylint: disable=g-import-not-at-top
  from tasks import registry  # pylint: disable=g-import-not-at-top
  provider = registry.get(name)
  lengths = lengths or {'inputs': 128, 'targets': 32}
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  tasks = [t for t in tasks if split in t.splits]
  if isinstance(provider, seqio.Mixture):
    rates = {t.name: provider.get_rate(t) for t in tasks}
  else:
    rates = {tasks[0].name: 1.0}
  total_rate = sum(rates.values()) or 1.0
  summary = {}
  print(f'== {name} [{split}]: {len(tasks)} tasks', file=out)
  for task in tasks:
    rows = _task_rows(task, split, max_examples)
    voc = task.output_features['targets'].vocabulary
    n = task.num_input_examples(split)
    stats = {'rate': rates[task.name] / total_rate, 'examples': n if n is not None else -1}
    print(f'\n-- {task.name}: rate {stats["rate"]:.4f}, examples {n}', file=out)
    for row in rows[:samples]:
      print(f'   INPUTS : {voc.decode(row["inputs"].tolist())!r}', file=out)
      print(f'   TARGETS: {voc.decode(row["targets"].tolist())!r}', file=out)
    for key in ('inputs', 'targets'):
      lens = [len(r[key]) for r in rows]
      over = np.mean([x > lengths[key] for x in lens]) if lens else 0.0
      print(f'   {key} tokens: {percentiles(lens)}  over {lengths[key]}: {100 * over:.1f}%',
            file=out)
      stats[f'{key}_p50'] = float(np.median(lens)) if lens else 0.0
      stats[f'{key}_over'] = float(over)
    summary[task.name] = stats
  return summary


def print_rates(name: str, out=None) -> Dict[str, float]:
  """Prints and returns each task's normalised mixing rate, without reading any data."""
  out = out or sys.stdout   # looked up per call, so redirected output is followed
  import seqio  # pylint: disable=g-import-not-at-top
  from tasks import registry  # pylint: disable=g-import-not-at-top
  provider = registry.get(name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  rates = ({t.name: provider.get_rate(t) for t in tasks} if isinstance(provider, seqio.Mixture)
           else {tasks[0].name: 1.0})
  total = sum(rates.values()) or 1.0
  rates = {k: v / total for k, v in rates.items()}
  print(f'== {name}: {len(rates)} tasks', file=out)
  for task, rate in sorted(rates.items(), key=lambda kv: -kv[1]):
    print(f'{rate:.6f}  {task}', file=out)
  return rates


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--mixture', help='mixture or task name')
  parser.add_argument('--split', default='train')
  parser.add_argument('--samples', type=int, default=2)
  parser.add_argument('--max_examples', type=int, default=500)
  parser.add_argument('--lengths', default='inputs=128,targets=32')
  parser.add_argument('--list', action='store_true', help='list registered names')
  parser.add_argument('--data_dir', help='a prepared FLAN Collection to register first')
  parser.add_argument('--rates', action='store_true', help='only print per-task mixing rates')
  args = parser.parse_args(argv)
  try:
    _run(args)
  except ValueError as e:   # unknown names, bad DATA_DIR, bad --lengths: one line, exit 2
    parser.error(str(e))


def _run(args: argparse.Namespace) -> None:
  import tasks  # pylint: disable=g-import-not-at-top,unused-import  (registers everything)
  from tasks import registry  # pylint: disable=g-import-not-at-top
  if args.data_dir:
    from tasks import flan_collection  # pylint: disable=g-import-not-at-top
    flan_collection.register(args.data_dir)
    if not args.mixture:
      from tasks.flan_collection import inspection  # pylint: disable=g-import-not-at-top
      inspection.describe(args.data_dir, args.samples, args.max_examples)
      return
  if args.mixture and args.rates:
    print_rates(args.mixture)
    return
  if args.list or not args.mixture:
    print('\n'.join(registry.all_names()))
    return
  try:
    lengths = {k: int(v) for k, v in (kv.split('=') for kv in args.lengths.split(','))}
  except ValueError:
    raise ValueError(f'--lengths={args.lengths!r}: expected inputs=N,targets=M') from None
  describe(args.mixture, args.split, args.samples, args.max_examples, lengths)


if __name__ == '__main__':
  main()
