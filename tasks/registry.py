"""Idempotent-safe seqio registration and name lookup with 'did you mean' errors.

Re-running a registration with the same definition (e.g. `importlib.reload`, or a module imported
under two names) is a no-op; registering a *different* definition under a taken name raises.
A definition is identified by a caller-supplied fingerprint string.
"""
from __future__ import annotations

import difflib
from typing import Dict, Sequence

import seqio

_FINGERPRINTS: Dict[str, str] = {}


def _check(kind: str, name: str, fingerprint: str, registry) -> bool:
  """True when `name` is already registered with this fingerprint (nothing to do)."""
  if name in _FINGERPRINTS:
    if _FINGERPRINTS[name] == fingerprint:
      return True
    raise ValueError(f'Duplicate {kind} registration: {name!r} is already registered with a '
                     f'different definition ({_FINGERPRINTS[name]!r} vs {fingerprint!r}); '
                     'pick another name')
  if name in registry.names():
    raise ValueError(f'Duplicate {kind} registration: {name!r} was registered outside tasks/ '
                     '(seqio registry); pick another name')
  return False


def add_task(name: str, fingerprint: str, **kwargs) -> seqio.Task:
  """`seqio.TaskRegistry.add(name, **kwargs)` unless the same definition is already there."""
  if not _check('task', name, fingerprint, seqio.TaskRegistry):
    seqio.TaskRegistry.add(name, **kwargs)
    _FINGERPRINTS[name] = fingerprint
  return seqio.TaskRegistry.get(name)


def add_mixture(name: str, tasks: Sequence, fingerprint: str, **kwargs) -> seqio.Mixture:
  """`seqio.MixtureRegistry.add(name, tasks, **kwargs)` unless already there identically."""
  if not _check('mixture', name, fingerprint, seqio.MixtureRegistry):
    seqio.MixtureRegistry.add(name, tasks, **kwargs)
    _FINGERPRINTS[name] = fingerprint
  return seqio.MixtureRegistry.get(name)


def remove_if_different(name: str, fingerprint: str) -> None:
  """Unregisters the task or mixture `name` when it was registered here with another
  definition (e.g. a benchmark task read from another directory), so it can be re-added."""
  if _FINGERPRINTS.get(name, fingerprint) == fingerprint:
    return
  for reg in (seqio.TaskRegistry, seqio.MixtureRegistry):
    if name in reg.names():
      reg.remove(name)
  del _FINGERPRINTS[name]


def all_names() -> list[str]:
  return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def get(name: str):
  """The registered Mixture (preferred) or Task; unknown -> ValueError listing closest names."""
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  close = difflib.get_close_matches(name, all_names(), n=5, cutoff=0.5)
  hint = f'closest registered names: {close}' if close else (
      f'no close match among {len(all_names())} registered names; '
      'try `python -m tasks.inspect --list`')
  raise ValueError(f'Unknown task or mixture {name!r}; {hint}')
