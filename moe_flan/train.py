"""Train a model from gin files (t5x conventions).

  python -m moe_flan.train --gin_file=gin/runs/quickstart.gin --gin.MODEL_DIR="'/tmp/quickstart'"

Exit status: 0 finished, 75 stopped by SIGTERM after saving (requeue), 2 bad input, 1 any
other failure (in a multi-process run: also a lost process, named).
Flags: see `moe_flan.trainer.cli`. Everything else is `moe_flan.trainer.loop.train`, bound by gin.
"""
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
  from moe_flan.trainer import cli  # pylint: disable=g-import-not-at-top
  flags = cli.start(argv, 'moe_flan.train')
  # Imported after jax.distributed is initialized: no module may start a JAX backend first.
  from moe_flan.trainer import gin_checks  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import loop  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import preemption  # pylint: disable=g-import-not-at-top
  with gin_checks.watch_bindings(flags.prog, flags.gin_bindings) as watch:
    result = loop.train()   # errors: cli.console_entry (a multi-process run's, through liveness)
    if not result.stopped_by_signal:   # a stopped run may not have reached every configurable
      watch.check_all()
  if result.stopped_by_signal:   # the scheduler's cue to requeue: launch/README.md
    print(f'moe_flan.train: stopped by SIGTERM after saving step {result.step}; exit status '
          f'{preemption.PREEMPTED_EXIT_CODE} (preempted: requeue to resume)', flush=True)
    return preemption.PREEMPTED_EXIT_CODE
  print(f'moe_flan.train: finished at step {result.step}', flush=True)
  return 0


def console_main() -> None:
  from moe_flan.trainer import cli  # pylint: disable=g-import-not-at-top
  cli.console_entry(main, 'moe_flan.train')


if __name__ == '__main__':
  console_main()
