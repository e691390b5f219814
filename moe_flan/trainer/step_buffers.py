"""Step buffers kept from one train step to the next: an opt-in for XLA:CPU.

Off by default (`OptimizerConfig.reuse_step_buffers`): the default train step is one jitted call
with the train state donated, the same on every backend.

Why it exists: XLA:CPU allocates every output and temporary buffer of a jitted call afresh on
each call, through the C heap. glibc serves blocks above its mmap threshold (at most 32 MiB)
from fresh `mmap`s and unmaps them on free, so the kernel zero-fills every 4 KiB page of them
again on every step. A MoE model's parameter-sized buffers are such blocks (one MoE layer's
expert kernels at E=128, d_model 512, d_ff 2048 hold 1 GiB, and so do their gradients). Two
things avoid it:

- `ReusedGradientBuffers`: each call's gradients are outputs that alias the previous call's
  gradients (donated), so XLA writes them into memory that is already mapped -- as PyTorch can
  keep a parameter's `.grad` from step to step.
- `jit_train_step(reuse=True)` also double-buffers the train state: step n reads state n without
  donating it and writes state n+1 into the buffers of state n-1. A donated state is updated in
  place, and XLA:CPU may then copy parameters into fresh temporaries first (the backward pass
  still reads the old values after some updates could run); reading one buffer and writing
  another needs neither.

It pays off for large expert weights on CPU (`python -m benchmarks.run --cases step_buffers`
times it against the donated state). The cost: two train states and a set of gradients stay
allocated between steps, where a donated state and per-step temporaries use one state plus
peaks during the step. Accelerator allocators already keep freed device memory, and device
memory is the scarcer resource there, so it is of no use on them.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp


def _zeros_like(abstract: Any, shardings: Optional[Any]) -> Any:
  """Zeros of the shapes and dtypes of `abstract`'s leaves (arrays or ShapeDtypeStructs)."""
  zeros = lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
  return jax.jit(zeros, out_shardings=shardings)()


class ReusedGradientBuffers:
  """`fn(*args) -> (result, grads)`, jitted so that each call writes `grads` into the buffers of
  the previous call's `grads`.

  The first call allocates zero buffers of the gradients' shapes (from `jax.eval_shape`).
  Calling returns `(result, grads)`; `grads` stay valid until the next call, which donates them.

  in_shardings / out_shardings: as for `jax.jit` of `fn`, for `args` and for `result` only;
  grad_shardings: the gradients' shardings (both are left to XLA when None).
  donate_argnums: arguments of `fn` that are donated too. jit pairs each output, in order, with
  the first unused donated input of its shape: the gradients come first among the outputs, and
  a donated argument's buffers go to the first outputs of `result` of its shapes.
  """

  def __init__(self, fn: Callable[..., tuple[Any, Any]], in_shardings: Optional[Any] = None,
               out_shardings: Optional[Any] = None, grad_shardings: Optional[Any] = None,
               donate_argnums: Sequence[int] = ()):
    def with_previous_grads(previous_grads, *args):
      del previous_grads   # donated: its buffers receive this call's gradients
      result, grads = fn(*args)
      # Gradients first among inputs and outputs, so that they take the previous gradients'
      # buffers (see the class doc on the pairing).
      return grads, result

    shardings = {}
    if in_shardings is not None:
      shardings['in_shardings'] = (grad_shardings,) + tuple(in_shardings)
    if out_shardings is not None:
      shardings['out_shardings'] = (grad_shardings, out_shardings)
    self._fn = fn
    self._grad_shardings = grad_shardings
    # keep_unused: jit would otherwise drop the unread argument, and with it the donation.
    self._jitted = jax.jit(with_previous_grads, keep_unused=True,
                           donate_argnums=(0,) + tuple(i + 1 for i in donate_argnums),
                           **shardings)
    self._grads = None

  def __call__(self, *args) -> tuple[Any, Any]:
    if self._grads is None:
      self._grads = _zeros_like(jax.eval_shape(self._fn, *args)[1], self._grad_shardings)
    self._grads, result = self._jitted(self._grads, *args)
    return result, self._grads

  def lower(self, *args):
    """`jax.jit(...).lower` of the wrapped call, for its compiled memory analysis."""
    grads = self._grads if self._grads is not None else jax.eval_shape(self._fn, *args)[1]
    return self._jitted.lower(grads, *args)


def jit_train_step(make_step: Callable[[bool], Callable], reuse: bool = False,
                   in_shardings: Optional[Any] = None, out_shardings: Optional[Any] = None,
                   grad_shardings: Optional[Any] = None) -> Callable:
  """(state, batch, *constants) -> (state, metrics), jitted.

  make_step(return_grads): the unjitted step (`train_step.make_train_step`); with return_grads
  it returns ((state, metrics), grads). Shardings as for `jax.jit` of (state, batch,
  *constants) -> (state, metrics); grad_shardings: the params'. `constants` (a distillation
  teacher's params) are read, never donated.

  reuse False (the default): one jitted call, the state donated. reuse True: the new state goes
  into the buffers of the state before last and the gradients into the previous step's (module
  doc), so the state passed to one call is donated by the next call.
  Either way the result has `.lower(state, batch)` (abstract arguments are fine).
  """
  if not reuse:
    shardings = {k: v for k, v in (('in_shardings', in_shardings),
                                   ('out_shardings', out_shardings)) if v is not None}
    return jax.jit(make_step(False), donate_argnums=(0,), **shardings)
  step_with_grads = make_step(True)

  def into_spare(spare_state, state, batch, *constants):
    del spare_state   # donated: its buffers receive the new state
    return step_with_grads(state, batch, *constants)

  state_shardings = None if in_shardings is None else in_shardings[0]
  buffered = ReusedGradientBuffers(
      into_spare, None if in_shardings is None else (state_shardings,) + tuple(in_shardings),
      out_shardings, grad_shardings, donate_argnums=(0,))
  spare = []

  def step(state, batch, *constants):
    if not spare:
      spare.append(_zeros_like(state, state_shardings))
    (new_state, metrics), _ = buffered(spare.pop(), state, batch, *constants)
    spare.append(state)
    return new_state, metrics
  # What jax.jit(...).lower gives for the other branch: the compiled call of one step, whose
  # memory analysis counts the spare state and kept gradients it is handed.
  step.lower = lambda state, batch, *constants: buffered.lower(state, state, batch, *constants)
  return step
