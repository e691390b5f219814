"""Gradient buffers kept from one step to the next: on by default on the CPU backend.

Why: XLA:CPU allocates every output and temporary buffer of a jitted call afresh on each call,
through the C heap. glibc serves blocks above its mmap threshold (at most 32 MiB) from fresh
`mmap`s and unmaps them on free, so the kernel zero-fills every 4 KiB page of them again on every
step. Parameter gradients are such blocks: one MoE layer's expert kernels at E=128, d_model 512,
d_ff 2048 have 1 GiB of gradients. `ReusedGradientBuffers` returns each call's gradients as outputs
that alias the previous call's gradients (donated), so XLA writes them into memory that is
already mapped -- as PyTorch can keep a parameter's `.grad` from step to step. Measured on a
2-core VM (BENCHMARKS.md, cases 1, 2 and 5): the E=128 MoE layer's forward + backward 565 ->
415 ms, the HF-Switch-config E=128 model's 1.52 -> 0.99 s, its E=8 twin's 831 -> 794 ms.

Why not on accelerators: their allocators already keep freed device memory, and gradients that
are outputs stay allocated for the whole step instead of from the backward pass on, which raises
the peak.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp


def reuse_by_default() -> bool:
  """Whether the trainer keeps gradient buffers when the run does not say (the CPU backend)."""
  return jax.default_backend() == 'cpu'


class ReusedGradientBuffers:
  """`fn(*args) -> (result, grads)`, jitted so that each call writes `grads` into the buffers of
  the previous call's `grads`.

  The first call allocates zero buffers of the gradients' shapes (from `jax.eval_shape`).
  Calling returns `(result, grads)`; `grads` stay valid until the next call, which donates them.

  in_shardings / out_shardings: as for `jax.jit` of `fn`, for `args` and for `result` only;
  grad_shardings: the gradients' shardings (both are left to XLA when None).
  donate_argnums: arguments of `fn` that are donated too (e.g. the train state).
  """

  def __init__(self, fn: Callable[..., tuple[Any, Any]], in_shardings: Optional[Any] = None,
               out_shardings: Optional[Any] = None, grad_shardings: Optional[Any] = None,
               donate_argnums: Sequence[int] = ()):
    def with_previous_grads(previous_grads, *args):
      del previous_grads   # donated: its buffers receive this call's gradients
      result, grads = fn(*args)
      # jit pairs each output, in order, with the first unused donated input of its shape. With
      # the gradients first among both, they take the previous gradients' buffers and a
      # donated state keeps its own. Paired with the old params instead, the new gradients
      # would overwrite params that the backward pass still reads, and XLA would add copies.
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

  def _zero_grads(self, args: tuple) -> Any:
    abstract = jax.eval_shape(self._fn, *args)[1]
    zeros = lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
    return jax.jit(zeros, out_shardings=self._grad_shardings)()

  def __call__(self, *args) -> tuple[Any, Any]:
    if self._grads is None:
      self._grads = self._zero_grads(args)
    self._grads, result = self._jitted(self._grads, *args)
    return result, self._grads

  def lower(self, *args):
    """`jax.jit(...).lower` of the wrapped call, for its compiled memory analysis."""
    grads = self._grads if self._grads is not None else jax.eval_shape(self._fn, *args)[1]
    return self._jitted.lower(grads, *args)


def jit_train_step(make_step: Callable[[bool], Callable], reuse: Optional[bool] = None,
                   in_shardings: Optional[Any] = None, out_shardings: Optional[Any] = None,
                   grad_shardings: Optional[Any] = None) -> Callable:
  """(state, batch) -> (state, metrics), jitted with the state donated.

  make_step(return_grads): the unjitted step (`train_step.make_train_step`); with return_grads
  it returns ((state, metrics), grads). reuse: keep gradient buffers across calls (None:
  `reuse_by_default()`). Shardings as for `jax.jit` of (state, batch) -> (state, metrics).
  """
  reuse = reuse_by_default() if reuse is None else reuse
  if not reuse:
    shardings = {k: v for k, v in (('in_shardings', in_shardings),
                                   ('out_shardings', out_shardings)) if v is not None}
    return jax.jit(make_step(False), donate_argnums=(0,), **shardings)
  buffered = ReusedGradientBuffers(make_step(True), in_shardings, out_shardings, grad_shardings,
                                   donate_argnums=(0,))
  return lambda state, batch: buffered(state, batch)[0]
