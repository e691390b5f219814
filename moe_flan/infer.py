"""Decode prompts with a checkpoint from gin files; writes MODEL_DIR/inference.jsonl.

  python -m moe_flan.infer --gin_file=gin/models/flan_moe_tiny.gin --gin_file=gin/runs/infer.gin \
    --gin.MODEL_DIR="'/tmp/quickstart'" --gin.PROMPTS="['What is the capital of France?']"
"""
import json
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
  from moe_flan.trainer import cli  # pylint: disable=g-import-not-at-top
  flags = cli.start(argv, 'moe_flan.infer')
  # Imported after jax.distributed is initialized: no module may start a JAX backend first.
  from moe_flan.trainer import gin_checks  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import inference  # pylint: disable=g-import-not-at-top
  with gin_checks.watch_bindings(flags.prog, flags.gin_bindings) as watch:
    rows = inference.infer()
    watch.check_all()
  for row in rows:
    print(json.dumps(row), flush=True)
  return 0


def console_main() -> None:
  from moe_flan.trainer import cli  # pylint: disable=g-import-not-at-top
  cli.console_entry(main, 'moe_flan.infer')


if __name__ == '__main__':
  console_main()
