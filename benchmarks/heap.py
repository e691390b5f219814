"""`--heap kept`: run the CPU suite with glibc keeping freed heap memory (an experiment).

Why it is measured: XLA:CPU allocates every output and temporary buffer of a jitted step afresh
on each call, through the C heap (posix_memalign). glibc serves blocks above its mmap threshold
(at most 32 MiB) from fresh `mmap`s and unmaps them on free, so each step the kernel zero-fills
every 4 KiB page of those buffers again on first touch: for the E=128 MoE layer case ~280k page
faults and ~0.45 s of kernel time per step.

`keep_freed_memory()` sets glibc's malloc so that large blocks come from the heap and freed
memory stays mapped: one arena (non-main arenas would fall back to `mmap` for blocks larger
than their 64 MiB heaps), no `mmap` for allocations, the heap top trimmed only above 2 GiB free.
It must run before JAX starts its thread pools (arenas are per thread). Why it is not in the
trainer: the heap fragments, so new buffers keep landing on untouched pages for an
unpredictable number of steps (a 64 MiB jitted output faulted on 2 to 12 of 12 calls across
runs) while the resident set grows to ~2x the step's peak (11.8 GB vs 5.6 GB on the HF Switch
model at E=128). BENCHMARKS.md has the paired runs.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc <malloc.h> parameter numbers for mallopt(3).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_INT_MAX = 2 ** 31 - 1   # mallopt takes a C int; -1 does not mean "never trim" (it trims always)

ENV = 'MOE_FLAN_BENCH_HEAP'   # the parent's --heap, passed on to the memory case's children


def keep_freed_memory(top_pad_bytes: int = 64 << 20) -> bool:
  """Sets glibc malloc to keep freed large blocks (see module doc).

  top_pad_bytes: extra heap growth per `brk`. Returns True if glibc accepted every setting,
  False where libc is not glibc (macOS, musl).
  """
  if not 0 <= top_pad_bytes <= _INT_MAX:
    raise ValueError(f'keep_freed_memory: top_pad_bytes={top_pad_bytes} must be in '
                     f'[0, {_INT_MAX}]')
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return False
  libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
  settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _INT_MAX),
              (M_TOP_PAD, top_pad_bytes))
  return all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1
             for param, value in settings)
