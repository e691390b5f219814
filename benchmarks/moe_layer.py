"""The moe_layer case: one MoE layer, forward + backward, per dispatch path, vs a dense FFN of equal active
FLOPs per token, timed side by side in one process.

Shapes (full): 4096 tokens (one routing group), d_model 512, expert d_ff 2048, ReLU experts,
train capacity factor 1.25, float32, E in {8, 32, 128}, k in {1, 2}; plus experts-choose.
The dense twin has d_ff = F * k for tokens-choose (each token runs k experts) and
F * capacity_factor * k for experts-choose (every expert fills all its C = cf * k * T / E slots).
"Forward + backward" is a VJP with a fixed random cotangent, giving gradients for the input and
every parameter (router included), plus the layer's output: exactly what a train step needs
from the layer (`forward_backward`). Every candidate writes its gradients into the buffers of
its previous call's gradients (the trainer's CPU opt-in, step_buffers). Returning only
the gradients would let XLA drop the dense twin's second forward matmul (its output feeds
nothing), while the MoE layer needs its experts' output for the gate gradients: 5 of the 6
counted matmuls against 6.

'segmented' and 'dropless' run the default MoeConfig.grouped_matmul ('auto': per-expert loops
of XLA matmuls on CPU, not `jax.lax.ragged_dot`, whose CPU fallback computes all E experts for
every row; ragged_dot on GPU, which XLA expands the same way on NVIDIA chips). The CPU suite
adds 'segmented cpu_ffi' and 'dropless cpu_ffi', the same dispatchers on the opt-in C++ kernels
(moe_flan/kernels/grouped_matmul_cpu.py); the GPU suite adds 'segmented mosaic_gpu' and
'dropless mosaic_gpu', on JAX's Hopper grouped-matmul kernels.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from benchmarks import context as ctx_lib
from benchmarks import dispatch_choice
from benchmarks import targets
from benchmarks import timing
from moe_flan.config import MoeConfig
from moe_flan.moe import MoeLayer
from moe_flan.trainer import step_buffers

CASE = 'moe_layer'
DISPATCHES = ('einsum', 'scatter', 'segmented', 'dropless')
EC_DISPATCHES = ('einsum', 'scatter', 'segmented')
CPU_DISPATCHES = ('segmented cpu_ffi', 'dropless cpu_ffi')         # CPU suite only
GPU_DISPATCHES = ('segmented mosaic_gpu', 'dropless mosaic_gpu')   # GPU suite only
MATMUL_FLOOR = targets.MATMUL_FLOOR   # not a dispatcher: see expert_matmuls_step


@dataclasses.dataclass(frozen=True)
class Shapes:
  tokens: int
  d_model: int
  d_ff: int
  experts: tuple
  top_k: tuple
  capacity_factor: float = 1.25


FULL = Shapes(tokens=4096, d_model=512, d_ff=2048, experts=(8, 32, 128), top_k=(1, 2))
QUICK = Shapes(tokens=256, d_model=32, d_ff=64, experts=(8,), top_k=(1,))   # CI: compile-bound


def forward_backward(fn: Callable[..., jax.Array],
                     cotangent: jax.Array) -> step_buffers.ReusedGradientBuffers:
  """Jitted (*args) -> (fn(*args), gradients of <fn(*args), cotangent> for every arg).

  Each call writes its gradients into the previous call's gradient buffers, as the trainer does
  with reuse_step_buffers (moe_flan/trainer/step_buffers.py); the output is a fresh buffer.
  """
  def step(*args):
    y, vjp = jax.vjp(fn, *args)
    return y, vjp(cotangent)
  return step_buffers.ReusedGradientBuffers(step)


def dense_ffn_step(tokens: int, d_model: int, d_ff: int, dtype) -> Callable[[], jax.Array]:
  """Jitted output and VJP of relu(x @ wi) @ wo: x <[tokens, d_model]>, wi <[d_model, d_ff]>."""
  kx, ki, ko, kc = jax.random.split(jax.random.PRNGKey(1), 4)
  x = jax.random.normal(kx, (tokens, d_model), dtype)
  wi = jax.random.normal(ki, (d_model, d_ff), dtype) * d_model ** -0.5
  wo = jax.random.normal(ko, (d_ff, d_model), dtype) * d_ff ** -0.5
  cot = jax.random.normal(kc, (tokens, d_model), dtype)

  def ffn(wi, wo, x):
    return jax.nn.relu(x @ wi) @ wo

  step = forward_backward(ffn, cot)
  return lambda: step(wi, wo, x)


def expert_matmuls_step(tokens: int, d_model: int, d_ff: int, num_experts: int, rows: int,
                        dtype) -> Callable[[], jax.Array]:
  """Jitted output and VJP of the expert FFN alone: relu(x[e] @ wi[e]) @ wo[e] as batched
  einsums over <[E, rows, d_model]> -- exactly `rows` rows per expert, no router, no token
  movement.

  Not a dispatcher: the time any dispatch needs at least on this backend to push the routed rows
  through the experts' matmuls (thin matmuls when rows = tokens * k / E is small), measured in
  the same rounds as the dense twin. `tokens` only documents the shape the rows come from.
  """
  del tokens
  kx, ki, ko, kc = jax.random.split(jax.random.PRNGKey(3), 4)
  x = jax.random.normal(kx, (num_experts, rows, d_model), dtype)
  wi = jax.random.normal(ki, (num_experts, d_model, d_ff), dtype) * d_model ** -0.5
  wo = jax.random.normal(ko, (num_experts, d_ff, d_model), dtype) * d_ff ** -0.5
  cot = jax.random.normal(kc, x.shape, dtype)

  def ffn(wi, wo, x):
    return jnp.einsum('ECF,EFD->ECD', jax.nn.relu(jnp.einsum('ECD,EDF->ECF', x, wi)), wo)

  step = forward_backward(ffn, cot)
  return lambda: step(wi, wo, x)


def moe_layer_step(shapes: Shapes, num_experts: int, k: int, router_type: str, dispatch: str,
                   dtype) -> Callable[[], jax.Array]:
  """Jitted output and VJP (input and all params) of a training-mode MoeLayer on
  <[1, tokens, d_model]>."""
  cfg = dispatch_choice.with_dispatch(MoeConfig(
      num_experts=num_experts, num_selected_experts=k, router_type=router_type,
      decoder_router_type='tokens_choose', group_size=shapes.tokens, train_capacity_factor=shapes.capacity_factor,
      expert_mlp_dim=shapes.d_ff, expert_activations=('relu',)), dispatch)
  layer = MoeLayer(cfg, shapes.d_model, router_type, k, dtype=dtype)
  kx, kp, kc = jax.random.split(jax.random.PRNGKey(2), 3)
  x = jax.random.normal(kx, (1, shapes.tokens, shapes.d_model), dtype)
  cot = jax.random.normal(kc, x.shape, dtype)
  params = jax.jit(layer.init)({'params': kp, 'dropout': kp}, x)['params']

  def forward(p, x):
    # enable_dropout=True: training capacity factor; no jitter or dropout is configured.
    y, _ = layer.apply({'params': p}, x, None, True, rngs={'dropout': kc},
                       mutable=['moe_metrics'])
    return y

  step = forward_backward(forward, cot)
  return lambda: step(params, x)


def memory_floor_ratio(shapes: Shapes, num_experts: int, dense_time_s: float,
                       bytes_per_s: float) -> float:
  """Lower bound on (MoE layer time / dense time) from expert-weight traffic alone.

  Forward and backward each read every expert's weights, and the backward writes their
  gradients: 3 * E * 2 * D * F floats that the dense twin (one D x kF pair) barely touches.
  With the dense time as the compute floor, the MoE layer needs at least
  dense + (moved bytes - dense bytes) / bandwidth -- an estimate (overlap could hide some).
  """
  moe_bytes = 3 * num_experts * 2 * shapes.d_model * shapes.d_ff * 4
  dense_bytes = 3 * 2 * shapes.d_model * shapes.d_ff * 4
  return 1.0 + (moe_bytes - dense_bytes) / bytes_per_s / dense_time_s


def _compare(ctx: ctx_lib.Context, name: str, candidates: dict, params: dict,
             flops: float) -> list[dict]:
  """Warms up each candidate (dropping the ones that fail), then times them round-robin."""
  rows, ready = [], {}
  for variant, build in candidates.items():
    try:
      fn = build()
      timing.block(fn())
      ready[variant] = fn
    except Exception as e:  # noqa: BLE001  (e.g. out of memory: record it, keep going)
      ctx.log(f'{name} {variant} failed: {type(e).__name__}: {e}'[:300])
      rows.append(ctx_lib.record(CASE, name, variant, status='failed', params=params,
                                 reason=f'{type(e).__name__}: {str(e)[:200]}'))
  if 'dense' not in ready:
    return rows
  comparison = timing.compare(ready, baseline='dense', repeats=ctx.repeats, warmup=0)
  metrics = {v: {'active_flops_per_s': flops / t.median_s} for v, t in comparison.timings.items()}
  if 'bytes_per_s' in ctx.peak:
    metrics['dense']['memory_floor_ratio_estimate'] = memory_floor_ratio(
        QUICK if ctx.quick else FULL, params['num_experts'], comparison.timings['dense'].median_s,
        ctx.peak['bytes_per_s'])
  rows = ctx_lib.comparison_records(CASE, name, comparison, params, metrics) + rows
  best = min((v for v in ready if v not in targets.REFERENCES),
             key=lambda v: comparison.ratios[v].median_s,
             default=None)
  ctx.log(f'{name}: ' + ', '.join(f'{v} {comparison.ratios[v].median_s:.2f}x' for v in ready)
          + (f' (best {best})' if best else ''))
  return rows


def run(ctx: ctx_lib.Context) -> list[dict]:
  shapes = QUICK if ctx.quick else FULL
  dtype = jnp.dtype(ctx.dtype)
  rows = []
  routings = [('tokens_choose', shapes.top_k), ('experts_choose', (1,))]
  for router_type, ks in routings[:1] if ctx.quick else routings:
    for e in shapes.experts:
      for k in ks:
        ec = router_type == 'experts_choose'
        dense_ff = int(round(shapes.d_ff * k * (shapes.capacity_factor if ec else 1)))
        name = f'{"EC" if ec else "top-" + str(k)} E={e}'
        params = dict(tokens=shapes.tokens, d_model=shapes.d_model, d_ff=shapes.d_ff,
                      num_experts=e, k=k, router_type=router_type, dense_d_ff=dense_ff,
                      capacity_factor=shapes.capacity_factor, dtype=ctx.dtype)
        candidates = {'dense': lambda f=dense_ff: dense_ffn_step(shapes.tokens, shapes.d_model,
                                                                  f, dtype)}
        # Rows per expert: the routed share (tokens-choose, balanced) or every slot (EC).
        expert_rows = (int(round(shapes.tokens * k * shapes.capacity_factor / e)) if ec
                       else shapes.tokens * k // e)
        candidates[MATMUL_FLOOR] = (lambda e=e, r=expert_rows: expert_matmuls_step(
            shapes.tokens, shapes.d_model, shapes.d_ff, e, r, dtype))
        extra = {'gpu': GPU_DISPATCHES, 'cpu': CPU_DISPATCHES}.get(ctx.suite, ())
        base = EC_DISPATCHES if ec else DISPATCHES
        for dispatch in base + tuple(d for d in extra if d.split(' ')[0] in base):
          candidates[dispatch] = (lambda d=dispatch, e=e, k=k, r=router_type:
                                  moe_layer_step(shapes, e, k, r, d, dtype))
        flops = 6.0 * shapes.tokens * shapes.d_model * dense_ff * 2   # fwd+bwd of both matmuls
        rows += _compare(ctx, name, candidates, params, flops)
  return rows
