"""The CPU grouped-matmul kernels agree with jax.lax.ragged_dot (their slow reference twin)."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan.kernels import build
from moe_flan.kernels import grouped_matmul as gm

# (rows M, K, N, group sizes): odd widths (not multiples of the 16-lane vectors, 32-column
# panels or 8-row tiles), empty groups, rows past the last group, and groups deeper than one
# 128-deep panel (several accumulation passes in the forward and the weight gradient). The
# input gradient takes a different path at <= 32, <= 48, < 64 and >= 64 rows (each edge is
# here), and the packed one for any rows once N > 512.
CASES = [
    (37, 5, 7, (10, 0, 20)),
    (300, 70, 90, (33, 48, 49, 63, 32, 64)),
    (100, 20, 600, (10, 40, 33)),
    (100, 33, 65, (0, 40, 1, 0)),
    (300, 130, 257, (129, 0, 150, 20, 1)),
    (64, 17, 300, (64, 0)),
    (520, 200, 48, (260, 259)),
]


def _inputs(m, k, n, sizes, seed=0):
  kx, kw, kd = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (m, k))
  w = jax.random.normal(kw, (len(sizes), k, n))
  dy = jax.random.normal(kd, (m, n))
  return x, w, jnp.asarray(sizes, jnp.int32), dy


def _numpy_reference(x, w, sizes, dy):
  """Per-group float64 loop: (out, dx, dw) for loss = sum(out * dy)."""
  x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
  out, dx, dw = np.zeros((x.shape[0], w.shape[2])), np.zeros_like(x), np.zeros_like(w)
  start = 0
  for g, size in enumerate(np.asarray(sizes)):
    rows = slice(start, start + size)
    out[rows] = x[rows] @ w[g]
    dx[rows] = dy[rows] @ w[g].T
    dw[g] = x[rows].T @ dy[rows]
    start += size
  return out, dx, dw


def test_cpu_kernels_build_and_register():
  assert gm.cpu_kernels_available()
  library = build._library_path(pathlib.Path(build.__file__).parent / 'grouped_matmul.cc')
  assert library.exists() and library.parent == build.cache_dir()


@pytest.mark.parametrize('m,k,n,sizes', CASES)
def test_forward_and_gradients_match_ragged_dot_and_numpy(m, k, n, sizes):
  x, w, sizes, dy = _inputs(m, k, n, sizes)

  def loss(fn, x, w):
    return jnp.sum(fn(x, w, sizes) * dy)

  out = jax.jit(gm.grouped_matmul)(x, w, sizes)
  dx, dw = jax.jit(jax.grad(lambda x, w: loss(gm.grouped_matmul, x, w), (0, 1)))(x, w)
  ref_out = jax.lax.ragged_dot(x, w, sizes)
  ref_dx, ref_dw = jax.grad(lambda x, w: loss(jax.lax.ragged_dot, x, w), (0, 1))(x, w)
  np_out, np_dx, np_dw = _numpy_reference(x, w, sizes, dy)
  tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(max(k, n, m)))
  for ours, ragged, exact in ((out, ref_out, np_out), (dx, ref_dx, np_dx), (dw, ref_dw, np_dw)):
    np.testing.assert_allclose(ours, exact, **tol)
    np.testing.assert_allclose(ours, ragged, **tol)
  # Rows past the last group are exactly zero, as are their input gradients.
  used = int(np.sum(sizes))
  assert np.all(np.asarray(out)[used:] == 0) and np.all(np.asarray(dx)[used:] == 0)


def test_the_kernel_is_what_runs_on_cpu():
  x, w, sizes, _ = _inputs(37, 5, 7, (10, 0, 20))
  hlo = jax.jit(jax.grad(lambda x, w: jnp.sum(gm.grouped_matmul(x, w, sizes) ** 2), (0, 1))).lower(
      x, w).as_text()
  for target in ('moe_flan_grouped_nn', 'moe_flan_grouped_nt', 'moe_flan_grouped_tn'):
    assert target in hlo
  assert 'ragged_dot' not in hlo


def test_accelerators_get_ragged_dot_not_the_cpu_kernels():
  """The backend is chosen at lowering: a GPU lowering of the same function has no CPU call."""
  x, w, sizes, _ = _inputs(37, 5, 7, (10, 0, 20))
  traced = jax.jit(jax.grad(lambda x, w: jnp.sum(gm.grouped_matmul(x, w, sizes) ** 2),
                            (0, 1))).trace(x, w)
  cuda = traced.lower(lowering_platforms=('cuda',)).as_text()
  assert 'ragged_dot' in cuda and 'moe_flan_grouped' not in cuda


def test_bfloat16_inputs_compute_in_float32():
  x, w, sizes, _ = _inputs(100, 33, 65, (0, 40, 1, 0))
  out = gm.grouped_matmul(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), sizes)
  assert out.dtype == jnp.bfloat16
  exact = _numpy_reference(x.astype(jnp.bfloat16).astype(jnp.float32),
                           w.astype(jnp.bfloat16).astype(jnp.float32), sizes,
                           jnp.zeros((100, 65)))[0]
  np.testing.assert_allclose(np.asarray(out, np.float32), exact, rtol=2e-2, atol=5e-2)


def test_groups_past_the_rows_are_an_error_naming_the_segment():
  x, w, _, _ = _inputs(10, 4, 4, (5, 5))
  with pytest.raises(Exception, match=r'grouped_matmul: segment 1 \(start 5, length 9\)'):
    jax.block_until_ready(gm.grouped_matmul(x, w, jnp.asarray([5, 9], jnp.int32)))


def test_bad_shapes_are_rejected():
  x, w, sizes, _ = _inputs(10, 4, 4, (5, 5))
  with pytest.raises(ValueError, match=r'expected x \[M, K\], w \[G, K, N\]'):
    gm.grouped_matmul(x, w[:, :3], sizes)
  with pytest.raises(ValueError, match='group_sizes must be integers'):
    gm.grouped_matmul(x, w, sizes.astype(jnp.float32))


def test_a_failed_compile_names_the_source_and_keeps_no_partial_library(tmp_path, monkeypatch):
  monkeypatch.setenv('MOE_FLAN_KERNEL_CACHE', str(tmp_path))
  source = tmp_path / 'broken.cc'
  source.write_text('this is not C++\n')
  library = build._library_path(source)
  with pytest.raises(build.KernelBuildError, match='Cannot compile .*broken.cc'):
    build._compile(source, library)
  assert list(tmp_path.iterdir()) == [source]
  monkeypatch.setenv('CXX', 'no-such-compiler-here')
  with pytest.raises(build.KernelBuildError, match="running 'no-such-compiler-here' failed"):
    build._compile(source, build._library_path(source))


def test_a_library_that_does_not_load_is_a_build_error(tmp_path, monkeypatch):
  monkeypatch.setenv('MOE_FLAN_KERNEL_CACHE', str(tmp_path))
  monkeypatch.setattr(build, '_SOURCE_DIR', tmp_path)
  source = tmp_path / 'truncated.cc'
  source.write_text('int a;\n')
  build._library_path(source).write_bytes(b'not an ELF file')
  with pytest.raises(build.KernelBuildError, match='Cannot load .*truncated.*delete it'):
    build.load_library('truncated.cc')


def test_library_name_changes_with_the_source(tmp_path, monkeypatch):
  monkeypatch.setenv('MOE_FLAN_KERNEL_CACHE', str(tmp_path))
  source = tmp_path / 'k.cc'
  source.write_text('int a;\n')
  first = build._library_path(source)
  source.write_text('int b;\n')
  assert build._library_path(source) != first
  assert first.parent == tmp_path
