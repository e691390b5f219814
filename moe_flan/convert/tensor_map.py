"""The correspondence between Hugging Face tensors and moe_flan params, as a list of entries.

Each `Entry` names one param of our tree ('encoder/layers_0/attention/query/kernel', the
CONTRACT.md tree), the HF tensor(s) it is made of, and how the two layouts relate. HF stores
`torch.nn.Linear` weights as [out, in]; we store kernels as [in, out] with heads split:

  kind      HF tensor(s)                      ours
  copy      [X]                               [X]              (layer-norm scales, embedding)
  linear    [out, in]                         [in, out]        (MLP kernels, router, lm_head)
  relpos    [R, H]                            [H, R]
  qkv       [H*K, D]                          [D, H, K]
  out       [D, H*K]                          [H, K, D]
  experts   E tensors [out, in]               [E, in, out]

Conversion either way is exact (transposes and reshapes only), so a round trip is bit-exact.
Problems (missing, unexpected, mis-shaped tensors) are gathered and raised as one ValueError
that lists them all.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

KINDS = ('copy', 'linear', 'relpos', 'qkv', 'out', 'experts')


@dataclasses.dataclass(frozen=True)
class Entry:
  """One param of ours (`path`, `shape`) and the HF tensor(s) `hf_names` it corresponds to."""
  path: str
  hf_names: Tuple[str, ...]
  kind: str
  shape: Tuple[int, ...]

  def hf_shape(self) -> Tuple[int, ...]:
    """Shape of each HF tensor of this entry."""
    s = self.shape
    if self.kind == 'copy':
      return s
    if self.kind in ('linear', 'relpos'):
      return (s[1], s[0])
    if self.kind == 'qkv':
      return (s[1] * s[2], s[0])
    if self.kind == 'out':
      return (s[2], s[0] * s[1])
    if self.kind == 'experts':
      return (s[2], s[1])
    raise ValueError(f'unknown entry kind {self.kind!r}; choose one of {KINDS}')

  def to_ours(self, hf: Sequence[np.ndarray]) -> np.ndarray:
    """HF tensor(s) -> our param (see the table in the module docstring)."""
    if self.kind == 'copy':
      return np.asarray(hf[0])
    if self.kind in ('linear', 'relpos'):
      return np.ascontiguousarray(np.asarray(hf[0]).T)
    if self.kind in ('qkv', 'out'):
      return np.ascontiguousarray(np.asarray(hf[0]).T).reshape(self.shape)
    return np.stack([np.asarray(h).T for h in hf])                       # experts

  def to_hf(self, ours: np.ndarray) -> List[np.ndarray]:
    """Our param -> the HF tensor(s), inverse of `to_ours`."""
    ours = np.asarray(ours)
    if self.kind == 'copy':
      return [ours]
    if self.kind in ('linear', 'relpos'):
      return [np.ascontiguousarray(ours.T)]
    if self.kind == 'qkv':
      return [np.ascontiguousarray(ours.reshape(self.shape[0], -1).T)]
    if self.kind == 'out':
      return [np.ascontiguousarray(ours.reshape(-1, self.shape[2]).T)]
    return [np.ascontiguousarray(e.T) for e in ours]                     # experts


def _raise_if(problems: List[str], what: str):
  if problems:
    shown = problems[:60] + ([f'... and {len(problems) - 60} more'] if len(problems) > 60 else [])
    raise ValueError(f'{what}: {len(problems)} problem(s):\n  ' + '\n  '.join(shown))


def hf_to_flat(entries: Iterable[Entry], tensors: Mapping[str, np.ndarray],
               ignorable: Iterable[str] = (), what: str = 'HF checkpoint does not fit the config'
               ) -> Dict[str, np.ndarray]:
  """Flat params {'a/b/c': array} from HF tensors; every tensor must be used or ignorable."""
  entries = list(entries)
  problems, used = [], set(ignorable)
  for e in entries:
    for name in e.hf_names:
      used.add(name)
      if name not in tensors:
        problems.append(f'missing tensor {name} (for {e.path}, expected shape {e.hf_shape()})')
      elif tuple(tensors[name].shape) != e.hf_shape():
        problems.append(f'tensor {name} has shape {tuple(tensors[name].shape)}, expected '
                        f'{e.hf_shape()} (for {e.path})')
  problems += [f'unexpected tensor {n} {tuple(tensors[n].shape)}'
               for n in sorted(set(tensors) - used)]
  _raise_if(problems, what)
  return {e.path: e.to_ours([tensors[n] for n in e.hf_names]) for e in entries}


def flat_to_hf(entries: Iterable[Entry], flat: Mapping[str, np.ndarray],
               what: str = 'params do not fit the config') -> Dict[str, np.ndarray]:
  """HF tensors from flat params; every param must be covered by an entry, shapes must match."""
  entries = list(entries)
  problems = []
  for e in entries:
    if e.path not in flat:
      problems.append(f'missing param {e.path} (expected shape {e.shape})')
    elif tuple(np.shape(flat[e.path])) != e.shape:
      problems.append(f'param {e.path} has shape {tuple(np.shape(flat[e.path]))}, expected '
                      f'{e.shape}')
  problems += [f'unexpected param {p} {tuple(np.shape(flat[p]))}'
               for p in sorted(set(flat) - {e.path for e in entries})]
  _raise_if(problems, what)
  out: Dict[str, np.ndarray] = {}
  for e in entries:
    out.update(zip(e.hf_names, e.to_hf(flat[e.path])))
  return out
