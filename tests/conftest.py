"""Test set-up: 8 simulated host CPU devices, so sharded code is tested against 1 device."""
import os

# XLA:CPU's fusion emitters (the MLIR code generator, XLA's CPU default) take half or more of
# every compile of the tests' programs: thousands of small fusions, each run for microseconds.
# The older elemental emitters compile them in half the time; tests compare results, never speed.
FAST_CPU_COMPILE_XLA_FLAGS = '--xla_cpu_use_fusion_emitters=false'

# Must happen before jax initialises its backends (i.e. before any test imports jax).
os.environ['XLA_FLAGS'] = ' '.join(filter(None, (
    os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=8',
    FAST_CPU_COMPILE_XLA_FLAGS)))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
if not os.environ['CUDA_VISIBLE_DEVICES']:
  # libtpu (test extra, for moe_flan.aot's TPU topology compiles) would otherwise make JAX try
  # to open a TPU at start-up and log errors; topology compiles work on the CPU platform.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import tempfile  # noqa: E402

import pytest  # noqa: E402

# XLA's backend optimisations (LLVM -O2 and its expensive passes) take half of every compile on a
# CPU and buy nothing on the tests' tiny models, which run for milliseconds; JAX's own test suite
# turns them off the same way. Subprocess runs keep the defaults unless a test passes one of these
# on: DISABLE_OPTIMIZATIONS_ENV to a child that inherits this process's XLA_FLAGS (8 devices),
# FAST_COMPILE_ENV to one that chooses its own device count (its XLA_FLAGS replaces ours).
DISABLE_OPTIMIZATIONS_ENV = {'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}
FAST_COMPILE_ENV = {**DISABLE_OPTIMIZATIONS_ENV, 'XLA_FLAGS': FAST_CPU_COMPILE_XLA_FLAGS}
# Modules that measure what the optimised compile produces (TPU-topology memory and collectives).
OPTIMIZED_COMPILE_MODULES = ('test_aot',)

# Compiled train steps shared between the trainer tests' train() calls and subprocesses (same
# HLO, new closures); a compile costs seconds on 2 cores.
JAX_CACHE_DIR = os.path.join(tempfile.gettempdir(), 'moe_flan_trainer_test_jax_cache')


@pytest.fixture(scope='module')
def persistent_compilation_cache():
  """Turns on JAX's persistent compilation cache for one test module, then restores it."""
  import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS above)
  old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update('jax_compilation_cache_dir', JAX_CACHE_DIR)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  yield JAX_CACHE_DIR
  jax.config.update('jax_compilation_cache_dir', old[0])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', old[1])


@pytest.fixture(scope='module', autouse=True)
def fast_compiles(request):
  """Compiles each test module's programs without XLA's backend optimisations (see above)."""
  import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS above)
  old = jax.config.read('jax_disable_most_optimizations')
  optimized = request.module.__name__.startswith(OPTIMIZED_COMPILE_MODULES)
  jax.config.update('jax_disable_most_optimizations', not optimized)
  yield
  jax.config.update('jax_disable_most_optimizations', old)
