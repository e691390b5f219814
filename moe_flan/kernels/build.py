"""Builds the package's opt-in C++ XLA FFI kernels for this host and registers them with JAX.

    python -m moe_flan.kernels.build     # ahead of time; prints the libraries' paths

The kernels are built for the machine that runs them (`-march=native`), so they are compiled
here rather than shipped: a build runs the C++ compiler (a few seconds) and caches the shared
library under `$MOE_FLAN_KERNEL_CACHE` (default `~/.cache/moe_flan/kernels`), keyed by the
source, the compiler command, the jaxlib version (FFI headers) and the CPU's features. A library
is written to a temporary name and renamed into place, so concurrent processes never load a
half-written file. Builds happen here or at first use outside tracing, never inside jit.

They are refused, with a KernelBuildError saying why, on a host that is not x86-64 with AVX-512
(their micro-tiles are 16 float lanes wide), without a compiler, or when the cache directory is
not writable; callers then fall back to XLA.

Nothing is downloaded: the compiler is the system's (`$CXX`, default `g++`) and the FFI headers
come with jaxlib (`jax.ffi.include_dir()`).
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import functools
import hashlib
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

import jax
import jaxlib

_SOURCE_DIR = pathlib.Path(__file__).parent
_FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-fno-math-errno')
KERNELS = ('grouped_matmul.cc',)   # what `python -m moe_flan.kernels.build` builds
_REGISTERED: set[str] = set()


class KernelBuildError(RuntimeError):
  """The C++ kernels could not be compiled or loaded (the message has the compiler's output)."""


def cache_dir() -> pathlib.Path:
  default = pathlib.Path.home() / '.cache' / 'moe_flan' / 'kernels'
  return pathlib.Path(os.environ.get('MOE_FLAN_KERNEL_CACHE', default))


def _machine() -> str:
  return platform.machine()


def _cpu_flags() -> frozenset[str]:
  """The CPU's feature flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
  line = _cpu_features()
  return frozenset(line.split(':', 1)[1].split()) if ':' in line else frozenset()


def unsupported_reason() -> Optional[str]:
  """Why the kernels cannot run on this host (None if they can): they need x86-64 and AVX-512."""
  machine = _machine()
  if machine.lower() not in ('x86_64', 'amd64'):
    return f'this host is {machine}, not x86-64'
  if 'avx512f' not in _cpu_flags():
    return ('this CPU has no AVX-512 (no avx512f flag): the kernels\' 16-lane tiles would be '
            'slower than XLA')
  return None


def _cpu_features() -> str:
  """The CPU flags line: a library built with -march=native only runs where they match."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(('flags', 'Features')):
          return line
  except OSError:
    pass
  return os.uname().machine


def _compile_command(source: pathlib.Path, output: pathlib.Path) -> list[str]:
  compiler = shlex.split(os.environ.get('CXX', 'g++'))
  return [*compiler, *_FLAGS, f'-I{jax.ffi.include_dir()}', str(source), '-o', str(output)]


def _library_path(source: pathlib.Path) -> pathlib.Path:
  key = hashlib.sha256()
  key.update(source.read_bytes())
  key.update(' '.join(_compile_command(source, pathlib.Path('out'))).encode())
  key.update(jaxlib.__version__.encode())
  key.update(_cpu_features().encode())
  return cache_dir() / f'{source.stem}-{key.hexdigest()[:16]}.so'


def _compile(source: pathlib.Path, library: pathlib.Path) -> None:
  directory = library.parent
  try:
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK | os.X_OK):
      raise PermissionError(errno.EACCES, 'not writable')
    fd, partial = tempfile.mkstemp(dir=directory, prefix=library.stem, suffix='.partial')
  except OSError as e:
    raise KernelBuildError(f'Cannot build {source.name}: the kernel cache {directory} is not '
                           f'writable ({e.strerror or e}); set $MOE_FLAN_KERNEL_CACHE to a '
                           f'writable directory') from e
  os.close(fd)
  try:
    command = _compile_command(source, pathlib.Path(partial))
    try:
      result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as e:
      raise KernelBuildError(f'Cannot compile {source}: running {command[0]!r} failed ({e}); '
                             f'install a C++ compiler or set $CXX') from e
    if result.returncode != 0:
      raise KernelBuildError(f'Cannot compile {source} (exit {result.returncode}):\n'
                             f'{shlex.join(command)}\n{result.stderr[-4000:]}')
    os.replace(partial, library)
  finally:
    if os.path.exists(partial):
      os.remove(partial)


def library_path(source_name: str) -> pathlib.Path:
  """Where the library of `<package>/kernels/<source_name>` built for this host is cached."""
  return _library_path(_SOURCE_DIR / source_name)


def load_library(source_name: str, compile_if_missing: bool = True) -> ctypes.CDLL:
  """Loads `<package>/kernels/<source_name>` built for this host, building it first if it is
  missing and `compile_if_missing`. Raises KernelBuildError saying why it cannot."""
  reason = unsupported_reason()
  if reason:
    raise KernelBuildError(f'The C++ kernels need an x86-64 CPU with AVX-512: {reason}')
  source = _SOURCE_DIR / source_name
  library = _library_path(source)
  if not library.exists():
    if not compile_if_missing:
      raise KernelBuildError(f'{source_name} is not built for this host ({library} is missing) '
                             f'and nothing is compiled while tracing; build it first: '
                             f'python -m moe_flan.kernels.build')
    _compile(source, library)
  return _load(library, source)


@functools.lru_cache(maxsize=None)
def _load(library: pathlib.Path, source: pathlib.Path) -> ctypes.CDLL:
  try:
    return ctypes.cdll.LoadLibrary(str(library))
  except OSError as e:
    raise KernelBuildError(f'Cannot load {library} (built from {source}): {e}; delete it to '
                           f'rebuild') from e


def register_cpu_targets(source_name: str, targets: Sequence[tuple[str, str]],
                         compile_if_missing: bool = True) -> None:
  """Registers FFI handlers of `source_name` for XLA:CPU: targets = ((jax_name, symbol), ...),
  once per process. Raises KernelBuildError if the library cannot be built or loaded."""
  if source_name in _REGISTERED:
    return
  library = load_library(source_name, compile_if_missing)
  for name, symbol in targets:
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform='cpu')
  _REGISTERED.add(source_name)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Builds every kernel of the package for this host; 1 (with the reason) if it cannot."""
  parser = argparse.ArgumentParser(prog='python -m moe_flan.kernels.build',
                                   description=__doc__.split('\n', 1)[0])
  parser.parse_args(argv)
  for name in KERNELS:
    try:
      load_library(name)
    except KernelBuildError as e:
      print(f'moe_flan.kernels.build: {e}', file=sys.stderr)
      return 1
    print(library_path(name))
  return 0


if __name__ == '__main__':
  sys.exit(main())
