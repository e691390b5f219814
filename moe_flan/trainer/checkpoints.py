"""Orbax checkpoints: periodic async saves, keep-last-K, exact resume, partial initial restore.

Layout: MODEL_DIR/checkpoints/<step>/{state, meta, checksums.json}. `state` holds the TrainState
as a dict (step, params, opt_state, rng); `meta` (JSON) holds the input-pipeline position and the
param shapes; `checksums.json` the size and CRC-32 of every file (`checkpoint_integrity`).
Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save leaves the previous checkpoint usable (atomic).

A damaged latest step (a truncated or overwritten file) is named with the file and the reason;
by default the newest intact earlier step is restored instead, with a warning. Training moves
the damaged step to MODEL_DIR/checkpoints_corrupt/<step> (so the run can save that step again);
evaluation and inference leave it in place. Nothing is deleted.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from absl import logging
import flax
import gin
import jax
import numpy as np
import orbax.checkpoint as ocp

from moe_flan import config_gin
from moe_flan.model import upcycling
from moe_flan.trainer import checkpoint_integrity as integrity
from moe_flan.trainer import train_state as ts

CHECKPOINT_SUBDIR = 'checkpoints'
CORRUPT_SUBDIR = 'checkpoints_corrupt'
# Orbax's per-step metadata file: present at the step level in a CheckpointManager's steps, at
# the item level (`state/`) in directories written by `StandardCheckpointer.save(dir/state)`.
STEP_METADATA = '_CHECKPOINT_METADATA'
CorruptCheckpointError = integrity.CorruptCheckpointError


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """When and how to save, and what to start from.

  period: save every `period` steps (and at the end / on SIGTERM); keep: how many to keep;
  initial_checkpoint_path: params to start from when MODEL_DIR has no checkpoint (a step directory,
  a checkpoints directory or a MODEL_DIR); upcycle_from_dense: the initial checkpoint is a dense
  model and this model is sparse (experts copy the dense MLPs, fresh routers);
  allow_missing_params: when starting from an initial checkpoint, params absent from it keep their
  fresh initialisation (otherwise absence is an error); fallback_to_intact: when the latest
  step is damaged, restore the newest intact earlier one (with a warning) instead of failing;
  checksums: record every file's CRC-32 when a step is committed, so damage is found and named.
  """
  period: int = 1000
  keep: int = 3
  async_save: bool = True
  initial_checkpoint_path: Optional[str] = None
  upcycle_from_dense: bool = False
  allow_missing_params: bool = False
  fallback_to_intact: bool = True
  checksums: bool = True

  def __post_init__(self):
    if self.period < 1:
      raise ValueError(f'CheckpointConfig.period={self.period}: must be >= 1')
    if self.keep < 1:
      raise ValueError(f'CheckpointConfig.keep={self.keep}: must be >= 1')


def state_to_dict(state: ts.TrainState) -> dict[str, Any]:
  return {'step': state.step, 'params': state.params, 'opt_state': state.opt_state,
          'rng': state.rng}


def step_dirs(path: str) -> list[str]:
  """Step directories (holding `state/`) of a step, checkpoints or MODEL_DIR path, newest first;
  a step directory itself is the only candidate."""
  if not os.path.isdir(path):
    raise ValueError(f'INITIAL_CHECKPOINT_PATH / checkpoint path {path!r} does not exist')
  if os.path.isdir(os.path.join(path, 'state')):
    return [path]
  for base in (os.path.join(path, CHECKPOINT_SUBDIR), path):
    steps = [int(n) for n in os.listdir(base) if n.isdigit()] if os.path.isdir(base) else []
    if steps:
      return [os.path.join(base, str(s)) for s in sorted(steps, reverse=True)]
  raise ValueError(f'checkpoint path {path!r} holds no checkpoint (no state/ or step directories)')


def find_model_gin(path: str, who: str = 'moe_flan.load') -> str:
  """The `model.gin` of a MODEL_DIR, its checkpoints/ directory, a step directory in it, or a
  converted checkpoint's directory; `who` opens the error message."""
  path = os.path.abspath(path)
  candidates = [path]
  parent = os.path.dirname(path)
  if os.path.basename(path) == CHECKPOINT_SUBDIR:                  # MODEL_DIR/checkpoints
    candidates.append(parent)
  elif os.path.basename(parent) == CHECKPOINT_SUBDIR:              # .../checkpoints/N
    candidates.append(os.path.dirname(parent))
  for directory in candidates:
    found = os.path.join(directory, config_gin.MODEL_GIN)
    if os.path.isfile(found):
      return found
  raise ValueError(f'{who}: {path!r} holds no {config_gin.MODEL_GIN} (looked in '
                   f'{candidates}); training (moe_flan.train) and conversion (moe_flan.convert) '
                   'write one beside the checkpoints')


def resolve_step_dir(path: str) -> str:
  """The newest step directory (holding `state/`) of a step, checkpoints or MODEL_DIR path."""
  return step_dirs(path)[0]


def _step_name(step_dir: str) -> str:
  name = os.path.basename(os.path.normpath(step_dir))
  return f'step {name} ({step_dir})' if name.isdigit() else step_dir


def _state_reader(step_dir: str) -> tuple[ocp.Checkpointer, str, Optional[str]]:
  """(checkpointer, directory, item name) that reads `step_dir`'s state the way it was written.

  A CheckpointManager step keeps orbax's step metadata beside its items, so it is read as a
  composite (reading `state/` on its own makes orbax warn that the metadata file is missing);
  a directory written by `StandardCheckpointer.save(dir/state)` keeps it inside `state/`.
  """
  state_dir = os.path.join(step_dir, 'state')
  if (os.path.exists(os.path.join(step_dir, STEP_METADATA))
      and not os.path.exists(os.path.join(state_dir, STEP_METADATA))):
    handler = ocp.CompositeCheckpointHandler(state=ocp.PyTreeCheckpointHandler(),
                                             meta=ocp.JsonCheckpointHandler())
    return ocp.Checkpointer(handler), step_dir, 'state'
  return ocp.PyTreeCheckpointer(), state_dir, None


def _state_tree_metadata(step_dir: str) -> dict[str, Any]:
  """The saved state's tree of array metadata (shapes and dtypes; no data is read)."""
  ckptr, directory, item = _state_reader(step_dir)
  with ckptr:
    meta = ckptr.metadata(directory)
  tree = getattr(meta, 'item_metadata', meta)
  if item is not None:
    tree = tree[item]
  return _to_dict(getattr(tree, 'tree', tree))


def saved_param_shapes(step_dir: str) -> dict[str, tuple[int, ...]]:
  """'a/b/c' -> shape of each param saved in a step directory (from orbax metadata, no data)."""
  flat = flax.traverse_util.flatten_dict(_state_tree_metadata(step_dir)['params'], sep='/')
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


def _check_intact(step_dir: str) -> None:
  """CorruptCheckpointError naming the step, the damaged file and why, if the checksums fail."""
  reason = integrity.problem(step_dir)
  if reason is not None:
    raise CorruptCheckpointError(f'checkpoint {_step_name(step_dir)} is damaged: {reason}')


def _unreadable(step_dir: str, error: Exception) -> Exception:
  """Orbax failed on `step_dir`: corruption when it has no checksums to prove its files intact
  (a step killed before sealing, or older), otherwise the original error."""
  if integrity.is_sealed(step_dir):
    return error
  return CorruptCheckpointError(
      f'checkpoint {_step_name(step_dir)} could not be read and records no checksums to name '
      f'the damaged file: {integrity.first_line(error)}')


def _warn_fallback(failures: list[str], used: str, action: str) -> None:
  logging.warning(
      '!!! CHECKPOINT DAMAGED !!! %s. Falling back to checkpoint %s, the newest intact one; the '
      'damaged step is %s (set CheckpointConfig.fallback_to_intact=False to fail instead).',
      '; '.join(failures), _step_name(used), action)


def _read_params(step_dir: str) -> dict[str, np.ndarray]:
  _check_intact(step_dir)
  try:
    tree = _state_tree_metadata(step_dir)
    target = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), tree['params'])
    args = ocp.args.PyTreeRestore(item={'params': tree['params']},
                                  restore_args={'params': target}, partial_restore=True)
    ckptr, directory, item = _state_reader(step_dir)
    with ckptr:
      restored = ckptr.restore(directory, args=ocp.args.Composite(**{item: args})
                               if item else args)
  except Exception as e:  # pylint: disable=broad-exception-caught  (TensorStore raises plain Exception)
    raise _unreadable(step_dir, e) from e
  if item:
    restored = restored[item]
  return flax.traverse_util.flatten_dict(_to_dict(restored['params']), sep='/')


def load_params_from(path: str, fallback: bool = True) -> tuple[str, dict[str, np.ndarray]]:
  """(step directory read, its params as host numpy arrays, flat 'a/b/c' -> array).

  For a MODEL_DIR or checkpoints path the newest step is read; if it is damaged and `fallback`,
  the newest intact earlier step, with a warning. A step directory is read as given.
  """
  failures = []
  for step_dir in step_dirs(path):
    try:
      flat = _read_params(step_dir)
    except CorruptCheckpointError as e:
      if not fallback:
        raise
      failures.append(str(e))
      continue
    if failures:
      _warn_fallback(failures, step_dir, 'left in place')
    return step_dir, flat
  raise CorruptCheckpointError(f'no intact checkpoint under {path!r}: ' + '; '.join(failures))


def load_params(path: str, abstract_params: Any = None, fallback: bool = True
                ) -> dict[str, np.ndarray]:
  """All params of a checkpoint as host numpy arrays, flat 'a/b/c' -> array.

  `abstract_params` is unused for placement (host arrays are reshaped/sharded by the caller);
  kept so callers state what they expect.
  """
  del abstract_params
  return load_params_from(path, fallback)[1]


class Checkpointer:
  """Saves/restores the TrainState of one run under MODEL_DIR/checkpoints."""

  def __init__(self, model_dir: str, cfg: CheckpointConfig):
    self.cfg = cfg
    self.directory = os.path.abspath(os.path.join(model_dir, CHECKPOINT_SUBDIR))
    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, create=True,
                                           enable_async_checkpointing=cfg.async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))
    self._unsealed: list[int] = []     # saved by this run, checksums not yet recorded

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def check_compatible(self, expected_shapes: dict[str, tuple]) -> None:
    """Raises ValueError naming the params whose shapes differ from the newest readable
    checkpoint's (a damaged step is skipped here; `restore` reports it)."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        _check_intact(self.step_dir(step))
        saved = saved_param_shapes(self.step_dir(step))
      except Exception:  # pylint: disable=broad-exception-caught
        continue
      bad = shape_mismatches(expected_shapes, saved)
      if bad:
        raise ValueError(
            f'MODEL_DIR checkpoint {self.directory}/{step} was written by a model of a different '
            f'shape; refusing to resume. Use a new MODEL_DIR or the matching model. '
            'Differences:\n  ' + '\n  '.join(bad))
      return

  def save(self, state: ts.TrainState, data_position: int, force: bool = False) -> bool:
    """Saves if `step` is a save step (or `force`); async unless configured otherwise."""
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return False
    if not force and step % self.cfg.period:
      return False
    self._seal_finished()   # orbax waits for the previous save here anyway
    if jax.default_backend() == 'cpu':
      # On CPU orbax's "device to host" copy is a zero-copy view of the buffers, which the next
      # (donating) train step overwrites while the async write is still running; save a copy.
      state = jax.tree.map(lambda x: x.copy(), state)
    meta = {'step': step, 'data_position': int(data_position),
            'param_shapes': {k: list(v) for k, v in ts.param_shapes(state.params).items()}}
    saved = self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_to_dict(state)), meta=ocp.args.JsonSave(meta)),
                              force=True)
    if saved:
      self._unsealed.append(step)
    return saved

  def _seal_finished(self) -> None:
    """Waits for pending saves, then records the checksums of the steps this run committed."""
    if not self._unsealed:
      return
    self.manager.wait_until_finished()
    if self.cfg.checksums and jax.process_index() == 0:
      for step in self._unsealed:
        if os.path.isdir(self.step_dir(step)):    # not already dropped by keep-last-K
          integrity.seal(self.step_dir(step))
    self._unsealed = []

  def restore(self, abstract_state: ts.TrainState, step: Optional[int] = None
              ) -> tuple[ts.TrainState, dict[str, Any]]:
    """Restores `step` (default: the latest, or with `fallback_to_intact` the newest intact one)
    onto the shardings of `abstract_state`. Damaged newer steps are moved aside, not deleted."""
    if step is not None:
      return self._restore_step(abstract_state, step)
    failures, damaged = [], []
    for candidate in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self._restore_step(abstract_state, candidate)
      except CorruptCheckpointError as e:
        if not self.cfg.fallback_to_intact:
          raise
        failures.append(str(e))
        damaged.append(candidate)
        continue
      if damaged:
        moved = self._move_aside(damaged)
        _warn_fallback(failures, self.step_dir(candidate), 'moved to ' + ', '.join(moved))
      return restored
    raise CorruptCheckpointError(f'no intact checkpoint in {self.directory}: '
                                 + ('; '.join(failures) or 'no steps'))

  def _restore_step(self, abstract_state: ts.TrainState, step: int
                    ) -> tuple[ts.TrainState, dict[str, Any]]:
    _check_intact(self.step_dir(step))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(state_to_dict(abstract_state)),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise _unreadable(self.step_dir(step), e) from e
    leaves = jax.tree.leaves(restored['state'])
    treedef = jax.tree.structure(state_to_dict(abstract_state))
    return ts.TrainState(**jax.tree.unflatten(treedef, leaves)), dict(restored['meta'])

  def _move_aside(self, steps: list[int]) -> list[str]:
    """Moves damaged steps to MODEL_DIR/checkpoints_corrupt/ (so this run can save those steps
    again and keep-last-K never counts them); returns where they went."""
    parent = os.path.join(os.path.dirname(self.directory), CORRUPT_SUBDIR)
    moved = []
    for step in steps:
      dest = os.path.join(parent, str(step))
      n = 1
      while os.path.exists(dest):
        dest, n = os.path.join(parent, f'{step}.{n}'), n + 1
      moved.append(dest)
      if jax.process_index() == 0:
        os.makedirs(parent, exist_ok=True)
        os.rename(self.step_dir(step), dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('moe_flan_checkpoints_moved_aside')
    self.manager.reload()
    return moved

  def wait(self) -> None:
    self.manager.wait_until_finished()
    self._seal_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self._seal_finished()
    self.manager.close()


def _layout_hint(expected: dict[str, tuple], loaded: dict[str, Any]) -> str:
  """Why the params cannot match when the model scans its layers and the checkpoint does not
  (or the other way round), and how to convert them."""
  scanned = lambda keys: any(k.split('/')[1:2] == ['layers'] for k in keys)
  if scanned(expected) == scanned(loaded):
    return ''
  which = 'model' if scanned(expected) else 'checkpoint'
  return (f' (the {which} scans its layers, T5Config.scan_layers; convert the checkpoint with '
          'moe_flan.model.scan.scan_params / unscan_params)')


def restore_initial_params(cfg: CheckpointConfig, fresh_params: Any) -> Any:
  """`fresh_params` (unboxed, sharded) with values loaded from `cfg.initial_checkpoint_path`."""
  return restore_params(cfg, fresh_params)[0]


def restore_params(cfg: CheckpointConfig, fresh_params: Any) -> tuple[Any, str]:
  """(`fresh_params` with values loaded from `cfg.initial_checkpoint_path`, the step directory
  they came from: the newest, or the newest intact one with `fallback_to_intact`).

  Shapes must match exactly; a param missing from the checkpoint is an error unless
  `allow_missing_params`. With `upcycle_from_dense`, dense MLPs are copied into the experts first.
  """
  step_dir, loaded = load_params_from(cfg.initial_checkpoint_path, cfg.fallback_to_intact)
  expected = ts.param_shapes(fresh_params)
  if cfg.upcycle_from_dense:
    loaded = upcycling.upcycle_flat(loaded, expected)
  fresh_ok = set(upcycling.missing_after_upcycling(expected)) if cfg.upcycle_from_dense else set()
  bad = [m for m in shape_mismatches(expected, {k: v.shape for k, v in loaded.items()})
         if not m.endswith('not in model')
         and not (m.endswith('missing in checkpoint')
                  and (cfg.allow_missing_params or m.split(':')[0] in fresh_ok))]
  if bad:
    raise ValueError(f'initial checkpoint {cfg.initial_checkpoint_path!r} does not fit the model'
                     f'{_layout_hint(expected, loaded)}:\n  ' + '\n  '.join(bad))
  flat = flax.traverse_util.flatten_dict(fresh_params, sep='/')
  out = {}
  for k, v in flat.items():
    if k in loaded:
      out[k] = jax.device_put(np.asarray(loaded[k], v.dtype), v.sharding)
    else:
      out[k] = v
  return flax.traverse_util.unflatten_dict(out, sep='/'), step_dir
