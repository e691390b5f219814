"""The train state: everything that must be saved for an exact resume (except the data position,
which is `step` batches, recorded beside it in the checkpoint)."""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
  """step <int32>[], params, opt_state, rng <uint32>[2] (the run's base key; step keys fold in)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def dummy_batch(batch_size: int, feature_lengths: dict[str, int]) -> dict[str, np.ndarray]:
  """All-ones int32 model inputs of the given lengths ('inputs', 'targets')."""
  li, lt = feature_lengths['inputs'], feature_lengths['targets']
  ones = lambda n: np.ones((batch_size, n), np.int32)
  return {'encoder_input_tokens': ones(li), 'decoder_input_tokens': ones(lt),
          'decoder_target_tokens': ones(lt)}


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
  """The keyword arguments of EncoderDecoder.__call__ present in `batch`."""
  names = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
           'encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions', 'decoder_positions')
  return {k: batch[k] for k in names if k in batch}


def init_params_fn(model: nn.Module, feature_lengths: dict[str, int],
                   batch_size: int = 1) -> Callable:
  """rng -> boxed params (logically partitioned); abstract-evaluable for shapes and shardings.

  The params do not depend on `batch_size` (the rows of the dummy batch the model is traced
  with), but an MoE dispatcher picks its path from the routing groups the batch makes: the
  training batch size traces the path training runs (the 'expert_parallel' dispatcher's
  all-to-all, not its fallback for groups that do not divide). Under jit the forward pass is
  dead code: only the parameter initialisers are computed."""
  batch = dummy_batch(batch_size, feature_lengths)

  def init(rng):
    variables = model.init({'params': rng, 'dropout': rng}, **model_inputs(batch),
                           enable_dropout=False)
    return variables['params']

  return init


def abstract_params(model: nn.Module, feature_lengths: dict[str, int], seed: int = 0) -> Any:
  """Boxed ShapeDtypeStructs of the params (no compute: even the key is abstract, so this also
  works under a mesh of compile-only devices, e.g. a TPU topology on a CPU host)."""
  init = init_params_fn(model, feature_lengths)
  return jax.eval_shape(lambda: init(jax.random.PRNGKey(seed)))


def new_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """A step-0 state around unboxed `params`."""
  params = nn.meta.unbox(params)
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng)


def param_shapes(params: Any) -> dict[str, tuple[int, ...]]:
  """'a/b/c' -> shape, for messages about mismatched checkpoints."""
  flat = flax.traverse_util.flatten_dict(nn.meta.unbox(params), sep='/')
  return {k: tuple(v.shape) for k, v in flat.items()}


