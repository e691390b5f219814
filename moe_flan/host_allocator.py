"""Host heap settings for training on CPU: keep freed buffers for reuse instead of unmapping them.

Why: XLA:CPU allocates every output and temporary buffer of a jitted step afresh on each call,
through the C heap (posix_memalign). glibc serves blocks above its mmap threshold (at most 32 MiB)
from fresh `mmap`s and unmaps them on free, so each step the kernel zero-fills every 4 KiB page of
those buffers again on first touch. For a MoE layer that is every expert-weight gradient: at
E=128 experts (d_model 512, d_ff 2048) about 1 GiB of fresh pages per step, measured here as
~280k page faults and ~0.45 s of kernel time per layer step (BENCHMARKS.md).

`keep_freed_memory()` sets glibc's malloc so that large blocks come from the heap and freed
memory stays mapped for the next step: one arena (non-main arenas would fall back to `mmap` for
blocks larger than their 64 MiB heaps), no `mmap` for allocations, and the heap top trimmed only
above 2 GiB free. The costs, measured on the HF Switch comparison model at E=128
(benchmarks/hf_switch.py): the resident set grows over the first steps to ~2x the step's peak
(11.8 GB vs 5.6 GB; glibc's heap fragments) and then stays there; threads share one arena lock. Because of the memory cost
it is opt-in: MOE_FLAN_KEEP_FREED_HOST_MEMORY=1 makes the train/evaluate/infer entry points
call it (`configure_from_env()`, before JAX starts its thread pools: arenas are per thread), and
`python -m benchmarks.run --heap kept` measures with it. Accelerator runs are left alone (their
big buffers live on the device), and where libc is not glibc (macOS, musl) nothing changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import platform

# glibc <malloc.h> parameter numbers for mallopt(3).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
M_ARENA_MAX = -8

ENV = 'MOE_FLAN_KEEP_FREED_HOST_MEMORY'   # '1' turns keep_freed_memory() on in the entry points
# Modules that make an accelerator backend available to JAX (then the host heap matters less).
ACCELERATOR_PLUGINS = ('libtpu', 'jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                       'jax_rocm7_plugin')
_INT_MAX = 2 ** 31 - 1   # mallopt takes a C int


def _glibc() -> ctypes.CDLL | None:
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return None
  try:
    return ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
  except OSError:
    return None


def keep_freed_memory(top_pad_bytes: int = 64 << 20) -> bool:
  """Sets glibc malloc to reuse freed large blocks (see module doc).

  top_pad_bytes: extra heap growth per `brk` (fewer system calls while the heap grows to its
  peak). Returns True if every setting was accepted, False where libc is not glibc.
  """
  if not 0 <= top_pad_bytes <= _INT_MAX:
    raise ValueError(f'keep_freed_memory: top_pad_bytes={top_pad_bytes} must be in '
                     f'[0, {_INT_MAX}]')
  libc = _glibc()
  if libc is None:
    return False
  # The trim threshold is a C int: at most 2 GiB of free heap top stays mapped (-1 does not
  # mean "never" here: measured, it trims on every free).
  settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _INT_MAX),
              (M_TOP_PAD, top_pad_bytes))
  return all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1
             for param, value in settings)


def runs_on_cpu_only() -> bool:
  """Whether JAX will compute on the host: JAX_PLATFORMS names only cpu, or, unset, no
  accelerator plugin is installed."""
  platforms = [p.strip() for p in os.environ.get('JAX_PLATFORMS', '').split(',') if p.strip()]
  if platforms:
    return all(p == 'cpu' for p in platforms)
  return not any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


def configure_from_env() -> bool:
  """`keep_freed_memory()` if $MOE_FLAN_KEEP_FREED_HOST_MEMORY is 1 (or true/yes) and JAX will
  compute on the host; returns whether it was applied. Call before JAX's backend starts."""
  value = os.environ.get(ENV, '').strip().lower()
  if value in ('', '0', 'false', 'no'):
    return False
  if value not in ('1', 'true', 'yes'):
    raise ValueError(f'Bad environment: {ENV}={os.environ[ENV]!r}: use 1 or 0')
  return runs_on_cpu_only() and keep_freed_memory()
