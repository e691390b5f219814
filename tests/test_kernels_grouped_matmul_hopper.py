"""The Hopper grouped-matmul path agrees with jax.lax.ragged_dot (its slow reference twin).

On CPU the forward and input-gradient kernels run in Mosaic GPU's interpreter. The interpreter
cannot run the weight-gradient kernel (it reads a transposed shared-memory view), so on CPU
that kernel is replaced by its reference to check the VJP around it, and the real one is
checked by `test_on_a_hopper_gpu_every_kernel_matches_ragged_dot`, which runs only on a
compute-capability-9 GPU.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan.kernels import grouped_matmul as gm
from moe_flan.kernels import grouped_matmul_hopper as gh

ON_CPU = jax.default_backend() == 'cpu'
cpu_only = pytest.mark.skipif(not ON_CPU, reason='checks the interpreter and the CPU errors')
SMALL = gh.Blocks(block_m=64, block_n=64, block_k=64, max_concurrent_steps=2)
# rows, K, N, group sizes: an empty group, a group spanning tiles, rows past the last group.
SIZES = (200, 128, 192, (70, 0, 40, 60))


def _inputs(m, k, n, sizes, dtype=jnp.bfloat16):
  kx, kw, kc = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(kx, (m, k), dtype)
  w = jax.random.normal(kw, (len(sizes), k, n), dtype)
  cot = jax.random.normal(kc, (m, n), jnp.float32)
  return x, w, jnp.asarray(sizes, jnp.int32), cot


def _value_and_grads(matmul, x, w, sizes, cot):
  def loss(x, w):
    return jnp.sum(matmul(x, w, sizes).astype(jnp.float32) * cot)
  out = matmul(x, w, sizes)
  return (out,) + jax.grad(loss, (0, 1))(x, w)


def _reference(x, w, sizes, cot):
  """ragged_dot in float32 on the same (bf16-rounded) operands."""
  return _value_and_grads(jax.lax.ragged_dot, x.astype(jnp.float32), w.astype(jnp.float32),
                          sizes, cot)


def _assert_close(got, want, sizes):
  names = ('output', 'd_x', 'd_w')
  for name, g, r in zip(names, got, want):
    g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
    assert g.shape == r.shape and np.isfinite(g).all(), name
    # bfloat16 keeps 8 bits: compare against the reference's scale.
    np.testing.assert_allclose(g, r, atol=2e-2 * np.abs(r).max(), err_msg=name)
  total = int(np.sum(sizes))
  assert not np.asarray(got[0], np.float32)[total:].any(), 'rows past the last group'
  assert not np.asarray(got[1], np.float32)[total:].any(), 'd_x rows past the last group'


def _weight_grad_reference(x, dy, sizes, blocks):
  del blocks
  dims = jax.lax.RaggedDotDimensionNumbers(
      dot_dimension_numbers=(((0,), (0,)), ((), ())), lhs_ragged_dimensions=[0],
      rhs_group_dimensions=[])
  return jax.lax.ragged_dot_general(x, dy, sizes, dims)


@pytest.fixture
def interpreted(monkeypatch):
  """Every Mosaic GPU kernel runs in the CPU interpreter; the weight-gradient kernel, which it
  cannot run, is its reference."""
  from jax._src.interpreters import mlir
  from jax._src.pallas.mosaic_gpu import core as gpu_core
  from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
  from jax.experimental.pallas import mosaic_gpu as plgpu
  # A layout cast is a register-layout hint, the identity on values; the interpreter has no
  # CPU rule for it.
  mlir.register_lowering(gpu_core.layout_cast_p, lambda ctx, x, **_: [x], platform='cpu')
  monkeypatch.setattr(plgpu, 'kernel',
                      functools.partial(plgpu.kernel, interpret=InterpretGPUParams()))
  monkeypatch.setattr(gh, '_tn', _weight_grad_reference)


@cpu_only
def test_interpreted_kernels_match_ragged_dot(interpreted):
  x, w, sizes, cot = _inputs(*SIZES)
  got = _value_and_grads(
      lambda a, b, s: gh.hopper_grouped_matmul(a, b, s, SMALL, check_device=False),
      x, w, sizes, cot)
  _assert_close(got, _reference(x, w, sizes, cot), sizes)


@cpu_only
def test_unsupported_calls_say_why():
  x, w, sizes, _ = _inputs(*SIZES)
  assert 'not a GPU' in gh.unsupported_reason(x, w)
  assert 'bfloat16 or float16' in gh.unsupported_reason(x.astype(jnp.float32),
                                                         w.astype(jnp.float32), SMALL, False)
  assert 'N=192 is not a multiple of the forward tile 128' in gh.unsupported_reason(x, w,
                                                                            check_device=False)
  assert gh.unsupported_reason(x, w, SMALL, check_device=False) is None
  with pytest.raises(ValueError, match='hopper_grouped_matmul: .*not a GPU'):
    gh.hopper_grouped_matmul(x, w, sizes)


def test_grid_blocking_divides_the_output_tiles():
  assert gh._grid_block_n(2048, 128) == 8 and gh._grid_block_n(768, 128) == 2
  assert gh._grid_block_n(192, 64) == 1


@pytest.mark.skipif(not str(getattr(jax.devices()[0], 'compute_capability', '')).startswith('9'),
                    reason='needs a Hopper GPU (compute capability 9.x)')
def test_on_a_hopper_gpu_every_kernel_matches_ragged_dot():
  """The three kernels on the chip, at the default tiles and a Switch-base expert's sizes."""
  x, w, sizes, cot = _inputs(4096, 768, 2048, (1000, 0, 37, 2059, 900))
  got = _value_and_grads(gh.hopper_grouped_matmul, x, w, sizes, cot)
  _assert_close(got, _reference(x, w, sizes, cot), sizes)
  through_config = _value_and_grads(
      lambda a, b, s: gm.grouped_matmul(a, b, s, implementation='mosaic_gpu'), x, w, sizes, cot)
  _assert_close(through_config, _reference(x, w, sizes, cot), sizes)


@cpu_only
def test_a_layer_configured_for_hopper_kernels_says_why_it_cannot_run_here():
  from moe_flan.config import MoeConfig
  from moe_flan.moe import MoeLayer
  with pytest.raises(ValueError, match='MoeConfig.grouped_matmul'):
    MoeConfig(grouped_matmul='cutlass')
  cfg = MoeConfig(num_experts=4, dispatch='dropless', grouped_matmul='mosaic_gpu',
                  expert_mlp_dim=128)
  layer = MoeLayer(cfg, 64, 'tokens_choose', 1, dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match=r"MoeConfig.grouped_matmul='mosaic_gpu' cannot run .*"
                                       r"not a GPU"):
    layer.init({'params': jax.random.key(0)}, jnp.ones((1, 64, 64), jnp.bfloat16))
