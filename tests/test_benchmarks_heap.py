"""benchmarks/heap.py (`--heap kept`): glibc accepts the settings, and with them a freed 64 MiB
block is reused already mapped instead of being unmapped and faulted in again."""
import json
import os
import platform
import subprocess
import sys

import pytest

from benchmarks import heap

_PAGES = (64 << 20) // 4096

# A fresh interpreter per mode: the settings must precede any other thread's arena.
_PROBE = r'''
import ctypes, json, resource, sys
from benchmarks import heap
applied = heap.keep_freed_memory() if sys.argv[1] == 'kept' else False
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(4):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(64 << 20)
  ctypes.memset(block, 1, 64 << 20)          # touch every page
  libc.free(block)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({'applied': applied, 'faults': faults}))
'''


def _probe(mode: str) -> dict:
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], capture_output=True, text=True,
                       env=env, timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc settings only')
def test_kept_heap_reuses_freed_blocks_without_page_faults():
  kept, default = _probe('kept'), _probe('default')
  if min(default['faults']) < 0.5 * _PAGES:
    pytest.skip(f'pages are not faulted 4 KiB at a time here (huge pages?): {default}')
  assert kept['applied'] is True
  assert kept['faults'][0] >= 0.9 * _PAGES            # the first touch faults either way
  assert max(kept['faults'][1:]) < 0.05 * _PAGES, kept  # then the block comes back mapped
  assert min(default['faults']) >= 0.9 * _PAGES, default   # glibc's default unmaps it on free


def test_bad_top_pad_is_named():
  with pytest.raises(ValueError, match='top_pad_bytes=-1'):
    heap.keep_freed_memory(top_pad_bytes=-1)
