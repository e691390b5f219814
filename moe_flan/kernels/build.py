"""Compiles the package's C++ XLA FFI kernels on first use and registers them with JAX.

The kernels are built for the machine that runs them (`-march=native`), so they are compiled
here rather than shipped: the first call runs the C++ compiler (a few seconds) and caches the
shared library under `$MOE_FLAN_KERNEL_CACHE` (default `~/.cache/moe_flan/kernels`), keyed by
the source, the compiler command, the jaxlib version (FFI headers) and the CPU's features. A
library is written to a temporary name and renamed into place, so concurrent processes never
load a half-written file.

Nothing is downloaded: the compiler is the system's (`$CXX`, default `g++`) and the FFI headers
come with jaxlib (`jax.ffi.include_dir()`).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shlex
import subprocess
import tempfile
from typing import Sequence

import jax
import jaxlib

_SOURCE_DIR = pathlib.Path(__file__).parent
_FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-fno-math-errno')


class KernelBuildError(RuntimeError):
  """The C++ kernels could not be compiled or loaded (the message has the compiler's output)."""


def cache_dir() -> pathlib.Path:
  default = pathlib.Path.home() / '.cache' / 'moe_flan' / 'kernels'
  return pathlib.Path(os.environ.get('MOE_FLAN_KERNEL_CACHE', default))


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
  library.parent.mkdir(parents=True, exist_ok=True)
  fd, partial = tempfile.mkstemp(dir=library.parent, prefix=library.stem, suffix='.partial')
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


@functools.lru_cache(maxsize=None)
def load_library(source_name: str) -> ctypes.CDLL:
  """Builds (once per machine and source version) and loads `<package>/kernels/<source_name>`."""
  source = _SOURCE_DIR / source_name
  library = _library_path(source)
  if not library.exists():
    _compile(source, library)
  try:
    return ctypes.cdll.LoadLibrary(str(library))
  except OSError as e:
    raise KernelBuildError(f'Cannot load {library} (built from {source}): {e}; delete it to '
                           f'rebuild') from e


@functools.lru_cache(maxsize=None)
def register_cpu_targets(source_name: str, targets: Sequence[tuple[str, str]]) -> None:
  """Registers FFI handlers of `source_name` for XLA:CPU: targets = ((jax_name, symbol), ...).

  Raises KernelBuildError if the library cannot be built or loaded.
  """
  library = load_library(source_name)
  for name, symbol in targets:
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform='cpu')
