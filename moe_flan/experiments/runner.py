"""One run of an experiment, in-process: train (`moe_flan.trainer.loop.train`), then evaluate
(`moe_flan.trainer.checkpoint_eval.evaluate`), each under the gin configuration its command line would
give, then write MODEL_DIR/results.json.

results.json is written last (atomically): a run is finished exactly when it exists, and a
finished run is skipped. An unfinished run resumes: the trainer continues from the MODEL_DIR's
latest checkpoint, and an evaluation whose results.json already holds the final step is kept.

    {"run", "model", "seed", "protocol", "stage", "variant", "model_dir", "init_from",
     "teacher", "teacher_dir" (a distilled student's), "gin_files",
     "bindings", "train": {"step", "final_metrics"}, "model_info": {"params", "flops_per_token",
     "sparse"}, "evaluations": {mixture: "eval/{mixture}/results.json"}, "started", "finished",
     "wall_s", "timing": {"train_s", "eval_s": {mixture: s}} (this attempt's), "commit"}
"""
from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import time
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np

from moe_flan import atomic_file
from moe_flan import config as config_lib
from moe_flan.trainer import checkpoint_eval
from moe_flan.experiments import plan as plan_lib
from moe_flan.model import abstract_params
from moe_flan.model import flops
from moe_flan.trainer import cli
from moe_flan.trainer import loop

RESULTS_FILE = 'results.json'
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Preempted(Exception):
  """Training stopped on SIGTERM after saving; rerunning the experiment resumes it."""


def git_commit() -> Optional[str]:
  """The checkout's commit (with '-dirty' when files differ from it), or None outside git."""
  try:
    head = subprocess.run(['git', '-C', REPO, 'rev-parse', 'HEAD'], capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()
    dirty = subprocess.run(['git', '-C', REPO, 'status', '--porcelain', '--untracked-files=no'],
                           capture_output=True, text=True, check=True, timeout=30).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ('-dirty' if dirty.strip() else '')


def model_info(cfg: config_lib.T5Config, lengths: Mapping[str, int]) -> dict[str, Any]:
  """Parameter count and forward FLOPs per token (encoder and decoder tokens together) at
  `lengths` (moe_flan.model.flops: active expert work only)."""
  shapes = nn.meta.unbox(abstract_params(cfg))
  params = int(sum(math.prod(a.shape) for a in jax.tree.leaves(shapes)))
  li, lt = int(lengths['inputs']), int(lengths['targets'])
  return {'params': params, 'sparse': cfg.moe is not None,
          'flops_per_token': flops.forward_flops(cfg, 1, li, lt) / (li + lt),
          'flops_lengths': {'inputs': li, 'targets': lt}}


def read_json(path: str) -> Optional[dict[str, Any]]:
  """The JSON object at `path`, or None when it is missing or was cut short by a kill."""
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def _train(run: plan_lib.Run, search_paths: Sequence[str], lengths: Mapping[str, int]
           ) -> tuple[int, dict[str, float], dict[str, Any]]:
  """Trains (or resumes) the run; (final step, last logged metrics, model_info)."""
  cli.configure_gin(cli.Flags(run.gin_files, run.bindings, tuple(search_paths)))
  info = model_info(config_lib.T5Config(), lengths)
  result = loop.train()
  if result.stopped_by_signal:
    raise Preempted(f'{run.name}: stopped by SIGTERM after saving step {result.step}')
  return result.step, _scalars(result.last_metrics), info


def _evaluate(run: plan_lib.Run, mixture: str, step: int, search_paths: Sequence[str]) -> str:
  """Evaluates the run's final checkpoint on `mixture` unless its results already hold `step`;
  the results.json path relative to MODEL_DIR."""
  path = os.path.join(run.eval_dir(mixture), RESULTS_FILE)
  done = read_json(path)
  if done is None or done.get('checkpoint_step') != step:
    cli.configure_gin(cli.Flags(run.eval_files, run.eval_bindings(mixture), tuple(search_paths)))
    checkpoint_eval.evaluate()
  return os.path.relpath(path, run.model_dir)


def finished(run: plan_lib.Run) -> Optional[dict[str, Any]]:
  """The run's results.json when it is finished, else None."""
  return read_json(os.path.join(run.model_dir, RESULTS_FILE))


def execute(run: plan_lib.Run, search_paths: Sequence[str], lengths: Mapping[str, int],
            commit: Optional[str]) -> dict[str, Any]:
  """Trains and evaluates `run` (resuming what a killed attempt left) and writes its
  results.json; returns it."""
  started = time.time()
  os.makedirs(run.model_dir, exist_ok=True)
  step, last, info = _train(run, search_paths, lengths)
  timing = {'train_s': time.time() - started, 'eval_s': {}}
  evaluations = {}
  for mixture in run.eval_mixtures:
    t = time.time()
    evaluations[mixture] = _evaluate(run, mixture, step, search_paths)
    timing['eval_s'][mixture] = time.time() - t
  now = time.time()
  results = {
      'run': run.name, 'model': run.model, 'seed': run.seed, 'protocol': run.protocol,
      'stage': run.stage, 'variant': run.variant, 'model_dir': run.model_dir,
      'init_from': run.init_from, 'teacher': run.teacher, 'teacher_dir': run.teacher_dir,
      'gin_files': list(run.gin_files), 'bindings': list(run.bindings),
      'train': {'step': step, 'final_metrics': last}, 'model_info': info,
      'evaluations': evaluations, 'started': _iso(started), 'finished': _iso(now),
      'started_unix': started, 'finished_unix': now, 'wall_s': now - started, 'timing': timing,
      'commit': commit}
  atomic_file.write_json(os.path.join(run.model_dir, RESULTS_FILE), results)
  return results


def _iso(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec='seconds')
