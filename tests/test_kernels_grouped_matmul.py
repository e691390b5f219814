"""Every grouped-matmul implementation agrees with jax.lax.ragged_dot (its reference twin) and a
float64 numpy loop; the opt-in C++ kernels refuse cleanly where they cannot run."""
import errno
import functools
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_flan.kernels import build
from moe_flan.kernels import grouped_matmul as gm
from moe_flan.kernels import grouped_matmul_cpu

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


@pytest.fixture
def cpu_kernels():
  """The opt-in C++ kernels, built and registered (they must build on the test machine)."""
  assert jax.default_backend() == 'cpu'
  assert gm.prepare('cpu_ffi'), 'the CPU grouped-matmul kernels must build here'


def test_cpu_kernels_build_and_register(cpu_kernels):
  library = build.library_path('grouped_matmul.cc')
  assert library.exists() and library.parent == build.cache_dir()


def _check_against_references(fn, m, k, n, size_patterns):
  """fn's output and gradients match ragged_dot's and numpy's for each pattern of group sizes
  (one compilation: the sizes are traced)."""
  forward = jax.jit(fn)
  grads = jax.jit(jax.grad(lambda x, w, s, dy: jnp.sum(fn(x, w, s) * dy), (0, 1)))
  ref_grads = jax.jit(jax.grad(lambda x, w, s, dy: jnp.sum(jax.lax.ragged_dot(x, w, s) * dy),
                               (0, 1)))
  for pattern in size_patterns:
    x, w, sizes, dy = _inputs(m, k, n, pattern)
    out, (dx, dw) = forward(x, w, sizes), grads(x, w, sizes, dy)
    ref_out, (ref_dx, ref_dw) = jax.lax.ragged_dot(x, w, sizes), ref_grads(x, w, sizes, dy)
    np_out, np_dx, np_dw = _numpy_reference(x, w, sizes, dy)
    tol = dict(rtol=1e-4, atol=1e-4 * np.sqrt(max(k, n, m)), err_msg=str(pattern))
    for ours, ragged, exact in ((out, ref_out, np_out), (dx, ref_dx, np_dx),
                                (dw, ref_dw, np_dw)):
      np.testing.assert_allclose(ours, exact, **tol)
      np.testing.assert_allclose(ours, ragged, **tol)
    # Rows past the last group are exactly zero, as are their input gradients.
    used = int(np.sum(sizes))
    assert np.all(np.asarray(out)[used:] == 0) and np.all(np.asarray(dx)[used:] == 0)


@pytest.mark.parametrize('m,k,n,sizes', CASES)
def test_cpu_kernels_match_ragged_dot_and_numpy(m, k, n, sizes, cpu_kernels):
  _check_against_references(functools.partial(gm.grouped_matmul, implementation='cpu_ffi'),
                            m, k, n, [sizes])


# Group sizes for 50 rows and 4 experts: uneven and empty experts, a last expert deeper than
# the rows left after its start (its window is moved back), one expert owning every row (a
# window of all P rows), no rows at all, and rows past the last group.
LOOP_SIZES = [(10, 0, 20, 0), (1, 2, 3, 44), (0, 0, 0, 50), (50, 0, 0, 0), (0, 0, 0, 0),
              (9, 13, 12, 9)]


@pytest.mark.parametrize('implementation', ['expert_loop', 'auto'])
def test_xla_paths_match_ragged_dot_and_numpy(implementation):
  _check_against_references(functools.partial(gm.grouped_matmul, implementation=implementation),
                            50, 6, 5, LOOP_SIZES)


def test_loop_windows_cover_every_row_count_within_one_and_a_half():
  for rows in (1, 7, 8, 9, 100, 4096, 5000):
    windows = gm._windows(rows)
    assert windows[-1] == rows and list(windows) == sorted(set(windows))
    for need in range(1, rows + 1):
      window = next(w for w in windows if w >= need)
      assert window <= max(8, 1.5 * need), (rows, need, window)


def _hlo(implementation, platforms=None):
  x, w, sizes, _ = _inputs(37, 5, 7, (10, 0, 20))
  traced = jax.jit(jax.grad(lambda x, w: jnp.sum(
      gm.grouped_matmul(x, w, sizes, implementation) ** 2), (0, 1))).trace(x, w)
  return traced.lower(**({'lowering_platforms': platforms} if platforms else {})).as_text()


def test_cpu_ffi_is_what_runs_on_cpu_when_named(cpu_kernels):
  hlo = _hlo('cpu_ffi')
  for target in ('moe_flan_grouped_nn', 'moe_flan_grouped_nt', 'moe_flan_grouped_tn'):
    assert target in hlo
  assert 'ragged_dot' not in hlo


def test_the_default_on_cpu_is_xla_without_kernels_or_dense_ragged_dot(cpu_kernels):
  """Even with the kernels built, 'auto' never picks them, nor XLA:CPU's dense ragged_dot."""
  hlo = _hlo('auto')
  assert 'moe_flan_grouped' not in hlo and 'ragged_dot' not in hlo


@pytest.mark.parametrize('implementation', ['auto', 'cpu_ffi'])
def test_accelerators_get_ragged_dot_not_the_cpu_paths(implementation, cpu_kernels):
  """The backend is chosen at lowering: a GPU lowering of the same function has no CPU call."""
  cuda = _hlo(implementation, ('cuda',))
  assert 'ragged_dot' in cuda and 'moe_flan_grouped' not in cuda


def test_bfloat16_inputs_compute_in_float32(cpu_kernels):
  x, w, sizes, _ = _inputs(100, 33, 65, (0, 40, 1, 0))
  out = gm.grouped_matmul(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), sizes, 'cpu_ffi')
  assert out.dtype == jnp.bfloat16
  exact = _numpy_reference(x.astype(jnp.bfloat16).astype(jnp.float32),
                           w.astype(jnp.bfloat16).astype(jnp.float32), sizes,
                           jnp.zeros((100, 65)))[0]
  np.testing.assert_allclose(np.asarray(out, np.float32), exact, rtol=2e-2, atol=5e-2)


def test_groups_past_the_rows_are_an_error_naming_the_segment(cpu_kernels):
  x, w, _, _ = _inputs(10, 4, 4, (5, 5))
  with pytest.raises(Exception, match=r'grouped_matmul: segment 1 \(start 5, length 9\)'):
    jax.block_until_ready(gm.grouped_matmul(x, w, jnp.asarray([5, 9], jnp.int32), 'cpu_ffi'))


def test_bad_shapes_are_rejected():
  x, w, sizes, _ = _inputs(10, 4, 4, (5, 5))
  with pytest.raises(ValueError, match=r'expected x \[P, D\], w \[E, D, F\]'):
    gm.grouped_matmul(x, w[:, :3], sizes)
  with pytest.raises(ValueError, match='group_sizes must be integers'):
    gm.grouped_matmul(x, w, sizes.astype(jnp.float32))
  with pytest.raises(ValueError, match="implementation='cutlass'"):
    gm.grouped_matmul(x, w, sizes, 'cutlass')


# --- Refusals: where the kernels cannot run, 'cpu_ffi' says why and runs XLA ------------------


@pytest.fixture
def unregistered(monkeypatch, tmp_path, caplog):
  """A process in which the kernels are not registered yet, caching into an empty directory."""
  monkeypatch.setattr(build, '_REGISTERED', set())
  monkeypatch.setenv('MOE_FLAN_KERNEL_CACHE', str(tmp_path / 'cache'))
  grouped_matmul_cpu._refusal.cache_clear()
  caplog.set_level(logging.WARNING)
  return tmp_path / 'cache'


def _falls_back_to_xla(caplog, why: str) -> None:
  """'cpu_ffi' refused with a warning matching `why`; the numbers are still right, from XLA."""
  x, w, sizes, _ = _inputs(37, 5, 7, (10, 0, 20))
  assert not gm.prepare('cpu_ffi')
  out = jax.jit(lambda x, w: gm.grouped_matmul(x, w, sizes, 'cpu_ffi'))(x, w)
  np.testing.assert_allclose(out, _numpy_reference(x, w, sizes, jnp.zeros((37, 7)))[0],
                             rtol=1e-5, atol=1e-5)
  assert 'moe_flan_grouped' not in _hlo('cpu_ffi')
  assert re.search(why, caplog.text), caplog.text


@pytest.mark.parametrize('machine,flags,why', [
    ('aarch64', frozenset({'fp', 'asimd'}), 'this host is aarch64, not x86-64'),
    ('x86_64', frozenset({'avx', 'avx2', 'fma'}), 'this CPU has no AVX-512')])
def test_a_host_without_x86_avx512_is_refused(machine, flags, why, unregistered, caplog,
                                              monkeypatch):
  monkeypatch.setattr(build, '_machine', lambda: machine)
  monkeypatch.setattr(build, '_cpu_flags', lambda: flags)
  with pytest.raises(build.KernelBuildError, match='need an x86-64 CPU with AVX-512: ' + why):
    build.load_library('grouped_matmul.cc')
  _falls_back_to_xla(caplog, why)
  assert not unregistered.exists()              # nothing was compiled or cached
  assert build.main([]) == 1


def test_a_read_only_cache_directory_is_refused(unregistered, caplog, monkeypatch):
  unregistered.mkdir()
  unregistered.chmod(0o555)
  # Permission bits do not bind root: also make creating a file fail as on a read-only mount.
  def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))
  monkeypatch.setattr(build.tempfile, 'mkstemp', read_only)
  with pytest.raises(build.KernelBuildError, match=f'kernel cache {unregistered} is not writable.*'
                                                   r'\$MOE_FLAN_KERNEL_CACHE'):
    build.load_library('grouped_matmul.cc')
  _falls_back_to_xla(caplog, 'is not writable')
  assert list(unregistered.iterdir()) == []


def test_nothing_is_compiled_while_tracing(unregistered, caplog, monkeypatch):
  def no_compiler(*args):
    raise AssertionError('the C++ compiler ran while tracing')
  monkeypatch.setattr(build, '_compile', no_compiler)
  x, w, sizes, _ = _inputs(37, 5, 7, (10, 0, 20))
  out = jax.jit(lambda x, w: gm.grouped_matmul(x, w, sizes, 'cpu_ffi'))(x, w)
  np.testing.assert_allclose(out, jax.lax.ragged_dot(x, w, sizes), rtol=1e-5, atol=1e-5)
  assert 'nothing is compiled while tracing' in caplog.text
  assert 'python -m moe_flan.kernels.build' in caplog.text


def test_the_build_command_builds_every_kernel(cpu_kernels, capsys):
  assert build.main([]) == 0
  assert capsys.readouterr().out.split() == [str(build.library_path('grouped_matmul.cc'))]


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


def test_the_trainer_readies_a_named_grouped_matmul_before_tracing(monkeypatch):
  from moe_flan.config import MoeConfig, T5Config
  from moe_flan.trainer import model_setup
  readied = []
  monkeypatch.setattr(gm, 'prepare', readied.append)
  model_setup.make_model(T5Config(moe=MoeConfig(dispatch='dropless', grouped_matmul='cpu_ffi')))
  model_setup.make_model(T5Config(moe=None))
  assert readied == ['cpu_ffi']
