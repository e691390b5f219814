"""The runs of an experiment: for each model and seed, pretraining once, then the three protocols.

    EXPERIMENT_DIR/runs/{model}/seed_{s}/pretrain               span corruption, from scratch
                                        /p1_direct_finetune     downstream, from pretrain
                                        /p2_instruction_tune    FLAN mixture, from pretrain
                                        /p3_instruction_finetune  downstream, from p2

Every run is an ordinary MODEL_DIR made by the trainer from the repository's run files
(gin/runs/{pretrain,finetune,instruction_tune}.gin), then evaluated by the evaluation engine
(gin/runs/eval.gin, outputs in MODEL_DIR/eval/{mixture}). `plan` lists them in an order where
each run's initial checkpoint is made before it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional

from moe_flan.experiments import preset as preset_lib

PROTOCOLS = {1: 'direct finetuning', 2: 'instruction tuning (zero/few-shot)',
             3: 'instruction tuning, then finetuning'}
RUN_NAMES = {None: 'pretrain', 1: 'p1_direct_finetune', 2: 'p2_instruction_tune',
             3: 'p3_instruction_finetune'}
RUN_FILES = {'pretrain': 'runs/pretrain.gin', 'instruction_tune': 'runs/instruction_tune.gin',
             'finetune': 'runs/finetune.gin', 'eval': 'runs/eval.gin'}


@dataclasses.dataclass(frozen=True)
class Run:
  """One MODEL_DIR of the experiment.

  stage: which run file trains it (a key of RUN_FILES); protocol: None for pretraining.
  gin_files / bindings: the training run's gin configuration, as a command line would give it.
  eval_mixtures: evaluated on the final checkpoint; eval_files / eval_bindings(mixture): how.
  """
  model: str
  seed: int
  protocol: Optional[int]
  stage: str
  model_dir: str
  init_from: Optional[str]
  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]
  eval_mixtures: tuple[str, ...]
  eval_files: tuple[str, ...]
  eval_base_bindings: tuple[str, ...]

  @property
  def name(self) -> str:
    return f'{self.model}/seed_{self.seed}/{RUN_NAMES[self.protocol]}'

  def eval_bindings(self, mixture: str) -> tuple[str, ...]:
    return self.eval_base_bindings + (f'MODEL_DIR = {self.model_dir!r}',
                                      f'MIXTURE_OR_TASK_NAME = {mixture!r}')

  def eval_dir(self, mixture: str) -> str:
    """Where `python -m moe_flan.evaluate` writes by default (MODEL_DIR/eval/{mixture})."""
    return os.path.join(self.model_dir, 'eval', mixture)


def run_dir(experiment_dir: str, model: str, seed: int, protocol: Optional[int]) -> str:
  return os.path.join(os.path.abspath(experiment_dir), 'runs', model, f'seed_{seed}',
                      RUN_NAMES[protocol])


# Groups a dense model does not have (the trainer refuses to freeze a group with no parameter):
# a dense baseline of a freezing ablation freezes only what it has.
SPARSE_ONLY_GROUPS = ('router', 'experts')


def _stage_bindings(experiment: preset_lib.Experiment, stage: str, sparse: bool
                    ) -> tuple[str, ...]:
  """What the experiment's settings bind for `stage` (for a sparse or dense model), then the
  preset's own extra bindings."""
  lengths = dict(experiment.task_feature_lengths)
  out: list[str] = []
  if stage == 'instruction_tune':
    out += [f'TRAIN_STEPS = {experiment.instruction_steps}',
            f'MIXTURE_OR_TASK_NAME = {experiment.instruction_mixture!r}',
            f'TASK_FEATURE_LENGTHS = {lengths!r}']
  elif stage == 'finetune':
    frozen = [g for g in experiment.finetune_frozen_groups
              if sparse or g not in SPARSE_ONLY_GROUPS]
    out += [f'TRAIN_STEPS = {experiment.finetune_steps}',
            f'MIXTURE_OR_TASK_NAME = {experiment.downstream_mixture!r}',
            f'TASK_FEATURE_LENGTHS = {lengths!r}',
            f'FROZEN_GROUPS = {frozen!r}']
    if not experiment.finetune_aux_loss:
      out += ['LOAD_BALANCING_LOSS_WEIGHT = 0.0', 'MoeConfig.router_z_loss_weight = 0.0']
  elif stage == 'pretrain':
    out += [f'TRAIN_STEPS = {experiment.pretrain_steps}']
  elif stage == 'eval':
    out += [f'TASK_FEATURE_LENGTHS = {lengths!r}']
  return tuple(out) + tuple(experiment.stage_bindings.get(stage, ()))


def _run(experiment_dir: str, experiment: preset_lib.Experiment, model: str, sparse: bool,
         seed: int, protocol: Optional[int], init_from: Optional[str]) -> Run:
  spec = experiment.models[model]
  stage = {None: 'pretrain', 1: 'finetune', 2: 'instruction_tune', 3: 'finetune'}[protocol]
  model_dir = run_dir(experiment_dir, model, seed, protocol)
  identity = [f'MODEL_DIR = {model_dir!r}', f'SEED = {seed}']
  if init_from:
    identity.append(f'INITIAL_CHECKPOINT_PATH = {init_from!r}')
  if protocol is None:
    mixtures: tuple[str, ...] = ()
  elif protocol == 2:
    mixtures = tuple(dict.fromkeys(tuple(experiment.downstream_eval_mixtures) +
                                   tuple(experiment.heldout_eval_mixtures)))
  else:
    mixtures = tuple(experiment.downstream_eval_mixtures)
  return Run(model=model, seed=seed, protocol=protocol, stage=stage, model_dir=model_dir,
             init_from=init_from, gin_files=(spec.gin_file, RUN_FILES[stage]),
             bindings=tuple(spec.bindings) + _stage_bindings(experiment, stage, sparse) +
             tuple(identity),
             eval_mixtures=mixtures, eval_files=(spec.gin_file, RUN_FILES['eval']),
             eval_base_bindings=tuple(spec.bindings) + _stage_bindings(experiment, 'eval', sparse))


def plan(experiment_dir: str, experiment: preset_lib.Experiment, sparse: Mapping[str, bool]
         ) -> list[Run]:
  """Every run, model by model and seed by seed; each run after the one it starts from.
  `sparse`: per model, whether it has MoE layers."""
  runs = []
  for model in experiment.models:
    for seed in experiment.seeds:
      args = (experiment_dir, experiment, model, sparse[model], seed)
      pretrain = _run(*args, None, None)
      p1 = _run(*args, 1, pretrain.model_dir)
      p2 = _run(*args, 2, pretrain.model_dir)
      p3 = _run(*args, 3, p2.model_dir)
      runs += [pretrain, p1, p2, p3]
  return runs
