"""Distillation runs: a frozen teacher inside the student's train step (gin/runs/distill.gin).

    python -m moe_flan.train --gin_file=gin/models/t5_1_1_tiny.gin \\
      --gin_file=gin/runs/distill.gin --gin.TEACHER_CHECKPOINT_PATH="'/tmp/quickstart'" \\
      --gin.MODEL_DIR="'/tmp/distill'" [--gin.TEACHER_GIN="'gin/models/flan_moe_tiny.gin'"]

The student is the run's model (its gin file and bindings); the teacher is read from its own
gin file (`DistillConfig.teacher_gin`, default: the `model.gin` beside its checkpoint, which
training and `moe_flan.convert` write), parsed apart from the run's gin configuration. It runs
on the student's partitioner and rules (an expert-parallel layout shards its experts; the
shard_map overlay's dispatcher is the teacher's too: `run_layout_bindings`), in eval
mode (no dropout, eval capacity factor), with its params restored once in
`teacher_param_dtype` and passed to the jitted step beside the train state: no gradients, no
optimizer state, not in the student's checkpoints (resuming restores them again).
The loss is `moe_flan.model.distillation.distillation_loss`.

`build_teacher` rejects bad input before anything is compiled: teacher and student
vocabularies of different sizes, a teacher checkpoint whose params do not fit the teacher's
config, alpha outside [0, 1], a temperature <= 0.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Optional, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from moe_flan import config as config_lib
from moe_flan import config_gin
from moe_flan.model import distillation
from moe_flan.partitioning import partitioner as part_lib
from moe_flan.trainer import checkpoints as ckpt_lib
from moe_flan.trainer import cli
from moe_flan.trainer import gin_checks
from moe_flan.trainer import model_setup as model_setup_lib
from moe_flan.trainer import train_state as ts
from moe_flan.trainer import train_step as step_lib

TEACHER_GIN = 'teacher.gin'   # written to MODEL_DIR: the teacher's config and where it came from
PARAM_DTYPES = ('float32', 'bfloat16', 'float16')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """The teacher and the weighting of the distillation loss.

  teacher_checkpoint_path: the teacher's params (a MODEL_DIR, checkpoints/ or step directory,
    or a `moe_flan.convert` output directory).
  teacher_gin: the teacher's model gin file (found as --gin_file is); None = the model.gin
    beside teacher_checkpoint_path.
  teacher_bindings: extra gin bindings for the teacher's model only, e.g.
    ("MoeConfig.group_size = 256",); they follow the run's layout bindings
    (`run_layout_bindings`: the shard_map dispatcher), so they may override them.
  alpha: weight of the cross entropy on the targets; 1 - alpha weighs T^2 * KL.
  temperature: T of both softmaxes in the KL.
  teacher_param_dtype: the dtype the teacher's params are held in ('float32', the training
    dtype of params, or 'bfloat16' / 'float16' for half the memory); its layers compute in its
    T5Config.dtype either way.
  """
  teacher_checkpoint_path: str
  teacher_gin: Optional[str] = None
  teacher_bindings: Sequence[str] = ()
  alpha: float = 0.5
  temperature: float = 2.0
  teacher_param_dtype: str = 'float32'

  def __post_init__(self):
    if not isinstance(self.teacher_checkpoint_path, str) or not self.teacher_checkpoint_path:
      raise ValueError(f'DistillConfig.teacher_checkpoint_path={self.teacher_checkpoint_path!r}'
                       ' must be a non-empty path (TEACHER_CHECKPOINT_PATH)')
    distillation.check_settings(self.alpha, self.temperature)
    if self.teacher_param_dtype not in PARAM_DTYPES:
      raise ValueError(f'DistillConfig.teacher_param_dtype={self.teacher_param_dtype!r} must be '
                       f'one of {PARAM_DTYPES}')


@contextlib.contextmanager
def _gin_set_aside() -> Iterator[None]:
  """Runs the block on an empty gin configuration and puts the run's back afterwards
  (bindings, imports, search paths, lock), so a second model's gin files can be parsed mid-run
  without their bindings (VOCAB_SIZE, T5Config.*) reaching the student or the run's the
  teacher."""
  g = gin.config
  # pylint: disable=protected-access
  saved = (dict(g._CONFIG), set(g._IMPORTS), dict(g._OPERATIVE_CONFIG), dict(g._SINGLETONS),
           list(g._LOCATION_PREFIXES), g._CONFIG_IS_LOCKED)
  gin.clear_config()
  try:
    with gin_checks.queries_set_aside():
      yield
  finally:
    gin.clear_config()
    g._CONFIG.update(saved[0])
    g._IMPORTS.update(saved[1])
    g._OPERATIVE_CONFIG.update(saved[2])
    g._SINGLETONS.update(saved[3])
    g._LOCATION_PREFIXES[:] = saved[4]
    g._set_config_is_locked(saved[5])
  # pylint: enable=protected-access


def run_layout_bindings() -> tuple[str, ...]:
  """The bindings of the run's layout that its teacher shares: the shard_map dispatcher when
  the run binds `MoeConfig.dispatch = 'expert_parallel'` (gin/partitioning/
  expert_parallel_shard_map.gin, a way of running experts on the 'expert' mesh axis, not part
  of what a model computes). Other dispatchers stay the teacher's own model file's choice."""
  try:
    dispatch = gin_checks.query_parameter('MoeConfig.dispatch')   # used even by a dense student
  except ValueError:      # not bound in the run (or no gin configuration at all)
    return ()
  return ("MoeConfig.dispatch = 'expert_parallel'",) if dispatch == 'expert_parallel' else ()


def model_config_from_gin(gin_file: str, bindings: Sequence[str] = ()) -> config_lib.T5Config:
  """The T5Config that `gin_file` (+ `bindings`) describes, parsed on its own; found as the
  run's --gin_file are (as given, or under the run's gin search paths)."""
  search_paths = [p for p in gin.config._LOCATION_PREFIXES if p]  # pylint: disable=protected-access
  with _gin_set_aside():
    cli.parse_gin([gin_file], bindings, search_paths, skip_unknown=True)
    return config_lib.T5Config()


@dataclasses.dataclass(frozen=True)
class Teacher:
  """The teacher of a distillation run, built and checked (nothing allocated).

  side: the teacher's model on the student's partitioner.
  abstract_params: ShapeDtypeStructs in `cfg.teacher_param_dtype`, with their shardings.
  gin_file: where its config came from.
  """
  cfg: DistillConfig
  side: model_setup_lib.ModelSetup
  abstract_params: Any
  gin_file: str

  @property
  def config(self) -> config_lib.T5Config:
    return self.side.config

  @property
  def param_shardings(self) -> Any:
    return self.side.param_shardings

  def restore_params(self) -> Any:
    """The teacher's params from its checkpoint, on the mesh, in `teacher_param_dtype`."""
    cfg = ckpt_lib.CheckpointConfig(initial_checkpoint_path=self.cfg.teacher_checkpoint_path)
    return ckpt_lib.restore_params(cfg, self.abstract_params)[0]

  def logits(self, teacher_params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """<float32>[B, Lt, V] teacher logits in eval mode (no dropout, eval capacity factor)."""
    logits = self.side.model.apply({'params': teacher_params}, **ts.model_inputs(batch),
                                   enable_dropout=False)
    return jax.lax.stop_gradient(logits.astype(jnp.float32))

  def train_forward(self, student: nn.Module, student_config: config_lib.T5Config) -> Callable:
    """(params, batch, rng, teacher_params) -> (loss, metrics) of the student, for
    `train_step.make_train_step(forward=...)`."""
    alpha, temperature = self.cfg.alpha, self.cfg.temperature

    def forward(params, batch, rng, teacher_params):
      teacher_logits = self.logits(teacher_params, batch)
      loss_fn = lambda logits, moe: distillation.distillation_loss(
          student_config, logits, teacher_logits, batch, moe, alpha, temperature)
      return step_lib.forward_metrics(student, student_config, params, batch, rng, True,
                                      loss_fn=loss_fn)
    return forward

  def write_gin(self, model_dir: str) -> str:
    """MODEL_DIR/teacher.gin: the teacher's config, headed by where it came from."""
    header = (f'The teacher this run distils (moe_flan.trainer.distill): config from '
              f'{self.gin_file}, params from {self.cfg.teacher_checkpoint_path}, alpha '
              f'{self.cfg.alpha}, temperature {self.cfg.temperature}, params held in '
              f'{self.cfg.teacher_param_dtype}.')
    return config_gin.write_model_gin(model_dir, self.config, header, name=TEACHER_GIN)


def _check_vocabularies(teacher: config_lib.T5Config, student: config_lib.T5Config,
                        gin_file: str) -> None:
  if teacher.vocab_size != student.vocab_size:
    raise ValueError(
        f'teacher and student vocabularies differ: teacher T5Config.vocab_size='
        f'{teacher.vocab_size} ({gin_file}) vs student T5Config.vocab_size={student.vocab_size}'
        '; distillation compares their logits id by id, so both must share one vocabulary')


def _check_checkpoint(cfg: DistillConfig, abstract_params: Any, gin_file: str) -> None:
  """ValueError naming the params where the teacher checkpoint and its config differ."""
  step_dir = ckpt_lib.resolve_step_dir(cfg.teacher_checkpoint_path)
  saved = ckpt_lib.saved_param_shapes(step_dir)
  bad = ckpt_lib.shape_mismatches(ts.param_shapes(abstract_params), saved)
  if bad:
    shown = '; '.join(bad[:6]) + (f'; and {len(bad) - 6} more' if len(bad) > 6 else '')
    raise ValueError(f'teacher checkpoint {step_dir} does not match the teacher config '
                     f'{gin_file} ({len(bad)} params differ): {shown}')


def build_teacher(cfg: DistillConfig, student_config: config_lib.T5Config,
                  partitioner: part_lib.Partitioner) -> Teacher:
  """The teacher of `cfg` on `partitioner`, checked against the student and its checkpoint
  (reads the teacher's gin file and checkpoint metadata; nothing is compiled)."""
  try:
    ckpt_lib.resolve_step_dir(cfg.teacher_checkpoint_path)
  except ValueError as e:
    raise ValueError(f'TEACHER_CHECKPOINT_PATH: {e}') from e
  gin_file = cfg.teacher_gin or ckpt_lib.find_model_gin(
      cfg.teacher_checkpoint_path, 'TEACHER_CHECKPOINT_PATH (no TEACHER_GIN given)')
  config = model_config_from_gin(gin_file, run_layout_bindings() + tuple(cfg.teacher_bindings))
  _check_vocabularies(config, student_config, gin_file)
  side = model_setup_lib.build_model_setup(config, partitioner)
  dtype = jnp.dtype(cfg.teacher_param_dtype)
  params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype, sharding=a.sharding),
                        side.abstract_params)
  _check_checkpoint(cfg, params, gin_file)
  return Teacher(cfg, side, params, gin_file)
