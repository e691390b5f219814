"""The runs of an experiment: for each model and seed, pretraining once, then the three protocols.

    EXPERIMENT_DIR/runs/{model}/seed_{s}/pretrain               span corruption, from scratch
                                        /p1_direct_finetune     downstream, from pretrain
                                        /p2_instruction_tune    FLAN mixture, from pretrain
                                        /p3_instruction_finetune  downstream, from p2
                  /runs/{student}/seed_{s}/distill_{teacher}    (Experiment.distill) FLAN
                      mixture, from the student's pretrain, taught by the teacher's p2
                  /runs/{variant}/{model}/seed_{s}/...          (Experiment.ablations) the
                      variant's runs that differ from the base's; the others are the base's

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
             'finetune': 'runs/finetune.gin', 'eval': 'runs/eval.gin',
             'distill': 'runs/distill.gin'}
DISTILL = 'distill'   # the protocol of a distilled student's run


@dataclasses.dataclass(frozen=True)
class Run:
  """One MODEL_DIR of the experiment.

  stage: which run file trains it (a key of RUN_FILES); protocol: None for pretraining,
  DISTILL for a distilled student (then `teacher` names the teacher model and `teacher_dir`
  its instruction-tuned MODEL_DIR). variant: the ablation it belongs to ('' for the base).
  gin_files / settings: the training run's gin configuration, as a command line would give it,
  less its identity (`bindings` adds MODEL_DIR, SEED and the checkpoints it starts from).
  eval_mixtures: evaluated on the final checkpoint; eval_files / eval_bindings(mixture): how.
  """
  model: str
  seed: int
  protocol: Optional[int | str]
  stage: str
  model_dir: str
  init_from: Optional[str]
  gin_files: tuple[str, ...]
  settings: tuple[str, ...]
  eval_mixtures: tuple[str, ...]
  eval_files: tuple[str, ...]
  eval_base_bindings: tuple[str, ...]
  variant: str = ''
  teacher: Optional[str] = None
  teacher_dir: Optional[str] = None

  @property
  def name(self) -> str:
    leaf = f'distill_{self.teacher}' if self.teacher else RUN_NAMES[self.protocol]
    return (f'{self.variant}/' if self.variant else '') + f'{self.model}/seed_{self.seed}/{leaf}'

  @property
  def bindings(self) -> tuple[str, ...]:
    identity = [f'MODEL_DIR = {self.model_dir!r}', f'SEED = {self.seed}']
    if self.init_from:
      identity.append(f'INITIAL_CHECKPOINT_PATH = {self.init_from!r}')
    if self.teacher_dir:
      identity.append(f'TEACHER_CHECKPOINT_PATH = {self.teacher_dir!r}')
    return self.settings + tuple(identity)

  def eval_bindings(self, mixture: str) -> tuple[str, ...]:
    return self.eval_base_bindings + (f'MODEL_DIR = {self.model_dir!r}',
                                      f'MIXTURE_OR_TASK_NAME = {mixture!r}')

  def eval_dir(self, mixture: str) -> str:
    """Where `python -m moe_flan.evaluate` writes by default (MODEL_DIR/eval/{mixture})."""
    return os.path.join(self.model_dir, 'eval', mixture)


def run_dir(experiment_dir: str, model: str, seed: int, protocol: Optional[int],
            variant: str = '') -> str:
  return os.path.join(os.path.abspath(experiment_dir), 'runs', variant, model, f'seed_{seed}',
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
    if sparse and not experiment.finetune_aux_loss:   # a dense model has no MoE losses
      out += ['LOAD_BALANCING_LOSS_WEIGHT = 0.0', 'MoeConfig.router_z_loss_weight = 0.0']
  elif stage == 'pretrain':
    out += [f'TRAIN_STEPS = {experiment.pretrain_steps}']
  elif stage == 'eval':
    out += [f'TASK_FEATURE_LENGTHS = {lengths!r}']
  elif stage == 'distill':   # instruction tuning's data, steps and settings, then distill's own
    return (_stage_bindings(experiment, 'instruction_tune', sparse) +
            tuple(experiment.stage_bindings.get('distill', ())))
  return tuple(out) + tuple(experiment.stage_bindings.get(stage, ()))


def _run(experiment_dir: str, experiment: preset_lib.Experiment, model: str, sparse: bool,
         seed: int, protocol: Optional[int], init_from: Optional[str], variant: str = '') -> Run:
  spec = experiment.models[model]
  stage = {None: 'pretrain', 1: 'finetune', 2: 'instruction_tune', 3: 'finetune'}[protocol]
  if protocol is None:
    mixtures: tuple[str, ...] = ()
  elif protocol == 2:
    mixtures = experiment.protocol2_mixtures
  else:
    mixtures = tuple(experiment.downstream_eval_mixtures)
  return Run(model=model, seed=seed, protocol=protocol, stage=stage,
             model_dir=run_dir(experiment_dir, model, seed, protocol, variant),
             init_from=init_from, gin_files=(spec.gin_file, RUN_FILES[stage]),
             settings=tuple(spec.bindings) + _stage_bindings(experiment, stage, sparse),
             eval_mixtures=mixtures, eval_files=(spec.gin_file, RUN_FILES['eval']),
             eval_base_bindings=tuple(spec.bindings) + _stage_bindings(experiment, 'eval', sparse),
             variant=variant)


def _chains(experiment_dir: str, experiment: preset_lib.Experiment, sparse: Mapping[str, bool],
            variant: str = '', base: Optional[Mapping[str, Run]] = None) -> list[Run]:
  """Pretraining and the three protocols per model and seed, each run after the one it starts
  from. With `base` (the base runs by name, less the variant prefix), a variant's run that
  equals its base run (settings and initial checkpoint) is that base run."""
  runs = []
  for model in experiment.models:
    for seed in experiment.seeds:
      made: dict[Optional[int], Run] = {}
      for protocol, start in ((None, None), (1, None), (2, None), (3, 2)):
        init_from = None if protocol is None else made[start].model_dir
        run = _run(experiment_dir, experiment, model, sparse[model], seed, protocol, init_from,
                   variant)
        twin = (base or {}).get(run.name.removeprefix(f'{variant}/'))
        if twin is not None and dataclasses.replace(
            run, model_dir=twin.model_dir, variant='') == twin:
          run = twin
        made[protocol] = run
        runs.append(run)
  return runs


def _distill_runs(experiment_dir: str, experiment: preset_lib.Experiment,
                  sparse: Mapping[str, bool]) -> list[Run]:
  """Per seed, the teacher's p2 model distilled into the student from its pretraining."""
  teacher, student = experiment.distill['teacher'], experiment.distill['student']
  if not sparse[teacher] or sparse[student]:
    raise ValueError(f'Experiment.distill: the teacher ({teacher!r}) must be a sparse model and '
                     f'the student ({student!r}) a dense one')
  spec = experiment.models[student]
  return [Run(model=student, seed=seed, protocol=DISTILL, stage='distill',
              model_dir=os.path.join(os.path.abspath(experiment_dir), 'runs', student,
                                     f'seed_{seed}', f'distill_{teacher}'),
              init_from=run_dir(experiment_dir, student, seed, None),
              gin_files=(spec.gin_file, RUN_FILES['distill']),
              settings=tuple(spec.bindings) + _stage_bindings(experiment, 'distill', False),
              eval_mixtures=experiment.protocol2_mixtures,
              eval_files=(spec.gin_file, RUN_FILES['eval']),
              eval_base_bindings=tuple(spec.bindings) + _stage_bindings(experiment, 'eval', False),
              teacher=teacher, teacher_dir=run_dir(experiment_dir, teacher, seed, 2))
          for seed in experiment.seeds]


def variants(experiment_dir: str, experiment: preset_lib.Experiment, sparse: Mapping[str, bool]
             ) -> dict[str, list[Run]]:
  """Each ablation's runs (the base's where they are equal), by variant name."""
  base = {r.name: r for r in _chains(experiment_dir, experiment, sparse)}
  return {name: _chains(experiment_dir, preset_lib.variant(experiment, name), sparse, name, base)
          for name in experiment.ablations}


def plan(experiment_dir: str, experiment: preset_lib.Experiment, sparse: Mapping[str, bool]
         ) -> list[Run]:
  """Every run to make, each after the ones it starts from: the base runs model by model and
  seed by seed, the distilled students, then each ablation's own runs.
  `sparse`: per model, whether it has MoE layers (an ablation keeps it)."""
  runs = _chains(experiment_dir, experiment, sparse)
  if experiment.distill:
    runs += _distill_runs(experiment_dir, experiment, sparse)
  for variant_runs in variants(experiment_dir, experiment, sparse).values():
    runs += [r for r in variant_runs if r.variant]
  return runs
