"""The paper's experiment: dense vs sparse models of equal FLOPs per token, three protocols,
several seeds, one report.

  python -m moe_flan.experiments.flan_moe --gin_file=gin/experiments/cpu_small.gin \
    --gin.EXPERIMENT_DIR="'/tmp/flan_moe_experiment'"

For each model and seed: pretraining (span corruption) once, then protocol 1 (finetune the
pretrained model on the downstream tasks), protocol 2 (instruction-tune, then zero-/few-shot/CoT
evaluation on the held-out clusters) and protocol 3 (finetune protocol 2's model on the
downstream tasks); every run is a MODEL_DIR under EXPERIMENT_DIR/runs with its own results.json
(moe_flan/experiments/plan.py). Rerunning the command skips finished runs and resumes an
unfinished one from its checkpoint; another preset in the same EXPERIMENT_DIR is refused
(one that only adds a distillation row or ablations adds their runs).
Writes EXPERIMENT_DIR/report.md, report.json and PNG plots.

Exit status: 0 done, 2 bad input (or a changed preset), 75 stopped by SIGTERM after saving.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Optional, Sequence

import gin

from moe_flan.trainer import cli

PROG = 'moe_flan.experiments.flan_moe'


def use_compilation_cache(experiment_dir: str) -> None:
  """JAX's persistent compilation cache in EXPERIMENT_DIR/jax_cache unless one is set: the runs
  of every seed (and the stages of equal shapes) compile the same programs."""
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.join(experiment_dir, 'jax_cache'))


def run_all(flags: cli.Flags, command: str) -> str:
  """Runs (or resumes) the experiment the gin flags describe; the report.md path."""
  from moe_flan.experiments import plan, preset, report, runner  # pylint: disable=g-import-not-at-top
  start = time.time()
  cli.configure_gin(flags)
  experiment_dir, experiment = preset.flan_moe_experiment()
  preset_text = gin.config_str()
  models = {name: preset.resolve_model(spec, flags.gin_search_paths)
            for name, spec in experiment.models.items()}
  preset.store_or_check(experiment_dir, preset.resolved(experiment, models), preset_text)
  use_compilation_cache(experiment_dir)
  runs = plan.plan(experiment_dir, experiment,
                   {name: cfg.moe is not None for name, cfg in models.items()})
  commit = runner.git_commit()
  for i, run in enumerate(runs, 1):
    if runner.finished(run) is not None:
      print(f'{PROG}: [{i}/{len(runs)}] {run.name}: finished, skipped', flush=True)
      continue
    print(f'{PROG}: [{i}/{len(runs)}] {run.name}: {run.stage}', flush=True)
    done = runner.execute(run, flags.gin_search_paths, experiment.task_feature_lengths, commit)
    print(f'{PROG}: [{i}/{len(runs)}] {run.name}: done in {done["wall_s"]:.0f} s', flush=True)
  content = report.build(experiment_dir, experiment, runs, command, time.time() - start, commit)
  report.write(experiment_dir, content)
  return f'{experiment_dir}/report.md'


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  flags = cli.parse_flags(argv, prog=PROG)
  from moe_flan.experiments import runner  # pylint: disable=g-import-not-at-top
  from moe_flan.trainer import preemption  # pylint: disable=g-import-not-at-top
  try:
    path = run_all(flags, ' '.join(['python -m', PROG] + [shlex.quote(a) for a in argv]))
  except runner.Preempted as e:
    print(f'{PROG}: {e}; rerun the same command to resume', flush=True)
    return preemption.PREEMPTED_EXIT_CODE
  print(f'{PROG}: report in {path}', flush=True)
  return 0


def console_main() -> None:
  cli.console_entry(main, PROG)


if __name__ == '__main__':
  console_main()
