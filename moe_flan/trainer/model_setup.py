"""The model side of a run: partitioner, model, abstract params and their shardings, eval step.

    setup = build_model_setup(config)               # nothing is compiled or allocated
    params, step_dir = setup.restore_params('/tmp/run')   # any checkpoint path, on the mesh
    metrics = setup.mean_metrics(params, data_cfg, num_batches=4)

Training (`builder.build`) adds the optimizer, train state and checkpointer on top of this;
evaluation and inference use it alone, so restoring params for them never builds an optimizer.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import numpy as np

from moe_flan import config as config_lib
from moe_flan.kernels import grouped_matmul
from moe_flan.model import EncoderDecoder, abstract_params
from moe_flan.moe import check_config
from moe_flan.partitioning import partitioner as part_lib
from moe_flan.trainer import checkpoints as ckpt_lib
from moe_flan.trainer import data as data_lib
from moe_flan.trainer import train_step as step_lib


@dataclasses.dataclass
class ModelSetup:
  """A model on a mesh, ready to take params.

  abstract_params: unboxed ShapeDtypeStructs carrying their NamedShardings.
  param_shardings: the same tree of NamedShardings (jit in/out shardings).
  """
  config: config_lib.T5Config
  partitioner: part_lib.Partitioner
  model: nn.Module
  abstract_params: Any
  param_shardings: Any
  _eval_step: Optional[Callable] = None

  def restore_params(self, path: str) -> tuple[Any, str]:
    """(params of the checkpoint at `path` placed with `param_shardings`, its step directory).

    `path` is a trainer MODEL_DIR (its latest step; an earlier intact one, with a warning, if
    that is damaged), its checkpoints/ directory, one step directory, or a directory written by
    `python -m moe_flan.convert`. Every param of the model must be in the checkpoint with the
    same shape (a ValueError lists the differences).
    """
    return ckpt_lib.restore_params(ckpt_lib.CheckpointConfig(initial_checkpoint_path=path),
                                   self.abstract_params)

  def eval_step(self) -> Callable:
    """(params, sharded batch) -> metrics, jitted once (eval mode: no dropout, eval capacity)."""
    if self._eval_step is None:
      step = step_lib.make_eval_step(self.model, self.config)
      self._eval_step = jax.jit(step, in_shardings=(self.param_shardings,
                                                    self.partitioner.data_sharding))
    return self._eval_step

  def mean_metrics(self, params: Any, cfg: data_lib.DataConfig, num_batches: int
                   ) -> dict[str, Any]:
    """Token-weighted mean of the eval-step metrics over `num_batches` batches of `cfg`."""
    shard_id, num_shards = self.partitioner.data_shard_info()
    it = data_lib.batches(cfg, shard_id, num_shards, repeat=True, shuffle=False)
    step = self.eval_step()
    totals: dict[str, float] = {}
    weight_sum = 0.0
    for _ in range(num_batches):
      batch = self.partitioner.shard_batch(next(it), cfg.batch_size)
      with self.partitioner.activate():
        m = jax.device_get(step(params, batch))
      w = float(m['num_tokens'])
      weight_sum += w
      for k, v in m.items():
        if np.ndim(v) == 0 and k not in ('num_tokens', 'weight_sum'):   # counts, not means
          totals[k] = totals.get(k, 0.0) + float(v) * w
    out = {k: v / max(weight_sum, 1.0) for k, v in totals.items()}
    out['num_tokens'] = weight_sum
    return out


def make_model(config: config_lib.T5Config) -> nn.Module:
  """`EncoderDecoder(config)`, with an opt-in C++ grouped matmul of its MoE layers built now
  (`grouped_matmul.prepare`), never while tracing."""
  if config.moe is not None:
    grouped_matmul.prepare(config.moe.grouped_matmul)
  return EncoderDecoder(config)


def build_model_setup(config: config_lib.T5Config,
                      partitioner: Optional[part_lib.Partitioner] = None) -> ModelSetup:
  """The model of `config` on `partitioner` (default: the gin-bound mesh and rules).

  Checks the MoE router and dispatcher names first; nothing is compiled or allocated.
  """
  if config.moe is not None:
    check_config(config.moe)
  partitioner = partitioner or part_lib.create_partitioner()
  boxed = abstract_params(config)
  shardings = partitioner.shardings(boxed)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nn.meta.unbox(boxed), shardings)
  return ModelSetup(config, partitioner, make_model(config), params, shardings)
