"""The train loop: `train(model_dir, model, data, run, optimizer, checkpoint)`.

Settings come grouped in small frozen dataclasses (DataConfig, RunConfig, OptimizerConfig,
CheckpointConfig) bound by gin run files, instead of one function with dozens of keyword arguments.
Bad input (unknown task, missing checkpoint path, a MODEL_DIR checkpoint of another model shape)
fails in `_check_inputs`/`_build` before anything is compiled.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Any, Mapping, Optional, Sequence

import gin
import jax

from moe_flan import config as config_lib
from moe_flan.evaluation import engine as eval_engine
from moe_flan.trainer import checkpoints as ckpt_lib
from moe_flan.trainer import data as data_lib
from moe_flan.trainer import distill as distill_lib
from moe_flan.trainer import final_eval
from moe_flan.trainer import freezing
from moe_flan.trainer import gin_checks
from moe_flan.trainer import metrics as metrics_lib
from moe_flan.trainer import nan_guard
from moe_flan.trainer import optimizers
from moe_flan.trainer import plots
from moe_flan.trainer import preemption
from moe_flan.trainer import progress as progress_lib
from moe_flan.trainer import run_record
from moe_flan.trainer import builder


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RunConfig:
  """How long to train and how often to log/evaluate.

  eval_period 0 = no periodic eval; frozen_groups: any of freezing.GROUPS (each must select
  some parameter: a dense model has no 'router' or 'experts'); final_eval_mixtures:
  mixtures whose validation split the final params are evaluated on (`final_eval`), each on
  `final_eval_batches` batches.
  """
  train_steps: int = 100
  log_period: int = 10
  eval_period: int = 0
  eval_steps: int = 4
  seed: int = 0
  frozen_groups: Sequence[str] = ()
  write_plots: bool = True
  final_eval_mixtures: Sequence[str] = ()
  final_eval_batches: int = 8

  def __post_init__(self):
    if self.train_steps < 0:
      raise ValueError(f'RunConfig.train_steps={self.train_steps}: must be >= 0')
    if self.log_period < 1:
      raise ValueError(f'RunConfig.log_period={self.log_period}: must be >= 1')
    freezing.check_groups(self.frozen_groups)
    if self.final_eval_mixtures and self.final_eval_batches < 1:
      raise ValueError(f'RunConfig.final_eval_batches={self.final_eval_batches}: must be >= 1')


@dataclasses.dataclass
class TrainResult:
  """What a finished (or stopped) run reports."""
  step: int
  last_metrics: dict[str, Any]
  stopped_by_signal: bool = False


def _log_record(metrics: Mapping[str, Any], step_time: float) -> dict[str, Any]:
  record = dict(metrics)
  record['step_time'] = step_time
  record['tokens_per_second'] = float(metrics.get('num_tokens', 0.0)) / max(step_time, 1e-9)
  return record


def _loop(setup: builder.TrainSetup, state, start: int, run: RunConfig,
          writer: metrics_lib.MetricsWriter, eval_writer: metrics_lib.MetricsWriter,
          stop: preemption.StopFlag, engine: Optional[eval_engine.Engine] = None):
  """Steps from `start` to `run.train_steps`; returns (state, last logged record, stopped).

  Stops early, on every process after the same step, once any process got SIGTERM.
  """
  batches = setup.train_batches(start)
  train_step = setup.jit_train_step()
  if start < run.train_steps:
    # The first batch and the compiled step before the first agreement (a barrier across
    # processes): processes whose input pipeline or compile is slower then do not reach the
    # step's collectives late (gloo's CPU rendezvous gives up after 30 s).
    first = next(batches)
    batches = itertools.chain([first], batches)
    train_step = setup.compiled_train_step(state, setup.shard(first))
  bar = progress_lib.Progress(start, run.train_steps)
  last: dict[str, Any] = {}
  t_last, last_logged = time.time(), start
  stopping = preemption.agreed(stop)   # a SIGTERM during set-up: save the start state and stop
  try:
    for step in range(start + 1, run.train_steps + 1):
      if stopping:
        break
      state, metrics = train_step(state, setup.shard(next(batches)))
      scalars = jax.device_get({k: metrics[k] for k in nan_guard.GUARDED if k in metrics})
      nan_guard.check_finite(step, scalars)
      if step == start + 1:   # the data, model, optimizer and step are built: gin's bindings
        gin_checks.check_built()
      stopping = preemption.agreed(stop)
      if step % run.log_period == 0 or step == run.train_steps or stopping:
        now = time.time()
        step_time = (now - t_last) / (step - last_logged)
        t_last, last_logged = now, step
        last = writer.write(step, _log_record(metrics, step_time))
        bar.update(step, {k: last[k] for k in ('loss', 'accuracy') if k in last})
      if run.eval_period and step % run.eval_period == 0:
        record = setup.evaluate(state.params, run.eval_steps)
        if engine is not None:   # benchmark scores per task / category / overall
          record.update(engine.evaluate_and_write(
              setup.parts.model, state.params, setup.parts.partitioner, step,
              os.path.join(setup.model_dir, 'eval', str(step))))
        eval_writer.write(step, record)
      setup.save(state)
    setup.save(state, force=True)   # final (or SIGTERM) save; a no-op if already saved
  finally:
    bar.close()
  return state, last, stopping


@gin.configurable
def train(model_dir: str = gin.REQUIRED, model: config_lib.T5Config = gin.REQUIRED,
          data: data_lib.DataConfig = gin.REQUIRED, run: RunConfig = RunConfig(),
          optimizer: optimizers.OptimizerConfig = optimizers.OptimizerConfig(),
          checkpoint: ckpt_lib.CheckpointConfig = ckpt_lib.CheckpointConfig(),
          eval_data: Optional[data_lib.DataConfig] = None,
          eval_settings: Optional[eval_engine.EvalSettings] = None,
          distill: Optional[distill_lib.DistillConfig] = None) -> TrainResult:
  """Trains `model` on `data` for `run.train_steps` steps, resuming from MODEL_DIR if possible.

  With `eval_settings`, every `run.eval_period` steps also runs the evaluation engine on its
  mixture (as `python -m moe_flan.evaluate` does): scores go to the eval metrics and
  TensorBoard, results.json and predictions to MODEL_DIR/eval/{step}. With `distill`
  (gin/runs/distill.gin), `model` is the student of a frozen teacher (`trainer.distill`)."""
  with preemption.StopFlag() as stop:   # from the start: a SIGTERM during set-up also exits cleanly
    final_eval.check_mixtures(run.final_eval_mixtures, model.vocab_size)
    setup = builder.build(model_dir, model, data, optimizer, checkpoint, run.frozen_groups,
                          run.seed, eval_data, distill=distill)
    # Benchmark datasets are read (and bad files rejected) before the first step.
    engine = eval_engine.Engine(eval_settings) if eval_settings and run.eval_period else None
    state, start = setup.initial_state()
    writer = metrics_lib.MetricsWriter(model_dir, 'train')
    eval_writer = metrics_lib.MetricsWriter(model_dir, 'eval', tensorboard=True)
    # Records past the resumed checkpoint came from a killed run; they are replayed.
    metrics_lib.truncate_after(writer.jsonl_path, start)
    metrics_lib.truncate_after(eval_writer.jsonl_path, start)
    started = run_record.write(model_dir, setup.parts.partitioner.mesh, model)
    if jax.process_index() == 0:
      print(started, flush=True)
      print(f'moe_flan: {"resuming from step " + str(start) if start else "starting at step 0"} '
            f'of {run.train_steps} in {model_dir}', flush=True)
    try:
      state, last, stopped = _loop(setup, state, start, run, writer, eval_writer, stop, engine)
      if not stopped:
        gin_checks.check_built()   # a run with no step left to take (a no-op after a step)
        final_eval.evaluate_at_end(setup, state.params, int(jax.device_get(state.step)),
                                   run.final_eval_mixtures, run.final_eval_batches)
    finally:
      setup.close()
      writer.close()
      eval_writer.close()
  if run.write_plots and jax.process_index() == 0:
    plots.plot_all(model_dir, model.sparse_block_paths())
  return TrainResult(int(jax.device_get(state.step)), last, stopped)
