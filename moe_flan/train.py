"""Train a model from gin files (t5x conventions).

  python -m moe_flan.train --gin_file=gin/runs/quickstart.gin --gin.MODEL_DIR="'/tmp/quickstart'"

Flags: see `moe_flan.trainer.cli`. Everything else is `moe_flan.trainer.loop.train`, bound by gin.
"""
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
  from moe_flan.trainer import cli  # pylint: disable=g-import-not-at-top
  flags = cli.parse_flags(sys.argv[1:] if argv is None else argv, prog='moe_flan.train')
  cli.initialize_distributed(flags)
  cli.configure_gin(flags)
  # Imported after jax.distributed is initialized: no module may start a JAX backend first.
  from moe_flan.trainer import loop  # pylint: disable=g-import-not-at-top
  result = loop.train()
  print(f'moe_flan.train: finished at step {result.step}'
        + (' (stopped by SIGTERM after saving)' if result.stopped_by_signal else ''), flush=True)
  return 0


def console_main() -> None:
  from moe_flan.trainer import cli  # pylint: disable=g-import-not-at-top
  cli.console_entry(main, 'moe_flan.train')


if __name__ == '__main__':
  console_main()
