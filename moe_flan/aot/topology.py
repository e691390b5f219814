"""TPU slices as compile targets on any host: chip specs, topology names, compile-only devices.

`libtpu` (the `[tpu]` extra, at the version JAX pins) describes a slice such as `v5p:4x4x8`
without any TPU attached (`jax.experimental.topologies`); `jax.jit(...).lower(...).compile()` on
a mesh of those devices runs the real TPU compiler on the host's CPUs.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from typing import Sequence

GIB = 1024 ** 3
INSTALL_HINT = ("pip install 'moe_flan[tpu]' (or: pip install 'libtpu==0.0.42.*', the version "
                "jax[tpu]==0.10.2 pins)")


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures of one TPU generation (Cloud TPU system architecture pages)."""
  hbm_bytes: int
  peak_bf16_flops: float       # FLOP/s
  hbm_bytes_per_s: float
  ici_bytes_per_s: float       # all of a chip's inter-chip links together
  accelerator_type: str        # '{n}' is replaced by the slice's TensorCore (v4, v5p) or chip count
  cores_per_chip: int          # TensorCores counted in the accelerator type name


CHIPS = {
    'v4': Chip(32 * GIB, 275e12, 1.2e12, 2400e9 / 8, 'v4-{n}', 2),
    'v5e': Chip(16 * GIB, 197e12, 819e9, 1600e9 / 8, 'v5litepod-{n}', 1),
    'v5p': Chip(95 * GIB, 459e12, 2.765e12, 4800e9 / 8, 'v5p-{n}', 2),
    'v6e': Chip(32 * GIB, 918e12, 1.64e12, 3584e9 / 8, 'v6e-{n}', 1),
}


@dataclasses.dataclass(frozen=True)
class Slice:
  """`kind:AxBxC` (one slice) times `num_slices` (joined by data-center network)."""
  name: str
  kind: str
  dims: tuple[int, ...]
  num_slices: int = 1

  @property
  def chip(self) -> Chip:
    return CHIPS[self.kind]

  @property
  def num_chips(self) -> int:
    return math.prod(self.dims) * self.num_slices


def parse(name: str, num_slices: int = 1) -> Slice:
  """`v5p:2x2x1` -> Slice. Raises ValueError naming the value for an unknown chip or a bad shape."""
  m = re.fullmatch(r'([a-z0-9]+):(\d+(?:x\d+)+)', name or '')
  if not m:
    raise ValueError(f'--topology={name!r}: expected KIND:AxB or KIND:AxBxC, e.g. v5e:2x2 or '
                     f'v5p:2x2x1 (kinds: {", ".join(CHIPS)})')
  kind, dims = m.group(1), tuple(int(d) for d in m.group(2).split('x'))
  if kind not in CHIPS:
    raise ValueError(f'--topology={name!r}: unknown TPU kind {kind!r}; known kinds: '
                     f'{", ".join(CHIPS)}')
  if len(dims) > 3 or min(dims) < 1:
    raise ValueError(f'--topology={name!r}: {len(dims)} dimensions {dims}; a slice has 2 or 3 '
                     'positive ones')
  if num_slices < 1:
    raise ValueError(f'--num_slices={num_slices}: must be >= 1')
  return Slice(name, kind, dims, num_slices)


def _quiet_libtpu_env(s: Slice) -> None:
  """Tells libtpu it is not on a TPU VM, so it neither queries GCE metadata nor logs errors
  about it, and lets several compile-only processes load it at once (no TPU is opened)."""
  cores = math.prod(s.dims) * s.chip.cores_per_chip
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', s.chip.accelerator_type.format(n=cores))
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')


# libtpu's compiler emits kernels on fibers with small stacks; its cost estimate of the large
# batched-matmul convolutions of a model as wide as ST-MoE-32B (the largest: expert weight
# gradients, 16 local experts x 5,120 x 5,120 over 16 groups x 10 capacity slots) recurses deeper
# than libtpu 0.0.42's default allows and the compile dies with SIGSEGV (stack overflow in
# FusedSpatialMajorConvolution::MakeConvWindows, on a fiber). A plan raises
# that stack (`--compiler_stack_mib`; 0 keeps libtpu's default); it is virtual memory reserved
# per fiber, touched only as deep as the compiler goes.
COMPILER_STACK_FLAG = '--fibers_default_thread_stack_size'
DEFAULT_COMPILER_STACK_MIB = 64


def libtpu_init_args(existing: str, compiler_stack_mib: int) -> str:
  """LIBTPU_INIT_ARGS with the compiler's fiber stack of `compiler_stack_mib` MiB added; flags
  the user set (the stack one included) are kept as they are."""
  if compiler_stack_mib < 0:
    raise ValueError(f'--compiler_stack_mib={compiler_stack_mib}: must be >= 0 (0: libtpu\'s '
                     'default)')
  if compiler_stack_mib == 0 or COMPILER_STACK_FLAG in existing:
    return existing
  return ' '.join(a for a in (existing, f'{COMPILER_STACK_FLAG}={compiler_stack_mib << 20}') if a)


def check_libtpu() -> None:
  if importlib.util.find_spec('libtpu') is None:
    raise ValueError(f'compiling for a TPU topology needs libtpu, which is not installed: '
                     f'{INSTALL_HINT}')


def devices(s: Slice, compiler_stack_mib: int = DEFAULT_COMPILER_STACK_MIB) -> Sequence:
  """The compile-only devices of slice `s` (one per chip; two per chip on v4), ordered by id.
  libtpu reads its flags (LIBTPU_INIT_ARGS, with `libtpu_init_args`) when it starts, once per
  process."""
  check_libtpu()
  _quiet_libtpu_env(s)
  os.environ['LIBTPU_INIT_ARGS'] = libtpu_init_args(os.environ.get('LIBTPU_INIT_ARGS', ''),
                                                    compiler_stack_mib)
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  kwargs = {'num_slices': s.num_slices} if s.num_slices > 1 else {}
  try:
    topo = topologies.get_topology_desc(topology_name=s.name, platform='tpu', **kwargs)
  except (jax.errors.JaxRuntimeError, RuntimeError, TypeError) as e:
    raise ValueError(f'--topology={s.name!r}' + (f' --num_slices={s.num_slices}'
                                                  if s.num_slices > 1 else '')
                     + f': libtpu rejects it: {str(e).splitlines()[0]}') from None
  return list(topo.devices)
