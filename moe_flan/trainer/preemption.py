"""Stopping a run on SIGTERM at a step every process agrees on; leaving when a process is lost.

A scheduler preempting a pod may signal one host only. Each process records SIGTERM in a
`StopFlag`; after every step all processes combine their flags (`agreed`: a barrier and a key
listing on jax.distributed's coordination service, the same answer everywhere), so every process
leaves the loop after the same step, saves that step's checkpoint together and exits with
PREEMPTED_EXIT_CODE. A process that acted on its own flag would
stop for the save while the others entered the next step's collectives and waited forever.

JAX's own preemption service (`multihost_utils.reached_preemption_sync_point`) installs a C++
SIGTERM handler, which a Python handler replaces, and exists only under jax.distributed. A device
all-gather would open a gloo communicator of its own on CPU, whose 30 s rendezvous fails when
processes drift apart (a slow compile). The barrier costs one round trip to the coordinator per step, which the loop pays
anyway to check the loss for NaNs.

A process that dies leaves the others waiting at this barrier or in a collective;
`moe_flan.partitioning.liveness` ends them with status 1, naming the lost process.
"""
from __future__ import annotations

import itertools
import signal
import threading

import jax

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". Requeue on it
# (launch/README.md: SLURM, Kubernetes); 0 stays "finished", anything else "failed".
PREEMPTED_EXIT_CODE = 75


class StopFlag:
  """`set` becomes True on SIGTERM (main thread only: signal handlers live there)."""

  def __init__(self):
    self.set = False
    self._old = None

  def __enter__(self) -> 'StopFlag':
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.set = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


_AGREEMENT_TIMEOUT_MS = 60 * 60 * 1000   # the slowest process's step, first compile included
# `agreed` calls so far in this process: each has its own barrier and keys, also when a process
# runs several entry points in turn (a barrier id the coordinator has seen passed is no use).
_calls = itertools.count()


def _client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  # the runtime client
  return distributed.global_state.client


def agreed(flag: StopFlag) -> bool:
  """True on every process iff any process's flag was set before this call; all processes must
  call it together (once per step, in the same order); no communication for a single process.

  Through jax.distributed's coordination service: a process whose flag is set writes a key for
  this call, all wait at this call's barrier, then all list this call's keys.
  """
  if jax.process_count() == 1:
    return flag.set
  client = _client()
  call = next(_calls)
  prefix = f'moe_flan/stop_agreement/{call}/'
  if flag.set:
    client.key_value_set(prefix + str(jax.process_index()), '1')
  client.wait_at_barrier(f'moe_flan/stop_agreement_{call}', _AGREEMENT_TIMEOUT_MS)
  return bool(client.key_value_dir_get(prefix))
