"""An experiment preset (gin/experiments/*.gin): what to compare, how long, which ablation.

    flan_moe_experiment.experiment_dir = %EXPERIMENT_DIR
    flan_moe_experiment.preset = @Experiment()
    dense/ModelSpec.gin_file = 'models/t5_1_1_tiny.gin'
    Experiment.models = {'dense': @dense/ModelSpec(), 'switch_top1': @switch/ModelSpec()}

The preset is resolved (every model's T5Config built from its gin file and bindings) and stored
as EXPERIMENT_DIR/preset.json on the first run; a later run of another preset in the same
directory is refused with the settings that differ, so one report never mixes two experiments.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional, Sequence

import gin

from moe_flan import atomic_file
from moe_flan import config as config_lib
from moe_flan.trainer import cli
from moe_flan.trainer import freezing

STAGES = ('pretrain', 'instruction_tune', 'finetune', 'eval', 'distill')
PRESET_FILE = 'preset.json'
# What an ablation may change (Experiment.ablations): the training settings of the stages, and
# extra gin bindings per model ('model_bindings': {model: [...]}, e.g. a number of experts or a
# routing strategy). Seeds, models, evaluation mixtures and the headline stay the base's, so a
# variant's scores compare with the base's seed by seed.
ABLATION_FIELDS = ('pretrain_steps', 'instruction_steps', 'finetune_steps', 'instruction_mixture',
                   'downstream_mixture', 'finetune_aux_loss', 'finetune_frozen_groups',
                   'stage_bindings', 'model_bindings')
DISTILL_KEYS = ('teacher', 'student', 'score')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model of the comparison: a gin model file plus bindings (e.g. a number of experts)."""
  gin_file: str = gin.REQUIRED
  bindings: Sequence[str] = ()


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Experiment:
  """The paper's comparison: models x seeds x three protocols, and the ablation settings.

  steps: training steps of pretraining, instruction tuning and each finetuning.
  instruction_mixture: 'flan_embedded' or 'flan_embedded_n{N}' (the number-of-tasks ablation).
  finetune_aux_loss: False drops the load-balancing and router z-losses while finetuning.
  finetune_frozen_groups: parameter groups frozen while finetuning (trainer.freezing.GROUPS).
  downstream_eval_mixtures: evaluated after every protocol; heldout_eval_mixtures: after
  instruction tuning only (zero-/few-shot/CoT held-out clusters, benchmark mixtures).
  headline: 'mixture/metric' of the score-vs-FLOPs plot; its mixture is a downstream one.
  dense_baseline: the model the sparse ones are compared with (default: the only dense model).
  task_feature_lengths: of instruction tuning, finetuning and evaluation; FLOPs per token are
  counted at these lengths. stage_bindings: extra gin bindings per stage (STAGES).
  distill: None, or {'teacher': a sparse model, 'student': the dense model[, 'score':
  'mixture/metric' (default: headline)]}: per seed, the teacher's instruction-tuned model
  distilled (gin/runs/distill.gin) into the student initialised from its pretraining, on the
  instruction mixture for instruction_steps (instruction_tune's stage bindings, then
  distill's), evaluated like protocol 2; the report gives the fraction of the teacher's gain
  over the student's protocol 2 that the distilled student keeps, on `score`.
  ablations: {variant: {field: value}} with fields from ABLATION_FIELDS, e.g.
  {'frozen_router': {'finetune_frozen_groups': ['router']}, 'experts_8': {'model_bindings':
  {'switch_top1': ['MoeConfig.num_experts = 8']}}}: each variant's runs go under
  runs/{variant}/, except those equal to a base run (same settings, same initial checkpoint),
  which are the base's; the report compares each variant's headline with the base's.
  """
  models: Mapping[str, ModelSpec] = gin.REQUIRED
  seeds: Sequence[int] = (0, 1, 2)
  pretrain_steps: int = 1000
  instruction_steps: int = 1000
  finetune_steps: int = 300
  instruction_mixture: str = 'flan_embedded'
  downstream_mixture: str = 'flan_embedded_downstream'
  finetune_aux_loss: bool = True
  finetune_frozen_groups: Sequence[str] = ()
  downstream_eval_mixtures: Sequence[str] = ('flan_embedded_downstream_scoring',
                                             'flan_embedded_downstream')
  heldout_eval_mixtures: Sequence[str] = ('flan_embedded_heldout_scoring',
                                          'flan_embedded_heldout', 'flan_embedded_heldout_fs',
                                          'flan_embedded_heldout_cot')
  headline: str = 'flan_embedded_downstream_scoring/accuracy'
  dense_baseline: Optional[str] = None
  task_feature_lengths: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: {'inputs': 512, 'targets': 128})
  stage_bindings: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
  distill: Optional[Mapping[str, str]] = None
  ablations: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.models:
      raise ValueError('Experiment.models: at least one model')
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f'Experiment.seeds={list(self.seeds)}: at least one, no repeats')
    for name in ('pretrain_steps', 'instruction_steps', 'finetune_steps'):
      if getattr(self, name) < 1:
        raise ValueError(f'Experiment.{name}={getattr(self, name)}: must be >= 1')
    freezing.check_groups(self.finetune_frozen_groups)
    unknown = sorted(set(self.stage_bindings) - set(STAGES))
    if unknown:
      raise ValueError(f'Experiment.stage_bindings: unknown stage(s) {unknown}; stages are '
                       f'{list(STAGES)}')
    mixture, _, metric = self.headline.partition('/')
    if not metric or mixture not in self.downstream_eval_mixtures:
      raise ValueError(f'Experiment.headline={self.headline!r}: must be "mixture/metric" with '
                       f'the mixture one of downstream_eval_mixtures '
                       f'{list(self.downstream_eval_mixtures)}')
    if self.dense_baseline is not None and self.dense_baseline not in self.models:
      raise ValueError(f'Experiment.dense_baseline={self.dense_baseline!r}: not one of the '
                       f'models {sorted(self.models)}')
    if self.distill is not None:
      self._check_distill()
    for name in self.ablations:
      variant(self, name)   # a bad variant fails here, with its name

  def _check_distill(self) -> None:
    spec = dict(self.distill)
    bad = sorted(set(spec) - set(DISTILL_KEYS))
    missing = [k for k in ('teacher', 'student') if k not in spec]
    if bad or missing:
      raise ValueError(f'Experiment.distill={spec!r}: keys are {list(DISTILL_KEYS)} (teacher and '
                       f'student required); unknown {bad}, missing {missing}')
    for key in ('teacher', 'student'):
      if spec[key] not in self.models:
        raise ValueError(f'Experiment.distill[{key!r}]={spec[key]!r}: not one of the models '
                         f'{sorted(self.models)}')
    if spec['teacher'] == spec['student']:
      raise ValueError(f'Experiment.distill: teacher and student are both {spec["teacher"]!r}')
    mixture, _, metric = self.distill_score.partition('/')
    if not metric or mixture not in self.protocol2_mixtures:
      raise ValueError(f'Experiment.distill[\'score\']={self.distill_score!r}: must be '
                       f'"mixture/metric" with the mixture one of {list(self.protocol2_mixtures)}')

  @property
  def protocol2_mixtures(self) -> tuple[str, ...]:
    """What instruction-tuned models (protocol 2, distilled students) are evaluated on."""
    return tuple(dict.fromkeys(tuple(self.downstream_eval_mixtures) +
                               tuple(self.heldout_eval_mixtures)))

  @property
  def distill_score(self) -> str:
    return (self.distill or {}).get('score', self.headline)

  @property
  def headline_metric(self) -> tuple[str, str]:
    mixture, _, metric = self.headline.partition('/')
    return mixture, metric


def variant(experiment: Experiment, name: str) -> Experiment:
  """The experiment of ablation `name`: the base with the variant's settings, its models with
  their extra bindings, no distillation and no ablations of its own."""
  if name not in experiment.ablations:
    raise ValueError(f'no ablation {name!r}; the preset has {sorted(experiment.ablations)}')
  where = f'Experiment.ablations[{name!r}]'
  if not name or not name.replace('_', '').replace('-', '').isalnum() or name in experiment.models:
    raise ValueError(f'{where}: a variant name is letters, digits, "_" or "-" (a directory '
                     f'under runs/) and not a model name {sorted(experiment.models)}')
  overrides = dict(experiment.ablations[name])
  unknown = sorted(set(overrides) - set(ABLATION_FIELDS))
  if unknown or not overrides:
    raise ValueError(f'{where}: unknown setting(s) {unknown} (or none at all); an ablation '
                     f'changes some of {list(ABLATION_FIELDS)}')
  extra = dict(overrides.pop('model_bindings', {}))
  if sorted(set(extra) - set(experiment.models)):
    raise ValueError(f'{where}[\'model_bindings\']: unknown model(s) '
                     f'{sorted(set(extra) - set(experiment.models))}; the models are '
                     f'{sorted(experiment.models)}')
  models = {m: ModelSpec(spec.gin_file, tuple(spec.bindings) + tuple(extra.get(m, ())))
            for m, spec in experiment.models.items()}
  try:
    return dataclasses.replace(experiment, models=models, distill=None, ablations={},
                               **overrides)
  except ValueError as e:
    raise ValueError(f'{where}: {e}') from e


@gin.configurable
def flan_moe_experiment(experiment_dir: str = gin.REQUIRED,
                        preset: Experiment = gin.REQUIRED) -> tuple[str, Experiment]:
  """What a preset file binds: where the experiment lives and what it is."""
  return experiment_dir, preset


def resolve_model(spec: ModelSpec, search_paths: Sequence[str] = ()) -> config_lib.T5Config:
  """The T5Config that `spec`'s gin file and bindings give (gin is reconfigured for it)."""
  cli.configure_gin(cli.Flags((spec.gin_file,), tuple(spec.bindings), tuple(search_paths)))
  return config_lib.T5Config()


def jsonable(value: Any) -> Any:
  """`value` (dataclasses, mappings, tuples) as plain JSON types."""
  if dataclasses.is_dataclass(value):
    value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in sorted(value.items())}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  return value


def resolved(experiment: Experiment, models: Mapping[str, config_lib.T5Config]
             ) -> dict[str, Any]:
  """What preset.json stores and later runs compare: the settings and each model's config."""
  settings = jsonable(experiment)
  for key in ('distill', 'ablations'):   # absent when unused: presets stored before them match
    if not settings[key]:
      del settings[key]
  return {'experiment': settings,
          'models': {name: jsonable(cfg) for name, cfg in sorted(models.items())}}


def _flatten(value: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(value, dict) and value:
    out = {}
    for k, v in value.items():
      out.update(_flatten(v, f'{prefix}.{k}' if prefix else k))
    return out
  return {prefix: value}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """'key: old -> new' for every setting that differs ('(absent)' where one side lacks it)."""
  a, b = _flatten(dict(old)), _flatten(dict(new))
  out = []
  for key in sorted(set(a) | set(b)):
    if a.get(key, '(absent)') != b.get(key, '(absent)'):
      out.append(f'{key}: {json.dumps(a.get(key, "(absent)"))} -> '
                 f'{json.dumps(b.get(key, "(absent)"))}')
  return out


# Settings that only add runs: a preset may gain them in an existing EXPERIMENT_DIR (the runs
# already there stay valid); changing or removing them is a change like any other.
ADDABLE_SETTINGS = ('experiment.distill', 'experiment.ablations.')


def store_or_check(experiment_dir: str, current: Mapping[str, Any], gin_text: str) -> None:
  """Writes EXPERIMENT_DIR/preset.json on the first run; later, a ValueError (one line) naming
  what differs when `current` is not the stored preset, unless `current` only adds rows (a
  distillation row, new ablations): then preset.json is rewritten and the finished runs stay."""
  path = os.path.join(experiment_dir, PRESET_FILE)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      stored = json.load(f)
    old = {k: stored.get(k) for k in ('experiment', 'models')}
    diff = differences(old, current)
    if not diff:
      return
    old_keys = _flatten(old)
    changed = [d for d in diff if not _is_addition(d.split(': ', 1)[0], old_keys)]
    if changed:
      raise ValueError(f'{experiment_dir} holds an experiment of another preset ({path}); '
                       f'changed: {"; ".join(changed)}. Use a new EXPERIMENT_DIR or the stored '
                       'preset.')
  os.makedirs(experiment_dir, exist_ok=True)
  atomic_file.write_json(path, {**current, 'preset_gin': gin_text})


def _is_addition(key: str, old_keys: Mapping[str, Any]) -> bool:
  """Whether `key` is a new setting under ADDABLE_SETTINGS whose whole row the old preset lacks."""
  for prefix in ADDABLE_SETTINGS:
    if key.startswith(prefix):
      row = prefix if not prefix.endswith('.') else prefix + key[len(prefix):].split('.')[0]
      return not any(k == row or k.startswith(row + '.') for k in old_keys)
  return False
