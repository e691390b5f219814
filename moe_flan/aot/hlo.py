"""Collectives of a compiled (SPMD-partitioned) HLO module, read from its text.

Each collective instruction gives its kind, the bytes of its buffer on one chip, the groups of
devices it runs over (mapped back to mesh axes by `mesh_axes_of`), how many times it runs per
step (instructions in a while body count trip-count times: XLA's known_trip_count, else the
`counter < N` of the loop's condition, as a scanned layer stack's loop has) and the model code
that made it (the `op_name` metadata, e.g. `.../encoder/layers_1/moe/...`).

Replica groups come in the printed forms XLA uses: `{{0,1},{2,3}}`, iota `[2,2]<=[4]` /
`[2,2]<=[2,2]T(1,0)`, and mesh form `mesh['axis_0'=2,'axis_1'=2], device_ids=(...) {'axis_1'}`.
Device numbers are positions in the executable's device assignment (the flattened jax Mesh).

A multi-slice executable is the program of one slice: collectives across slices (over the
data-center network) are host-transfer `send`s to libtpu's megascale runtime, carrying
`_xla_megascale_transfer_type="ALL_REDUCE"` etc.; they are counted with `dcn=True` (no ICI
replica groups; each `send` has a matching `recv`, not counted again).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from typing import Iterable, Optional, Sequence

import numpy as np

KINDS = ('all-to-all', 'all-gather', 'reduce-scatter', 'all-reduce', 'collective-permute')
_OPCODES = {
    'all-to-all': 'all-to-all', 'ragged-all-to-all': 'all-to-all',
    'all-gather': 'all-gather', 'all-gather-start': 'all-gather',
    'reduce-scatter': 'reduce-scatter',
    'all-reduce': 'all-reduce', 'all-reduce-start': 'all-reduce',
    'collective-permute': 'collective-permute', 'collective-permute-start': 'collective-permute',
    'collective-broadcast': 'collective-permute',
}
_DTYPE_BYTES = {'pred': 1, 's4': 0.5, 'u4': 0.5, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2,
                'bf16': 2, 's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8,
                'c64': 8, 'c128': 16, 'token': 0}
_ARRAY = re.compile(r'\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%([^\s(]+) .*\{\s*$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([^\s=]+) = (.*)$')
# 'encoder/layers_1/moe/', or in a scanned stack (T5Config.scan_layers) the scan body's
# 'encoder/while/body/closed_call/layers/layers_1/moe/' (sublayer 1 of every block), with
# 'checkpoint/' or 'checkpoint/rematted_computation/' before 'layers/' under remat_policy.
_LAYER = re.compile(
    r'(encoder|decoder)/(?:while/body/(?:[^/"]+/)*?(layers/))?(layers_\d+)/moe/')
_MEGASCALE = re.compile(r'_xla_megascale_transfer_type="([A-Z_]+)"')
_MEGASCALE_KINDS = {'ALL_REDUCE': 'all-reduce', 'ALL_GATHER': 'all-gather',
                    'REDUCE_SCATTER': 'reduce-scatter', 'ALL_TO_ALL': 'all-to-all'}


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective instruction of the partitioned module (per-chip view)."""
  kind: str                     # one of KINDS
  name: str
  buffer_bytes: float           # the collective's full buffer on one chip (see `_buffer_bytes`)
  groups: Optional[tuple[frozenset, ...]]   # None: a replica-group form this reader lacks
  groups_text: str
  executions: int               # times it runs per step
  op_name: str
  dcn: bool = False             # across slices, over the data-center network

  @property
  def group_size(self) -> int:
    return max((len(g) for g in self.groups), default=1) if self.groups else 1

  @property
  def link_bytes(self) -> float:
    """Bytes one chip sends over its links per execution, for the usual algorithms (ring
    all-gather / reduce-scatter, all-reduce = both, direct all-to-all, one hop permute)."""
    n = self.group_size
    if self.kind == 'collective-permute':
      return self.buffer_bytes
    share = (n - 1) / n if n > 1 else 0.0
    return self.buffer_bytes * share * (2 if self.kind == 'all-reduce' else 1)

  @property
  def moe_layer(self) -> Optional[str]:
    """'encoder/layers_1' when the op comes from that block's MoE layer; in a scanned stack
    'encoder/layers/layers_1', the MoE layer of sublayer 1 of every block (its executions
    count one per block); else None."""
    m = _LAYER.search(self.op_name)
    return f'{m.group(1)}/{m.group(2) or ""}{m.group(3)}' if m else None


def _array_bytes(shape_text: str) -> list[float]:
  out = []
  for dtype, dims in _ARRAY.findall(shape_text):
    size = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith('f8') else None)
    if size is None:
      continue
    out.append(size * math.prod(int(d) for d in dims.split(',') if d))
  return out


def _buffer_bytes(opcode: str, shape_text: str, group_size: int) -> float:
  """A collective's full buffer on one chip: the gathered output of an all-gather, the input of
  a reduce-scatter, the reduced buffer of an all-reduce, the exchanged buffer of an all-to-all
  or a permute (async `-start` tuples also hold inputs and small context scalars)."""
  arrays = _array_bytes(shape_text)
  if not arrays:
    return 0.0
  if opcode in ('all-gather-start', 'collective-permute-start'):
    return max(arrays)
  if opcode == 'reduce-scatter':
    return sum(arrays) * group_size
  return sum(arrays)


def _split_shape(rest: str) -> tuple[str, str]:
  """'(a[1], b[2]) op(...)...' -> ('(a[1], b[2])', 'op(...)...')."""
  if not rest.startswith('('):
    shape, _, tail = rest.partition(' ')
    return shape, tail
  depth = 0
  for i, ch in enumerate(rest):
    depth += ch == '('
    depth -= ch == ')'
    if depth == 0:
      return rest[:i + 1], rest[i + 2:]
  return rest, ''


def _iota(text: str) -> Optional[np.ndarray]:
  """'[4]' / '[2,2]T(1,0)' / '[2,2]<=[4]' -> device ids in order (flat)."""
  m = re.fullmatch(r'(?:\[[\d,]+\]<=)?\[([\d,]+)\](?:T\(([\d,]+)\))?', text.strip())
  if not m:
    return None
  reshape = [int(d) for d in m.group(1).split(',')]
  ids = np.arange(math.prod(reshape)).reshape(reshape)
  if m.group(2):
    ids = ids.transpose([int(p) for p in m.group(2).split(',')])
  return ids.reshape(-1)


def _explicit(text: str) -> tuple[frozenset, ...]:
  """'{{0,1},{2,3}}' -> groups."""
  return tuple(frozenset(int(x) for x in g.split(',') if x.strip())
               for g in re.findall(r'\{([\d,\s]+)\}', text))


def _mesh_groups(text: str) -> Optional[tuple[frozenset, ...]]:
  """"mesh['a'=2,'b'=2], device_ids=(...) {'b'}" -> groups varying along the listed axes."""
  m = re.fullmatch(r"mesh\[([^\]]*)\](?:, device_ids=\((.*)\))? \{([^}]*)\}", text.strip())
  if not m:
    return None
  axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
  names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
  n = math.prod(sizes)
  ids = np.arange(n) if not m.group(2) else _iota(m.group(2))
  if ids is None:
    explicit = [int(x) for x in re.findall(r'\d+', m.group(2))]
    ids = np.asarray(explicit) if len(explicit) == n else None
  if ids is None or ids.size != n:
    return None
  # A sub-axis 'a':(pre)size is the middle of 'a' reshaped to [pre, size, rest] (major to minor;
  # XLA's AxisRef: the major of two sub-axes has the smaller pre-size).
  dims, keep = [], []
  listed = re.findall(r"'([^']+)'(?::\((\d+)\)(\d+))?", m.group(3))
  for name, size in zip(names, sizes):
    subs = [(int(p), int(s)) for a, p, s in listed if a == name and p]
    whole = any(a == name and not p for a, p, _ in listed)
    if subs:
      pre, sub = subs[0]
      dims += [pre, sub, size // (pre * sub)]
      keep += [False, True, False]
    else:
      dims.append(size)
      keep.append(whole)
  arr = ids.reshape(dims)
  order = [i for i, k in enumerate(keep) if not k] + [i for i, k in enumerate(keep) if k]
  size = math.prod(d for d, k in zip(dims, keep) if k)
  return tuple(frozenset(int(x) for x in row) for row in arr.transpose(order).reshape(-1, size))


def parse_groups(attrs: str, num_devices: int) -> tuple[Optional[tuple[frozenset, ...]], str]:
  """(groups, the printed text) of one instruction's replica groups or permute pairs."""
  m = re.search(r'source_target_pairs=(\{(?:\{\d+,\d+\},?)*\})', attrs)
  if m:
    return _components(_explicit(m.group(1))), m.group(1)
  m = re.search(r"replica_groups=(mesh\[[^\]]*\](?:, device_ids=\([^)]*(?:\([^)]*\))?\))? "
                r"\{[^}]*\}|\[[\d,]+\]<=\[[\d,]+\](?:T\([\d,]+\))?|\{(?:\{[\d,]*\},?)*\})", attrs)
  if not m:
    return (frozenset(range(num_devices)),), '{}'
  text = m.group(1)
  if text.startswith('mesh'):
    return _mesh_groups(text), text
  if text.startswith('['):
    dims = [int(d) for d in text[1:text.index(']')].split(',')]
    ids = _iota(text)
    return tuple(frozenset(int(x) for x in r) for r in ids.reshape(dims[0], -1)), text
  groups = _explicit(text)
  return (groups or (frozenset(range(num_devices)),)), text


def _components(pairs: Sequence[frozenset]) -> tuple[frozenset, ...]:
  """Connected device sets of a permute's (source, target) pairs."""
  parent: dict[int, int] = {}

  def find(x):
    while parent.setdefault(x, x) != x:
      x = parent[x]
    return x
  for pair in pairs:
    a, *rest = sorted(pair)
    for b in rest:
      parent[find(b)] = find(a)
  comps: dict[int, set] = {}
  for x in list(parent):
    comps.setdefault(find(x), set()).add(x)
  return tuple(frozenset(c) for c in comps.values())


def mesh_axes_of(groups: Optional[Iterable[frozenset]], mesh_shape: dict[str, int]) -> str:
  """The mesh axes a collective runs over: 'expert', 'data+expert', ...; 'expert (groups of 2)'
  when XLA split an axis and each group lies within one of its groups; 'none' when every group
  is one device; 'other' otherwise."""
  if groups is None:
    return 'unknown'
  groups = {g for g in groups if len(g) > 1}
  if not groups:
    return 'none'
  names = list(mesh_shape)
  ids = np.arange(math.prod(mesh_shape.values())).reshape(list(mesh_shape.values()))
  combos = [c for r in range(1, len(names) + 1)
            for c in itertools.combinations(range(len(names)), r)
            if all(mesh_shape[names[i]] > 1 for i in c)]

  def rows(combo):
    rest = [i for i in range(len(names)) if i not in combo]
    size = math.prod(mesh_shape[names[i]] for i in combo)
    return {frozenset(int(x) for x in row)
            for row in ids.transpose(rest + list(combo)).reshape(-1, size)}
  for combo in combos:
    # A collective may cover some of the groups only (e.g. a permute within some rows).
    if groups <= rows(combo):
      return '+'.join(names[i] for i in combo)
  for combo in combos:   # groups inside whole-axis groups: XLA split an axis
    full = rows(combo)
    if all(any(g <= row for row in full) for g in groups):
      size = max(len(g) for g in groups)
      return f"{'+'.join(names[i] for i in combo)} (groups of {size})"
  return 'other'


def _computations(text: str) -> dict[str, list[str]]:
  comps: dict[str, list[str]] = {}
  current = None
  for line in text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      current = comps.setdefault(m.group(1), [])
    elif line.startswith('}'):
      current = None
    elif current is not None:
      current.append(line)
  return comps


def _condition_bound(lines: Sequence[str]) -> Optional[int]:
  """N of a while condition `counter < N` (jax's scan and fori_loop: the counter starts at 0),
  or None for any other condition."""
  constants = dict(re.findall(r'^\s*%(\S+) = s32\[\]\S* constant\((\d+)\)', '\n'.join(lines),
                              re.M))
  for line in lines:
    m = re.search(r'ROOT %\S+ = pred\[\]\S* compare\(%\S+, %([^\s,)]+)\), direction=LT', line)
    if m and m.group(1) in constants:
      return int(constants[m.group(1)])
  return None


def _trip_count(line: str, comps: dict[str, list[str]]) -> int:
  """Iterations of the while loop `line`: XLA's known_trip_count when it printed one, else the
  bound of its condition (TPU executables drop the annotation from scanned layers' loops)."""
  trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
  if trips:
    return int(trips.group(1))
  condition = re.search(r'condition=%([^\s,]+)', line)
  bound = _condition_bound(comps.get(condition.group(1), ())) if condition else None
  return bound or 1


def _executions(comps: dict[str, list[str]], entry: str, trips: bool = True) -> dict[str, int]:
  """How many times each computation runs per call of `entry` (while bodies x trip count; x 1
  with `trips=False`, as XLA's cost analysis counts them)."""
  callers: dict[str, list[tuple[str, int]]] = {}
  for name, lines in comps.items():
    for line in lines:
      if re.search(r' (?:[a-z-]+-done|async-update)\(', line):
        continue   # the matching -start already called the computation
      for body in re.findall(r'body=%([^\s,]+)', line):
        callers.setdefault(body, []).append((name, _trip_count(line, comps) if trips else 1))
      for callee in re.findall(r'(?:calls|to_apply|true_computation|false_computation)=%([^\s,]+)',
                               line):
        callers.setdefault(callee, []).append((name, 1))
      for branches in re.findall(r'branch_computations=\{([^}]*)\}', line):
        for b in branches.split(','):
          callers.setdefault(b.strip().lstrip('%'), []).append((name, 1))

  @functools.cache
  def runs(name: str) -> int:
    if name == entry:
      return 1
    return sum(runs(caller) * factor for caller, factor in callers.get(name, ()))
  return {name: runs(name) for name in comps}


def collectives(hlo_text: str, num_devices: int) -> list[Collective]:
  """Every collective of a compiled module's text (`compiled.as_text()`)."""
  comps = _computations(hlo_text)
  entry = re.search(r'^ENTRY %([^\s(]+)', hlo_text, re.M)
  runs = _executions(comps, entry.group(1)) if entry else {}
  found = []
  for comp, lines in comps.items():
    for line in lines:
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      shape, rest = _split_shape(m.group(2))
      opcode = rest.split('(', 1)[0]
      op_name = re.search(r'op_name="([^"]*)"', rest)
      megascale = _MEGASCALE.search(rest) if opcode == 'send' else None
      if megascale:
        found.append(Collective(
            _MEGASCALE_KINDS.get(megascale.group(1), 'collective-permute'), m.group(1),
            max(_array_bytes(shape), default=0.0), None, 'dcn', runs.get(comp, 1),
            op_name.group(1) if op_name else '', dcn=True))
        continue
      if opcode not in _OPCODES:
        continue
      groups, groups_text = parse_groups(rest, num_devices)
      size = max((len(g) for g in groups), default=1) if groups else 1
      found.append(Collective(_OPCODES[opcode], m.group(1), _buffer_bytes(opcode, shape, size),
                              groups, groups_text, runs.get(comp, 1),
                              op_name.group(1) if op_name else ''))
  return found



def _dims(shape_text: str) -> list[int]:
  m = _ARRAY.search(shape_text)
  return [int(d) for d in m.group(2).split(',') if d] if m else []


def _operands(rest: str) -> list[str]:
  """The operand names of an instruction's text after its shape ('op(%a, %b), attrs')."""
  args, _ = _split_shape(rest[rest.index('('):]) if '(' in rest else ('', '')
  return re.findall(r'%([^\s,()]+)', args)


def _window_attr(window: str, key: str, n: int, default: int) -> list[int]:
  m = re.search(rf'\b{key}=([\d_x-]+)', window)
  return [int(v) for v in m.group(1).split('x')] if m else [default] * n


def _valid_positions(out_size: int, in_size: int, size: int, stride: int, pad_low: int,
                     lhs_dilation: int, rhs_dilation: int) -> int:
  """(output, window) position pairs of one spatial dimension that read an input element, not
  padding or a dilation hole: XLA counts a convolution's multiply-adds over these."""
  count = 0
  for k in range(size):
    o = np.arange(out_size)
    pos = o * stride + k * rhs_dilation - pad_low     # in the dilated, padded input
    ok = (pos >= 0) & (pos % lhs_dilation == 0) & (pos // lhs_dilation < in_size)
    count += int(ok.sum())
  return count


def _conv_flops(shape: str, rest: str, lhs: list[int], rhs: list[int]) -> float:
  """2 x multiply-adds of a convolution, as XLA's HloCostAnalysis counts them: input features
  per group x output features x batch per group x the valid window positions of each spatial
  dimension (XLA writes batched matmuls as convolutions over padded 'spatial' dimensions)."""
  labels = re.search(r'dim_labels=(\w+)_(\w+)->(\w+)', rest)
  out = _dims(shape)
  if not labels or not lhs or not rhs:
    return 0.0
  lhs_l, rhs_l, out_l = labels.groups()
  groups = re.search(r'feature_group_count=(\d+)', rest)
  batch_groups = re.search(r'batch_group_count=(\d+)', rest)
  fma = (lhs[lhs_l.index('f')] // (int(groups.group(1)) if groups else 1)
         * rhs[rhs_l.index('o')]
         * lhs[lhs_l.index('b')] // (int(batch_groups.group(1)) if batch_groups else 1))
  window = re.search(r'window=\{([^}]*)\}', rest)
  spatial = sorted(c for c in lhs_l if c.isdigit())
  if spatial and window:
    n = len(spatial)
    sizes = _window_attr(window.group(1), 'size', n, 1)
    strides = _window_attr(window.group(1), 'stride', n, 1)
    pads = re.search(r'\bpad=([\d_x-]+)', window.group(1))
    lows = [int(p.split('_')[0]) for p in pads.group(1).split('x')] if pads else [0] * n
    lhs_dil = _window_attr(window.group(1), 'lhs_dilate', n, 1)
    rhs_dil = _window_attr(window.group(1), 'rhs_dilate', n, 1)
    for i, d in enumerate(spatial):
      fma *= _valid_positions(out[out_l.index(d)], lhs[lhs_l.index(d)], sizes[i], strides[i],
                              lows[i], lhs_dil[i], rhs_dil[i])
  return 2.0 * fma


def _matmul_flops(opcode: str, shape: str, rest: str, shapes: dict[str, str]) -> float:
  """The FLOPs XLA's cost analysis counts for a dot (2 x output elements x contracted size)
  or a convolution (`_conv_flops`); 0 for any other op."""
  if opcode not in ('dot', 'convolution'):
    return 0.0
  names = _operands(rest)
  lhs = _dims(shapes.get(names[0], '')) if names else []
  if opcode == 'convolution':
    return _conv_flops(shape, rest, lhs, _dims(shapes.get(names[1], '')) if len(names) > 1
                       else [])
  m = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', rest)
  k = math.prod(lhs[int(i)] for i in m.group(1).split(',') if i) if m and lhs else 1
  return 2.0 * math.prod(_dims(shape)) * k


def loop_flops(hlo_text: str) -> tuple[float, float]:
  """The dot and convolution FLOPs of a compiled module's text (`compiled.as_text()`) per
  chip per step, counted with every while body run its trip count times, and run once (the
  way XLA's cost analysis counts loops): the difference is what a scanned layer stack's other
  iterations add to XLA's FLOPs."""
  comps = _computations(hlo_text)
  entry = re.search(r'^ENTRY %([^\s(]+)', hlo_text, re.M)
  if not entry:
    return 0.0, 0.0
  runs = _executions(comps, entry.group(1))
  once = _executions(comps, entry.group(1), trips=False)
  total = total_once = 0.0
  for comp, lines in comps.items():
    shapes, flops = {}, 0.0
    for line in lines:
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      shape, rest = _split_shape(m.group(2))
      shapes[m.group(1)] = shape
      flops += _matmul_flops(rest.split('(', 1)[0], shape, rest, shapes)
    total += runs.get(comp, 0) * flops
    total_once += once.get(comp, 0) * flops
  return total, total_once
