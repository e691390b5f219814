"""host_allocator: with keep_freed_memory(), a jitted step's fresh 64 MiB output no longer
page-faults on every call (XLA:CPU allocates through the C heap), and the switches behave."""
import json
import os
import platform
import subprocess
import sys

import pytest

from moe_flan import host_allocator

_PAGES = (64 << 20) // 4096

# Runs in a fresh interpreter: the heap settings must precede JAX's thread pools.
_PROBE = r'''
import json, resource, sys
from moe_flan import host_allocator
applied = host_allocator.keep_freed_memory() if sys.argv[1] == 'keep' else False
import jax, jax.numpy as jnp
step = jax.jit(lambda x: x + 1.0)          # a fresh 64 MiB output buffer per call
x = jnp.zeros((16 << 20,), jnp.float32)
for _ in range(5):                         # the heap settles after a few calls
  step(x).block_until_ready()
faults = []
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  step(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({'applied': applied, 'faults': faults}))
'''


def _probe(mode: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], capture_output=True, text=True,
                       env=env, timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc settings only')
def test_kept_memory_removes_page_faults_of_fresh_xla_buffers():
  kept = _probe('keep')
  assert kept['applied'] is True
  # Once the heap has settled, a call's 16384 output pages come back already mapped.
  assert sorted(kept['faults'])[2] < 0.05 * _PAGES, kept
  default = _probe('default')
  if min(default['faults']) < 0.5 * _PAGES:
    pytest.skip(f'default heap did not fault per call here (huge pages?): {default}')
  assert min(default['faults']) > 10 * max(sorted(kept['faults'])[2], 1), (default, kept)


def test_runs_on_cpu_only_reads_jax_platforms(monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert host_allocator.runs_on_cpu_only()
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')
  assert not host_allocator.runs_on_cpu_only()
  monkeypatch.delenv('JAX_PLATFORMS')
  monkeypatch.setattr(host_allocator, 'ACCELERATOR_PLUGINS', ('json',))   # "installed"
  assert not host_allocator.runs_on_cpu_only()
  monkeypatch.setattr(host_allocator, 'ACCELERATOR_PLUGINS', ('no_such_plugin_module',))
  assert host_allocator.runs_on_cpu_only()


def test_configure_from_env_is_opt_in_and_cpu_only(monkeypatch):
  calls = []
  monkeypatch.setattr(host_allocator, 'keep_freed_memory', lambda: calls.append(1) or True)
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.delenv(host_allocator.ENV, raising=False)
  assert host_allocator.configure_from_env() is False and not calls      # off by default
  monkeypatch.setenv(host_allocator.ENV, '0')
  assert host_allocator.configure_from_env() is False and not calls
  monkeypatch.setenv(host_allocator.ENV, '1')
  assert host_allocator.configure_from_env() is True and calls == [1]
  monkeypatch.setenv('JAX_PLATFORMS', 'tpu')
  assert host_allocator.configure_from_env() is False and calls == [1]
  monkeypatch.setenv(host_allocator.ENV, 'maybe')
  with pytest.raises(ValueError, match="MOE_FLAN_KEEP_FREED_HOST_MEMORY='maybe'"):
    host_allocator.configure_from_env()


def test_bad_top_pad_is_named():
  with pytest.raises(ValueError, match='top_pad_bytes=-1'):
    host_allocator.keep_freed_memory(top_pad_bytes=-1)
