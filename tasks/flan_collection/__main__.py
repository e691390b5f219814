"""python -m tasks.flan_collection prepare --src DIR_OR_GLOB --out DATA_DIR [options]

Reads the published FLAN Collection exports (Parquet, JSONL, JSONL.gz), validates, deduplicates
and splits them, and writes TFRecord shards and DATA_DIR/index.json. Killed, it finishes when
rerun with the same command. Train on the result with
  --gin_file=gin/runs/flan_collection.gin --gin.FLAN_COLLECTION_DIR="'DATA_DIR'"
  --gin.MIXTURE_OR_TASK_NAME="'flan2022'"
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, Optional, Sequence


def _columns(text: str) -> Dict[str, str]:
  pairs = [kv for kv in text.split(',') if kv]
  bad = [kv for kv in pairs if '=' not in kv]
  if bad:
    raise argparse.ArgumentTypeError(f'expected field=column pairs, got {bad}')
  return dict(kv.split('=', 1) for kv in pairs)


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m tasks.flan_collection', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('prepare', help='published files -> TFRecord shards + index.json')
  p.add_argument('--src', required=True, help='directory (searched recursively), glob or file')
  p.add_argument('--out', required=True, help='DATA_DIR to write (new or empty)')
  p.add_argument('--num_shards', type=int, default=16,
                 help='most shards per task, template type and split (>= the number of hosts '
                      'that read it, so each host reads only its own files)')
  p.add_argument('--min_rows_per_shard', type=int, default=1000,
                 help='smaller tasks get fewer shards (at least one)')
  p.add_argument('--validation_fraction', type=float, default=0.01,
                 help='share of each task held out as its validation split (by row hash)')
  p.add_argument('--columns', type=_columns, default={},
                 help='field=column overrides, e.g. inputs=prompt,targets=completion '
                      '(fields: inputs, targets, task_source, task_name, template_type)')
  p.add_argument('--skip_bad_files', action='store_true',
                 help='skip (and report) unreadable files instead of stopping')
  p.add_argument('--batch_rows', type=int, default=4096, help='Parquet rows read at a time')
  p.add_argument('--buffer_mb', type=int, default=32, help='spill write buffer (MiB)')
  p.add_argument('--vocabulary', default='',
                 help="also store token ids: 'default' (the tasks' vocabulary), 'byte', or a "
                      'SentencePiece model path; training then reads ids instead of '
                      'tokenizing text (several times faster). Empty: text only')
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse(argv)
  from tasks.flan_collection import prepare  # pylint: disable=g-import-not-at-top
  prepare.prepare(args.src, args.out, num_shards=args.num_shards,
                  min_rows_per_shard=args.min_rows_per_shard,
                  validation_fraction=args.validation_fraction,
                  columns=tuple(sorted(args.columns.items())),
                  skip_bad_files=args.skip_bad_files, batch_rows=args.batch_rows,
                  buffer_bytes=args.buffer_mb << 20, vocabulary=args.vocabulary)
  return 0


if __name__ == '__main__':
  try:
    sys.exit(main())
  except ValueError as e:
    print(f'prepare: error: {e}', file=sys.stderr)
    sys.exit(2)
