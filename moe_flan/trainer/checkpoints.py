"""Orbax checkpoints: periodic async saves, keep-last-K, exact resume, partial initial restore.

Layout: MODEL_DIR/checkpoints/<step>/{state, meta}. `state` holds the TrainState as a dict (step,
params, opt_state, rng); `meta` (JSON) holds the input-pipeline position and the param shapes.
Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save leaves the previous checkpoint usable (atomic).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import flax
import gin
import jax
import numpy as np
import orbax.checkpoint as ocp

from moe_flan.model import upcycling
from moe_flan.trainer import train_state as ts

CHECKPOINT_SUBDIR = 'checkpoints'


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """When and how to save, and what to start from.

  period: save every `period` steps (and at the end / on SIGTERM); keep: how many to keep;
  initial_checkpoint_path: params to start from when MODEL_DIR has no checkpoint (a step directory,
  a checkpoints directory or a MODEL_DIR); upcycle_from_dense: the initial checkpoint is a dense
  model and this model is sparse (experts copy the dense MLPs, fresh routers);
  allow_missing_params: when starting from an initial checkpoint, params absent from it keep their
  fresh initialisation (otherwise absence is an error).
  """
  period: int = 1000
  keep: int = 3
  async_save: bool = True
  initial_checkpoint_path: Optional[str] = None
  upcycle_from_dense: bool = False
  allow_missing_params: bool = False

  def __post_init__(self):
    if self.period < 1:
      raise ValueError(f'CheckpointConfig.period={self.period}: must be >= 1')
    if self.keep < 1:
      raise ValueError(f'CheckpointConfig.keep={self.keep}: must be >= 1')


def state_to_dict(state: ts.TrainState) -> dict[str, Any]:
  return {'step': state.step, 'params': state.params, 'opt_state': state.opt_state,
          'rng': state.rng}


def resolve_step_dir(path: str) -> str:
  """A step directory (holding `state/`) from a step, checkpoints or MODEL_DIR path."""
  if not os.path.isdir(path):
    raise ValueError(f'INITIAL_CHECKPOINT_PATH / checkpoint path {path!r} does not exist')
  if os.path.isdir(os.path.join(path, 'state')):
    return path
  for base in (os.path.join(path, CHECKPOINT_SUBDIR), path):
    steps = [int(n) for n in os.listdir(base) if n.isdigit()] if os.path.isdir(base) else []
    if steps:
      return os.path.join(base, str(max(steps)))
  raise ValueError(f'checkpoint path {path!r} holds no checkpoint (no state/ or step directories)')


def saved_param_shapes(step_dir: str) -> dict[str, tuple[int, ...]]:
  """'a/b/c' -> shape of each param saved in a step directory (from orbax metadata, no data)."""
  meta = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, 'state'))
  tree = getattr(meta, 'item_metadata', meta)
  tree = getattr(tree, 'tree', tree)
  params = tree['params']
  flat = flax.traverse_util.flatten_dict(_to_dict(params), sep='/')
  return {k: tuple(v.shape) for k, v in flat.items()}


def _to_dict(tree):
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree


def shape_mismatches(expected: dict[str, tuple], saved: dict[str, tuple]) -> list[str]:
  """Human-readable list of params whose presence or shape differ."""
  out = []
  for k in sorted(set(expected) | set(saved)):
    if k not in saved:
      out.append(f'{k}: model {expected[k]}, missing in checkpoint')
    elif k not in expected:
      out.append(f'{k}: checkpoint {saved[k]}, not in model')
    elif tuple(expected[k]) != tuple(saved[k]):
      out.append(f'{k}: model {expected[k]} vs checkpoint {saved[k]}')
  return out


class Checkpointer:
  """Saves/restores the TrainState of one run under MODEL_DIR/checkpoints."""

  def __init__(self, model_dir: str, cfg: CheckpointConfig):
    self.cfg = cfg
    self.directory = os.path.abspath(os.path.join(model_dir, CHECKPOINT_SUBDIR))
    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, create=True,
                                           enable_async_checkpointing=cfg.async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def check_compatible(self, expected_shapes: dict[str, tuple]) -> None:
    """Raises ValueError naming the params whose shapes differ from the latest checkpoint's."""
    step = self.latest_step()
    if step is None:
      return
    bad = shape_mismatches(expected_shapes,
                           saved_param_shapes(os.path.join(self.directory, str(step))))
    if bad:
      raise ValueError(
          f'MODEL_DIR checkpoint {self.directory}/{step} was written by a model of a different '
          f'shape; refusing to resume. Use a new MODEL_DIR or the matching model. Differences:\n  '
          + '\n  '.join(bad))

  def save(self, state: ts.TrainState, data_position: int, force: bool = False) -> bool:
    """Saves if `step` is a save step (or `force`); async unless configured otherwise."""
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return False
    if not force and step % self.cfg.period:
      return False
    if jax.default_backend() == 'cpu':
      # On CPU orbax's "device to host" copy is a zero-copy view of the buffers, which the next
      # (donating) train step overwrites while the async write is still running; save a copy.
      state = jax.tree.map(lambda x: x.copy(), state)
    meta = {'step': step, 'data_position': int(data_position),
            'param_shapes': {k: list(v) for k, v in ts.param_shapes(state.params).items()}}
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_to_dict(state)), meta=ocp.args.JsonSave(meta)),
                             force=True)

  def restore(self, abstract_state: ts.TrainState, step: Optional[int] = None
              ) -> tuple[ts.TrainState, dict[str, Any]]:
    """Restores `step` (default latest) onto the shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state_to_dict(abstract_state)),
        meta=ocp.args.JsonRestore()))
    leaves = jax.tree.leaves(restored['state'])
    treedef = jax.tree.structure(state_to_dict(abstract_state))
    return ts.TrainState(**jax.tree.unflatten(treedef, leaves)), dict(restored['meta'])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_params(path: str, abstract_params: Any) -> dict[str, np.ndarray]:
  """All params of a checkpoint as host numpy arrays, flat 'a/b/c' -> array.

  `abstract_params` is unused for placement (host arrays are reshaped/sharded by the caller);
  kept so callers state what they expect.
  """
  del abstract_params
  step_dir = resolve_step_dir(path)
  meta = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, 'state'))
  tree = getattr(meta, 'item_metadata', meta)
  tree = _to_dict(getattr(tree, 'tree', tree))
  target = {'params': jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray),
                                   tree['params'])}
  with ocp.PyTreeCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(step_dir, 'state'), args=ocp.args.PyTreeRestore(
        item={'params': tree['params']}, restore_args=target, partial_restore=True))
  return flax.traverse_util.flatten_dict(_to_dict(restored['params']), sep='/')


def restore_initial_params(cfg: CheckpointConfig, fresh_params: Any) -> Any:
  """`fresh_params` (unboxed, sharded) with values loaded from `cfg.initial_checkpoint_path`.

  Shapes must match exactly; a param missing from the checkpoint is an error unless
  `allow_missing_params`. With `upcycle_from_dense`, dense MLPs are copied into the experts first.
  """
  loaded = load_params(cfg.initial_checkpoint_path, fresh_params)
  expected = ts.param_shapes(fresh_params)
  if cfg.upcycle_from_dense:
    loaded = upcycling.upcycle_flat(loaded, expected)
  fresh_ok = set(upcycling.missing_after_upcycling(expected)) if cfg.upcycle_from_dense else set()
  bad = [m for m in shape_mismatches(expected, {k: v.shape for k, v in loaded.items()})
         if not m.endswith('not in model')
         and not (m.endswith('missing in checkpoint')
                  and (cfg.allow_missing_params or m.split(':')[0] in fresh_ok))]
  if bad:
    raise ValueError(f'initial checkpoint {cfg.initial_checkpoint_path!r} does not fit the model:'
                     '\n  ' + '\n  '.join(bad))
  flat = flax.traverse_util.flatten_dict(fresh_params, sep='/')
  out = {}
  for k, v in flat.items():
    if k in loaded:
      out[k] = jax.device_put(np.asarray(loaded[k], v.dtype), v.sharding)
    else:
      out[k] = v
  return flax.traverse_util.unflatten_dict(out, sep='/')
