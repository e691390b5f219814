"""Evaluate a checkpoint on held-out benchmarks through seqio (see gin/runs/eval.gin).

  python -m moe_flan.evaluate --gin_file=gin/models/flan_moe_tiny.gin --gin_file=gin/runs/eval.gin \
    --gin.MODEL_DIR="'/tmp/quickstart'" --gin.MIXTURE_OR_TASK_NAME="'flan_embedded_heldout'"
"""
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
  from moe_flan.trainer import cli  # pylint: disable=g-import-not-at-top
  flags = cli.start(argv, 'moe_flan.evaluate')
  # Imported after jax.distributed is initialized: no module may start a JAX backend first.
  from moe_flan.trainer import checkpoint_eval  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import gin_checks  # pylint: disable=g-import-not-at-top
  with gin_checks.watch_bindings(flags.prog, flags.gin_bindings) as watch:
    checkpoint_eval.evaluate()   # prints the results table; writes EVAL_OUTPUT_DIR
    watch.check_all()
  return 0


def console_main() -> None:
  from moe_flan.trainer import cli  # pylint: disable=g-import-not-at-top
  cli.console_entry(main, 'moe_flan.evaluate')


if __name__ == '__main__':
  console_main()
