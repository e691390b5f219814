"""Each product of the expert FFN on the opt-in C++ grouped-matmul kernels vs one dense matmul (CPU).

The six products of an expert FFN's forward and backward are three kernels on two weight
shapes: `nn` (x @ w[g], forward), `nt` (dy @ w[g]^T, input gradient) and `tn`
(x[g]^T @ dy[g], weight gradient), with w [E, D, F] (wi) and [E, F, D] (wo). For 4096 tokens
split evenly over E experts, each is timed round-robin against the dense matmul of the same
FLOPs (XLA, one [4096, .] x [., .] product) and against XLA's expert-batched einsum on
<[E, 4096 / E, .]> (what the 'expert matmuls alone' floor of the moe_layer case uses).

`kernel_routed` runs the same kernel on uneven group sizes, as a uniformly random router
produces them (`routed_sizes`), with the same total rows.

Ratios are time / dense: below 1 the kernel is faster than XLA's dense matmul. The weight
gradient writes E times the dense output (fresh memory).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import context as ctx_lib
from benchmarks import timing
from moe_flan.kernels import grouped_matmul as gm
from moe_flan.kernels import grouped_matmul_cpu

CASE = 'grouped_matmul'
FULL = dict(tokens=4096, d_model=512, d_ff=2048, experts=(8, 128))
QUICK = dict(tokens=256, d_model=32, d_ff=64, experts=(8,))

# XLA's expert-batched einsum of each product (operands split per expert).
_EINSUMS = {'nn': 'ECK,EKN->ECN', 'nt': 'ECN,EKN->ECK', 'tn': 'ECK,ECN->EKN'}


def _operands(product: str, tokens: int, k: int, n: int, experts: int):
  ka, kb = jax.random.split(jax.random.PRNGKey(5))
  if product == 'nn':
    return (jax.random.normal(ka, (tokens, k)), jax.random.normal(kb, (experts, k, n)))
  if product == 'nt':
    return (jax.random.normal(ka, (tokens, n)), jax.random.normal(kb, (experts, k, n)))
  return (jax.random.normal(ka, (tokens, k)), jax.random.normal(kb, (tokens, n)))


def routed_sizes(tokens: int, experts: int, seed: int = 0) -> jax.Array:
  """<int32>[experts] rows per expert when each token goes to one uniformly random expert.

  Real routing is never balanced: at 4096 tokens and E=128 the sizes spread over ~20-45 rows
  around the mean of 32, and a kernel's paths for thin and deeper segments all run. The sizes sum
  to `tokens` (no capacity cap), so the FLOPs equal the dense matmul's.
  """
  expert_of_token = np.random.default_rng(seed).integers(0, experts, tokens)
  return jnp.asarray(np.bincount(expert_of_token, minlength=experts), jnp.int32)


def _candidates(product: str, a: jax.Array, b: jax.Array,
                experts: int) -> dict[str, Callable[[], jax.Array]]:
  tokens = a.shape[0]
  sizes = jnp.full((experts,), tokens // experts, jnp.int32)
  routed = routed_sizes(tokens, experts)
  kernel = {'nn': grouped_matmul_cpu.cpu_nn, 'nt': grouped_matmul_cpu.cpu_nt,
            'tn': grouped_matmul_cpu.cpu_tn}[product]
  dense = {'nn': lambda a, b: a @ b[0], 'nt': lambda a, b: a @ b[0].T,
           'tn': lambda a, b: a.T @ b}[product]
  per_expert = lambda t: t.reshape(experts, tokens // experts, t.shape[-1])
  batched_args = (per_expert(a), b if product != 'tn' else per_expert(b))
  fns = {'dense': (jax.jit(dense), (a, b)),
         'kernel': (jax.jit(lambda a, b: kernel(a, b, sizes)), (a, b)),
         'kernel_routed': (jax.jit(lambda a, b: kernel(a, b, routed)), (a, b)),
         'xla_batched': (jax.jit(lambda a, b: jnp.einsum(_EINSUMS[product], a, b)),
                         batched_args)}
  return {name: (lambda f=f, args=args: f(*args)) for name, (f, args) in fns.items()}


def run(ctx: ctx_lib.Context) -> list[dict]:
  if not gm.prepare('cpu_ffi'):
    return [ctx_lib.record(CASE, CASE, 'kernel', status='skipped',
                           reason='the C++ grouped-matmul kernels cannot run on this host')]
  shapes = QUICK if ctx.quick else FULL
  rows = []
  for experts in shapes['experts']:
    for k, n, weight in ((shapes['d_model'], shapes['d_ff'], 'wi'),
                         (shapes['d_ff'], shapes['d_model'], 'wo')):
      for product in ('nn', 'nt', 'tn'):
        name = f'{product} {weight} E={experts}'
        a, b = _operands(product, shapes['tokens'], k, n, experts)
        fns = _candidates(product, a, b, experts)
        for fn in fns.values():
          timing.block(fn())
        comparison = timing.compare(fns, baseline='dense', repeats=ctx.repeats, warmup=0)
        flops = 2.0 * shapes['tokens'] * k * n
        params = dict(tokens=shapes['tokens'], k=k, n=n, num_experts=experts, product=product)
        metrics = {v: {'flops_per_s': flops / t.median_s} for v, t in comparison.timings.items()}
        rows += ctx_lib.comparison_records(CASE, name, comparison, params, metrics)
        ctx.log(f'{name}: ' + ', '.join(f'{v} {r.median_s:.2f}x'
                                         for v, r in comparison.ratios.items()))
  return rows
