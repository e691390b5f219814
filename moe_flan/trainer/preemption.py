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

When another process dies, the survivors' next collective fails; `exit_after_failure` names the
lost process and exits 1 at once, without jax.distributed's shutdown barrier (which would wait
for the dead process, then abort).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from typing import Any, NoReturn, Optional

import jax

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". Requeue on it
# (launch/README.md: SLURM, Kubernetes); 0 stays "finished", anything else "failed".
PREEMPTED_EXIT_CODE = 75


class StopFlag:
  """`set` becomes True on SIGTERM (main thread only: signal handlers live there)."""

  def __init__(self):
    self.set = False
    self.calls = 0   # `agreed` calls so far: each has its own barrier and keys
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
  call = flag.calls
  flag.calls += 1
  prefix = f'moe_flan/stop_agreement/{call}/'
  if flag.set:
    client.key_value_set(prefix + str(jax.process_index()), '1')
  client.wait_at_barrier(f'moe_flan/stop_agreement_{call}', _AGREEMENT_TIMEOUT_MS)
  return bool(client.key_value_dir_get(prefix))


def _lost_processes(timeout_s: float) -> Optional[list[int]]:
  """Ids of processes the coordinator no longer counts as alive; None if it did not say in time
  (its answer waits on the survivors, which may be stuck in a collective themselves)."""
  client = _client()
  if client is None:
    return None
  everyone = list(range(jax.process_count()))
  answer: dict[str, Any] = {}

  def ask():
    try:
      answer['live'] = client.get_live_nodes(everyone)
    except Exception as e:  # pylint: disable=broad-except  # a dead coordinator: no answer
      answer['error'] = e

  thread = threading.Thread(target=ask, daemon=True)
  thread.start()
  thread.join(timeout_s)
  if 'live' not in answer:
    return None
  return sorted(set(everyone) - set(answer['live']))


def exit_after_failure(prog: str, error: BaseException, timeout_s: float = 15.0) -> NoReturn:
  """Ends a multi-process run's process after `error`, at once and with status 1.

  A normal interpreter exit would run jax.distributed's shutdown barrier, which waits for every
  process, dead ones included, and then aborts with a C++ check failure; instead this names the
  lost processes (when the coordinator can tell), flushes and leaves without that barrier.
  """
  me, count = jax.process_index(), jax.process_count()
  lost = _lost_processes(timeout_s)
  first_line = (str(error).strip().splitlines() or [''])[0]
  if lost:
    print(f'{prog}: error: process {me} of {count} stops: lost process'
          f'{"es" if len(lost) > 1 else ""} {", ".join(map(str, lost))} (no longer connected to '
          f'the coordinator; see its log): {type(error).__name__}: {first_line}',
          file=sys.stderr, flush=True)
  else:
    traceback.print_exception(error, file=sys.stderr)
    print(f'{prog}: error: process {me} of {count} stops after {type(error).__name__}: '
          f'{first_line}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access
