"""Builds one training run on top of the model side (`model_setup.build_model_setup`: partitioner,
model, abstract params and shardings, eval step): optimizer, train state shardings, checkpointer.

Everything that can reject bad input (task name, checkpoint paths, model shape vs the checkpoint
in MODEL_DIR) runs in `build` before anything is jitted.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Callable, Hashable, Iterator, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import jax
import numpy as np
import gin
import optax
from jax.sharding import NamedSharding, PartitionSpec

from moe_flan import config as config_lib
from moe_flan import config_gin
from moe_flan.model import losses
from moe_flan.moe import capacity
from moe_flan.moe import dispatch_expert_parallel
from moe_flan.partitioning import partitioner as part_lib
from moe_flan.trainer import checkpoints as ckpt_lib
from moe_flan.trainer import data as data_lib
from moe_flan.trainer import distill as distill_lib
from moe_flan.trainer import freezing
from moe_flan.trainer import model_setup as model_setup_lib
from moe_flan.trainer import nan_guard
from moe_flan.trainer import optimizers
from moe_flan.trainer import step_buffers
from moe_flan.trainer import train_state as ts
from moe_flan.trainer import train_step as step_lib


def _spec_for_opt_leaf(shape, param_shape, param_spec: PartitionSpec) -> PartitionSpec:
  """Sharding of an optimizer-state leaf derived from its param's (full, row or column stats)."""
  spec = tuple(param_spec) + (None,) * (len(param_shape) - len(param_spec))
  if tuple(shape) == tuple(param_shape):
    return PartitionSpec(*spec)
  if len(param_shape) >= 2 and tuple(shape) == tuple(param_shape[:-1]):
    return PartitionSpec(*spec[:-1])
  if len(param_shape) >= 2 and tuple(shape) == tuple(param_shape[:-2] + param_shape[-1:]):
    return PartitionSpec(*(spec[:-2] + spec[-1:]))
  return PartitionSpec()


def opt_state_shardings(abstract_opt_state: Any, param_shapes: dict[str, tuple],
                        param_specs: dict[str, PartitionSpec], mesh) -> Any:
  """Each opt-state leaf follows the param whose path ends its own path; others replicate."""
  def one(path, leaf):
    p = jax.tree_util.keystr(path, simple=True, separator='/')
    match = max((k for k in param_shapes if p == k or p.endswith('/' + k)), key=len, default=None)
    spec = PartitionSpec() if match is None else _spec_for_opt_leaf(
        leaf.shape, param_shapes[match], param_specs[match])
    return NamedSharding(mesh, spec)
  return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


@dataclasses.dataclass(frozen=True)
class StepParts:
  """What the train step is made of, built without touching disk or devices, so that a plan
  for other devices (moe_flan.aot: a TPU topology on a CPU host) compiles the trainer's own step.
  """
  model_side: model_setup_lib.ModelSetup
  optimizer: optimizers.OptimizerConfig
  tx: optax.GradientTransformation
  schedule: Callable
  frozen: Any
  abstract_state: ts.TrainState      # ShapeDtypeStructs with shardings
  state_shardings: ts.TrainState
  teacher: Optional[distill_lib.Teacher] = None   # a distillation run's frozen teacher
  # Everything the jitted step's program depends on (besides its arguments), or None: equal
  # keys share one jitted step (`jit_train_step`).
  step_key: Optional[Hashable] = None

  @property
  def model_config(self) -> config_lib.T5Config:
    return self.model_side.config

  @property
  def partitioner(self) -> Any:
    return self.model_side.partitioner

  @property
  def model(self) -> nn.Module:
    return self.model_side.model

  def jit_train_step(self, reuse: Optional[bool] = None) -> Callable:
    """(state, batch) -> (state, metrics), jitted; call or `.lower` it inside
    `partitioner.activate()`. With a teacher: (state, batch, teacher_params). reuse: the
    opt-in step buffers (None: OptimizerConfig.reuse_step_buffers, off by default; see
    step_buffers.jit_train_step)."""
    reuse = self.optimizer.reuse_step_buffers if reuse is None else reuse
    key = None if reuse or self.step_key is None else (self.step_key, 'step')
    return _shared(key, lambda: self._jit_train_step(reuse))

  def _jit_train_step(self, reuse: bool) -> Callable:
    forward, constants = None, ()
    if self.teacher is not None:
      forward = self.teacher.train_forward(self.model, self.model_config)
      constants = (self.teacher.param_shardings,)
    return step_buffers.jit_train_step(
        lambda return_grads: step_lib.make_train_step(
            self.model, self.model_config, self.tx, self.schedule, self.frozen,
            self.optimizer.num_microbatches, return_grads=return_grads, forward=forward),
        reuse,
        in_shardings=(self.state_shardings, self.partitioner.data_sharding) + constants,
        out_shardings=(self.state_shardings, self.partitioner.replicated),
        grad_shardings=self.state_shardings.params)

  def jit_init(self, feature_lengths: Mapping[str, int], batch_size: int) -> Callable:
    """rng -> a fresh TrainState (initialised params, the optimizer's state), jitted onto the
    state shardings (`train_state.init_params_fn`: the model traced with a dummy batch of these
    lengths and rows); shared like `jit_train_step`."""
    key = None if self.step_key is None else (
        self.step_key, 'init', tuple(sorted(feature_lengths.items())), batch_size)

    def make() -> Callable:
      init, tx = ts.init_params_fn(self.model, feature_lengths, batch_size), self.tx

      def fresh(rng):
        return ts.new_state(nn.meta.unbox(init(rng)), tx, rng)
      return jax.jit(fresh, out_shardings=self.state_shardings)
    return _shared(key, make)


# Jitted train steps, initialisers and compiled train steps by key (StepParts.step_key and what
# they add), least recently used first: runs of equal settings in one process (an experiment's
# seeds and stages) then trace, lower and compile them once. (jax keeps a jitted function's
# programs per argument shapes and shardings for calls, but `.lower(...).compile()` lowers and
# compiles again each time.)
_JITTED: collections.OrderedDict[Hashable, Callable] = collections.OrderedDict()
_JITTED_MAX = 32


def _signature(tree: Any) -> Hashable:
  """What a program compiled for `tree`'s arrays depends on: structure, avals, shardings."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((jax.typeof(x), getattr(x, 'sharding', None)) for x in leaves)


def _shared(key: Optional[Hashable], make: Callable[[], Callable]) -> Callable:
  """The jitted function kept under `key`, else `make()` (kept unless `key` is None)."""
  if key is None:
    return make()
  if key in _JITTED:
    _JITTED.move_to_end(key)
    return _JITTED[key]
  _JITTED[key] = jitted = make()
  while len(_JITTED) > _JITTED_MAX:
    _JITTED.popitem(last=False)
  return jitted


def step_key(model_config: config_lib.T5Config, optimizer: optimizers.OptimizerConfig,
             frozen_groups: Sequence[str], partitioner) -> Optional[Hashable]:
  """What a (teacher-less) train step's program depends on besides its arguments' shapes: the
  model and optimizer settings, the frozen groups, the mesh and rules, and the gin bindings of
  the loss (read while tracing); None when a setting is not hashable (nothing is shared)."""
  key = (model_config, optimizer, tuple(frozen_groups), partitioner.mesh,
         repr(partitioner.rules), repr(sorted(gin.get_bindings(losses.compute_loss).items())))
  try:
    hash(key)
  except TypeError:
    return None
  return key


@dataclasses.dataclass
class TrainSetup:
  """The pieces of one run, built and checked: the train step's parts (`parts`: model side,
  optimizer, abstract sharded state) and what the run adds on disk and in data; methods do the
  work the loop needs."""
  model_dir: str
  parts: StepParts
  data: data_lib.DataConfig
  eval_data: Optional[data_lib.DataConfig]
  checkpoint: ckpt_lib.CheckpointConfig
  checkpointer: ckpt_lib.Checkpointer
  seed: int
  teacher_params: Any = None     # a distillation run's teacher params (parts.teacher), on the mesh

  # ---- state ------------------------------------------------------------------------------------
  def initial_state(self) -> tuple[ts.TrainState, int]:
    """(state, data position): resumed from MODEL_DIR, else fresh (+ initial checkpoint)."""
    if self.checkpointer.latest_step() is not None:
      state, meta = self.checkpointer.restore(self.parts.abstract_state)
      return state, int(meta['data_position'])
    fresh = self.parts.jit_init(self.data.task_feature_lengths, self.data.batch_size)
    with self.parts.partitioner.activate():
      state = fresh(jax.random.PRNGKey(self.seed))
    if self.checkpoint.initial_checkpoint_path:
      params = ckpt_lib.restore_initial_params(self.checkpoint, state.params)
      state = state.replace(params=params)
    return state, 0

  def save(self, state: ts.TrainState, force: bool = False) -> None:
    step = int(jax.device_get(state.step))
    if not force and step % self.checkpoint.period:
      return
    if not bool(nan_guard.tree_all_finite(state.params)):
      raise nan_guard.NonFiniteError(f'params are not finite at step {step}; not saving')
    self.checkpointer.save(state, data_position=step, force=force)

  def close(self) -> None:
    self.checkpointer.close()

  # ---- data -------------------------------------------------------------------------------------
  def train_batches(self, start_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of the global batches from `start_batch` on, in an order that does
    not depend on the process count (`data.host_slices`)."""
    shard_id, num_shards = self.parts.partitioner.data_shard_info()
    return data_lib.host_slices(self.data, shard_id, num_shards, start_batch=start_batch)

  def shard(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return self.parts.partitioner.shard_batch(batch, self.data.batch_size)

  # ---- steps ------------------------------------------------------------------------------------
  def jit_train_step(self) -> Callable:
    """(state, batch) -> (state, metrics), jitted with the state donated (or, with
    OptimizerConfig.reuse_step_buffers, step_buffers.jit_train_step's kept buffers)."""
    jitted = self.parts.jit_train_step()
    constants = () if self.parts.teacher is None else (self.teacher_params,)

    def run(state, batch):
      with self.parts.partitioner.activate():
        return jitted(state, batch, *constants)
    return run

  def compiled_train_step(self, state: Any, batch: dict[str, jax.Array]) -> Callable:
    """`jit_train_step` compiled now for these (state, sharded batch) shapes, so that the first
    step starts without compiling. The loop compiles before the processes' first barrier:
    their first collective then starts together (gloo's CPU rendezvous gives up after 30 s,
    less than a compile can differ between processes on a loaded host). With
    reuse_step_buffers (a wrapper around two jitted calls), the step compiles at its first call."""
    if self.parts.optimizer.reuse_step_buffers:
      return self.jit_train_step()
    constants = () if self.parts.teacher is None else (self.teacher_params,)
    jitted = self.parts.jit_train_step()
    key = None if self.parts.step_key is None else (
        self.parts.step_key, 'compiled', _signature((state, batch, *constants)))

    def compile_now() -> Callable:
      with self.parts.partitioner.activate():
        return jitted.lower(state, batch, *constants).compile()
    compiled = _shared(key, compile_now)

    def run(state, batch):
      with self.parts.partitioner.activate():
        return compiled(state, batch, *constants)
    return run

  def evaluate(self, params: Any, num_batches: int,
               cfg: Optional[data_lib.DataConfig] = None) -> dict[str, Any]:
    """Mean eval metrics over `num_batches` batches of `cfg` (default: eval data, else the
    train mixture's validation split)."""
    cfg = cfg or self.eval_data or dataclasses.replace(self.data, split='validation')
    return self.parts.model_side.mean_metrics(params, cfg, num_batches)


def check_inputs(model_dir: str, data: data_lib.DataConfig,
                 checkpoint: ckpt_lib.CheckpointConfig,
                 eval_data: Optional[data_lib.DataConfig] = None,
                 model_vocab_size: Optional[int] = None) -> None:
  """Raises ValueError naming the bad setting; nothing is compiled before this passes."""
  if not isinstance(model_dir, str) or not model_dir:
    raise ValueError(f'MODEL_DIR={model_dir!r} must be a non-empty path')
  data_lib.check_task_exists(data.mixture_or_task_name, model_vocab_size)
  if eval_data is not None:
    data_lib.check_task_exists(eval_data.mixture_or_task_name, model_vocab_size)
  if checkpoint.initial_checkpoint_path:
    ckpt_lib.resolve_step_dir(checkpoint.initial_checkpoint_path)


def build(model_dir: str, model_config: config_lib.T5Config, data: data_lib.DataConfig,
          optimizer: optimizers.OptimizerConfig, checkpoint: ckpt_lib.CheckpointConfig,
          frozen_groups: Sequence[str], seed: int,
          eval_data: Optional[data_lib.DataConfig] = None, partitioner=None,
          distill: Optional[distill_lib.DistillConfig] = None) -> TrainSetup:
  """Checks inputs and builds a TrainSetup (no compilation). Writes MODEL_DIR/model.gin (the
  model's bindings, which `moe_flan.load` reads). With `distill`, the run distils a frozen
  teacher into the model (`distill.build_teacher`; its params are restored here)."""
  check_inputs(model_dir, data, checkpoint, eval_data, model_config.vocab_size)
  teacher = None
  if distill is not None:
    partitioner = partitioner or part_lib.create_partitioner()
    teacher = distill_lib.build_teacher(distill, model_config, partitioner)
  if jax.process_index() == 0:
    data_lib.report_truncation(data)    # warns when TASK_FEATURE_LENGTHS cut many examples
  parts = build_step(model_config, data, optimizer, frozen_groups, seed, partitioner, teacher)
  os.makedirs(model_dir, exist_ok=True)   # only now: a bad mesh or batch leaves no empty dir
  checkpointer = ckpt_lib.Checkpointer(model_dir, checkpoint)
  checkpointer.check_compatible(ts.param_shapes(parts.abstract_state.params))
  if jax.process_index() == 0:
    config_gin.write_model_gin(model_dir, model_config)
    if teacher is not None:
      teacher.write_gin(model_dir)
  teacher_params = teacher.restore_params() if teacher is not None else None
  return TrainSetup(model_dir, parts, data, eval_data, checkpoint, checkpointer, seed,
                    teacher_params)


def build_step(model_config: config_lib.T5Config, data: data_lib.DataConfig,
               optimizer: optimizers.OptimizerConfig, frozen_groups: Sequence[str], seed: int,
               partitioner=None, teacher: Optional[distill_lib.Teacher] = None) -> StepParts:
  """The model side (`model_setup.build_model_setup`) and on it the optimizer and abstract
  sharded train state (no I/O, nothing allocated). `seed` is the run's; shapes do not depend
  on it. `teacher` (built on the same partitioner) makes the step a distillation step."""
  del seed
  side = model_setup_lib.build_model_setup(model_config, partitioner)
  partitioner = side.partitioner
  partitioner.check_batch_size(data.batch_size)
  check_expert_parallel_groups(model_config, data, partitioner)
  if teacher is not None:     # the teacher routes eval-mode groups on the same mesh
    check_expert_parallel_groups(teacher.config, data, partitioner, 'teacher ', training=False,
                                 setting=TEACHER_GROUP_SIZE)
  param_shardings = side.param_shardings
  params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), side.abstract_params)
  schedule = optimizers.make_schedule(optimizer.schedule)
  tx = freezing.with_freezing(optimizers.make_optimizer(optimizer, schedule), params,
                              frozen_groups)
  frozen = freezing.frozen_mask(params, frozen_groups)
  abstract_opt = jax.eval_shape(tx.init, params)
  flat_shapes = ts.param_shapes(params)
  flat_specs = flax.traverse_util.flatten_dict(
      jax.tree.map(lambda s: s.spec, param_shardings), sep='/')
  repl = partitioner.replicated
  shardings = ts.TrainState(
      step=repl, params=param_shardings, rng=repl,
      opt_state=opt_state_shardings(abstract_opt, flat_shapes, flat_specs, partitioner.mesh))
  rng = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  abstract = ts.TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=params,
                           opt_state=abstract_opt, rng=rng)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  key = None if teacher is not None else step_key(model_config, optimizer, frozen_groups,
                                                   partitioner)
  return StepParts(side, optimizer, tx, schedule, frozen, abstract, shardings, teacher, key)


# The teacher's config is parsed apart from the run's: its group size is set through its own
# bindings, not --gin.MoeConfig.group_size.
TEACHER_GROUP_SIZE = '--gin.DistillConfig.teacher_bindings="[\'MoeConfig.group_size = {}\']"'


def check_expert_parallel_groups(model_config: config_lib.T5Config, data: data_lib.DataConfig,
                                 partitioner, who: str = '', training: bool = True,
                                 setting: str = '--gin.MoeConfig.group_size={}') -> None:
  """With the shard_map dispatcher, every MoE stack's groups (training's, or eval mode's for a
  distillation teacher: `who`='teacher ', training=False) must divide over the mesh (else it
  would silently run the 'scatter' path); ValueError naming a group_size (as `setting`)."""
  moe = model_config.moe
  if moe is None or moe.dispatch != 'expert_parallel':   # dense models have no groups
    return
  stacks = (('encoder', 'inputs', model_config.encoder_sparse_blocks()),
            ('decoder', 'targets', model_config.decoder_sparse_blocks()))
  for stack, feature, blocks in stacks:
    if not blocks or feature not in data.task_feature_lengths:
      continue
    length = data.task_feature_lengths[feature]
    groups, _ = capacity.token_groups(data.batch_size, length, moe.group_size,
                                      moe.routing_groups, training=training)
    dispatch_expert_parallel.check_training_groups(
        groups, data.batch_size * length, moe.group_size, partitioner.mesh, partitioner.rules,
        f'{who}{stack} ({feature} length {length}, batch {data.batch_size})', setting)
