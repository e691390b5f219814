"""Command line: convert between Hugging Face checkpoints and moe_flan checkpoints.

Import (HF T5 v1.1 / FLAN-T5 / SwitchTransformers directory -> moe_flan checkpoint):
  python -m moe_flan.convert --from hf --src HF_DIR --out CKPT_DIR \
      [--gin_file=gin/models/X.gin ...] [--gin.NAME=VALUE ...] [--group_size N] [--seed S]
  Without --gin_file the model is the one config.json describes (Switch checkpoints get the
  'hf_switch' router for HF-exact routing); CKPT_DIR/model.gin then holds its bindings. With
  --gin_file the params are fitted to that model: same backbone required; a dense checkpoint
  and a sparse gin model give sparse upcycling (experts copy the dense MLPs, fresh routers).
  CKPT_DIR works as INITIAL_CHECKPOINT_PATH (e.g. --gin.INITIAL_CHECKPOINT_PATH="'CKPT_DIR'").

Export (moe_flan checkpoint -> directory that transformers' from_pretrained loads):
  python -m moe_flan.convert --to hf --src CKPT_DIR|MODEL_DIR --out HF_DIR \
      [--gin_file=gin/models/X.gin ...] [--max_shard_size_mb 5120]
  The model config comes from --gin_file (default: SRC/model.gin written by an import).
  Dense models export as T5ForConditionalGeneration, Switch-style MoE models as
  SwitchTransformersForConditionalGeneration; anything HF cannot express is an error naming it.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from moe_flan.convert import checkpoint_dir, gin_config, hf_checkpoint, retarget, safetensors_io
from moe_flan.convert import vocabulary
from moe_flan.trainer import cli as trainer_cli


def _positive_int(text: str) -> int:
  """argparse type: an integer >= 1 (argparse turns the ValueError into a usage error)."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected an integer >= 1, got {text!r}') from None
  if value < 1:
    raise argparse.ArgumentTypeError(f'expected an integer >= 1, got {value}')
  return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m moe_flan.convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  direction = parser.add_mutually_exclusive_group(required=True)
  direction.add_argument('--from', dest='from_format', choices=['hf'],
                         help='import a Hugging Face checkpoint directory')
  direction.add_argument('--to', dest='to_format', choices=['hf'],
                         help='export to a Hugging Face checkpoint directory')
  parser.add_argument('--src', required=True, help='directory to read')
  parser.add_argument('--out', required=True, help='directory to write')
  trainer_cli.add_gin_flags(parser)     # the model config (see above)
  parser.add_argument('--group_size', type=_positive_int, default=None,
                      help='Switch import: route groups of N tokens spanning sequences '
                           '(default: one group per sequence, exactly as HF)')
  parser.add_argument('--seed', type=int, default=0, help='router init seed when upcycling')
  parser.add_argument('--max_shard_size_mb', type=int, default=5120,
                      help='export: safetensors shard size limit')
  args, args.gin_bindings = trainer_cli.parse_with_gin(parser, argv)
  args.gin_file = list(trainer_cli.split_commas(args.gin_file))
  return args


def run_import(args: argparse.Namespace) -> str:
  """HF directory -> CKPT_DIR; returns a one-line summary."""
  hf_config, tensors = safetensors_io.read_checkpoint(args.src)
  config = hf_checkpoint.config_from_hf(hf_config, group_size=args.group_size)
  params = hf_checkpoint.params_from_hf(config, tensors)
  how = 'as described by config.json'
  if args.gin_file or args.gin_bindings:
    target = gin_config.config_from_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
    upcycled = config.moe is None and target.moe is not None
    params = retarget.retarget_params(config, params, target, seed=args.seed)
    config = target
    how = 'upcycled to the gin model' if upcycled else 'fitted to the gin model'
  header = f'Imported from the HF checkpoint {args.src} ({how}) by moe_flan.convert.'
  spm = vocabulary.find(args.src)
  if spm:   # refused before anything is written
    vocabulary.check_fits(spm, config.vocab_size)
  checkpoint_dir.save(args.out, params, config, hf_config, header, spm_path=spm)
  vocab = f'; vocabulary {vocabulary.bind(args.out)}' if spm else ''
  return f'wrote {args.out} ({how}); model bindings in {args.out}/{checkpoint_dir.MODEL_GIN}{vocab}'


def run_export(args: argparse.Namespace) -> str:
  """CKPT_DIR -> HF directory; returns a one-line summary."""
  gin_files = list(args.gin_file)
  if not gin_files:
    found = checkpoint_dir.model_gin(args.src)
    if found is None:
      raise ValueError(f'--to hf: no --gin_file given and {args.src!r} has no '
                       f'{checkpoint_dir.MODEL_GIN}; pass the model gin file')
    gin_files = [found]
  config = gin_config.config_from_gin(gin_files, args.gin_bindings, args.gin_search_paths)
  params = checkpoint_dir.load_params(args.src)
  hf_config = hf_checkpoint.export_hf(config, params, args.out,
                                      max_shard_bytes=args.max_shard_size_mb * 2**20)
  return f'wrote {args.out} ({hf_config["architectures"][0]})'


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    message = run_import(args) if args.from_format else run_export(args)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps({'ok': True, 'message': message}))
  return 0
