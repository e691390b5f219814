"""Noticing a lost process of a multi-process run, and leaving together at the end.

jax.distributed's coordination service declares a process dead once its heartbeats stop for
`heartbeat_timeout_s`. By default it then aborts every other process with a C++ fatal error,
wherever it happens to be (a barrier, a collective, a checkpoint write). `distributed.initialize`
turns on `jax_enable_recoverability`, under which the service only records the death, and
starts a `Watchdog` here, whose threads ask the coordinator every `poll_s` which processes are
alive and, once one is missing, end their own process with status 1 and one line naming the
lost process. Nothing else would wake a survivor waiting for the dead one: the trainer's
per-step barrier waits out its hour, an NCCL or ICI collective forever.

A process that fails with an error (`exit_after_failure`) records it under `moe_flan/leaving/`;
the others' watchdogs stop them at their next poll, naming it, so nobody waits for a peer that
has given up.

Leaving. Under recoverability JAX's shutdown no longer waits for all processes, and process 0,
when it serves the coordinator, leaving first would make the others' clients abort. So at exit
every process records `done`, waits at a last barrier while the watchdog still watches (a peer
that dies there is reported, not waited for), then the other processes disconnect and
process 0 goes last.

Limit of the default layout: losing process 0 loses the coordinator itself; the survivors' JAX
clients then abort (C++ fatal error) within a second, on a runtime thread, before any Python
code can run. JAX's client reports it to a `missed_heartbeat_callback` whose default aborts,
and jaxlib 0.10.2 cannot call a Python one (launch/README.md, "Preemption and lost processes").
With the coordinator in a process of its own (coordinator.py, `--external_coordinator`) no
training process serves it, nobody needs to leave last, and losing process 0 is reported like
losing any other.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, NoReturn, Optional

import jax

POLL_S = 2.0
LEAVE_TIMEOUT_S = 60 * 60        # the last barrier: the slowest process's final work
_PREFIX = 'moe_flan/leaving/'
_EXITED = 'moe_flan/exited/'
_DONE = 'done'
_FAILED = 'failed: '

_watchdog: Optional['Watchdog'] = None


def _first_line(error: BaseException) -> str:
  return f'{type(error).__name__}: {(str(error).strip().splitlines() or [""])[0]}'


def _bounded(fn: Callable[[], Any], timeout_s: float) -> None:
  """Runs `fn` in a daemon thread for at most `timeout_s` (a call into a dead runtime may
  block); its result and errors are dropped."""
  def call():
    try:
      fn()
    except Exception:  # pylint: disable=broad-except  # leaving anyway
      pass
  thread = threading.Thread(target=call, daemon=True)
  thread.start()
  thread.join(timeout_s)


class Watchdog:
  """Watches the other processes of this run through the coordinator (see the module doc).

  Two daemon threads: a poller that keeps calling `get_live_nodes` (a rendezvous of all live
  processes' pollers, so it runs until this process is gone or disconnects) and a judge that
  every `poll_s` compares its latest answer with the `moe_flan/leaving/` keys: a peer gone
  without a key died; a peer whose key holds an error failed; one whose key says `done` has
  passed the last barrier, which all processes reach before any leaves.
  """

  def __init__(self, client, prog: str, heartbeat_timeout_s: float, poll_s: float = POLL_S,
               external_coordinator: bool = False):
    self.client = client
    self.external_coordinator = external_coordinator
    self.prog = prog
    self.heartbeat_timeout_s = heartbeat_timeout_s
    self.poll_s = poll_s
    self.me, self.count = jax.process_index(), jax.process_count()
    self.others = frozenset(range(self.count)) - {self.me}
    self.serves_coordinator = self.me == 0 and not external_coordinator
    self.leaving: Optional[str] = None    # this process's own key value, once set
    self.error: Optional[BaseException] = None   # what the main thread ran into, if anything
    self._live = frozenset(range(self.count))    # the poller's latest answer
    self._poll_error: Optional[BaseException] = None   # the coordinator did not answer
    self._closing = threading.Event()     # this process disconnects: stop polling
    self._exiting = threading.Lock()      # one exit, from whichever thread gets there first
    self._poller = threading.Thread(target=self._poll_loop, name='moe_flan-live', daemon=True)
    self._judge = threading.Thread(target=self._judge_loop, name='moe_flan-judge', daemon=True)

  def start(self) -> 'Watchdog':
    self._poller.start()
    self._judge.start()
    return self

  def _poll_loop(self) -> None:
    everyone = list(range(self.count))
    while not self._closing.is_set():
      try:
        self._live = frozenset(self.client.get_live_nodes(everyone))
      except Exception as e:  # pylint: disable=broad-except  # the coordinator is gone
        self._poll_error = e
        return
      time.sleep(self.poll_s)

  def _keys(self, prefix: str) -> dict[int, str]:
    """{process: value} of the keys under `prefix` (each named by its process index)."""
    return {int(key.rsplit('/', 1)[1]): value
            for key, value in self.client.key_value_dir_get(prefix)}

  def _leaving_keys(self) -> dict[int, str]:
    return self._keys(_PREFIX)

  def _deadline(self) -> float:
    """When waiting for the others ends: the coordinator has declared a silent one dead by
    then and a watchdog poll has seen it."""
    return time.monotonic() + self.heartbeat_timeout_s + 3 * self.poll_s + 10

  def _judge_loop(self) -> None:
    while not self._closing.is_set():
      try:
        if self._poll_error is not None:
          raise self._poll_error
        leaving = self._leaving_keys()
      except Exception as e:  # pylint: disable=broad-except  # the coordinator is gone
        if self.leaving is None:
          if self.external_coordinator:
            self.exit(f'lost the external coordinator: {_first_line(e)}')
          self.exit(f'lost the coordinator (process 0): {_first_line(e)}', dead=frozenset({0}))
        return
      gone = self.others - self._live
      died = sorted(p for p in gone if p not in leaving)
      failed = sorted(p for p in self.others if leaving.get(p, '').startswith(_FAILED))
      if died:
        self.exit(f'lost process{"es" if len(died) > 1 else ""} {", ".join(map(str, died))} '
                  f'(no heartbeat for {self.heartbeat_timeout_s:g} s; see its log)',
                  dead=frozenset(died))
      if failed and not (self.leaving or '').startswith(_FAILED):   # else `fail` decides
        self.exit('; '.join(f'process {p} failed: {leaving[p][len(_FAILED):]}' for p in failed))
      if self.leaving is not None and gone == self.others:
        return      # the normal end, on process 0: everyone else has disconnected
      time.sleep(self.poll_s)

  def exit(self, why: Optional[str], error: Optional[BaseException] = None,
           dead: frozenset[int] = frozenset(), status: int = 1) -> NoReturn:
    """Prints why this process stops (`why`, then `error` or else the main thread's error) in
    one line, records it for the others and exits (process 0 once the others know)."""
    if not self._exiting.acquire(blocking=False):   # the other thread is already exiting
      while True:
        time.sleep(60)
    error = error or self.error
    line = ': '.join(part for part in (why, error and _first_line(error)) if part)
    print(f'{self.prog}: error: process {self.me} of {self.count} stops: {line}',
          file=sys.stderr, flush=True)
    self._record(_FAILED + line)
    if self.serves_coordinator:
      self._wait_until_others_exit(dead)
    else:
      _bounded(lambda: self.client.key_value_set(_EXITED + str(self.me), '1'), 10)
    sys.stdout.flush()
    os._exit(status)  # pylint: disable=protected-access  # no shutdown barrier, no atexit

  def _record(self, leaving: str) -> None:
    self.leaving = leaving
    _bounded(lambda: self.client.key_value_set(_PREFIX + str(self.me), leaving,
                                               allow_overwrite=True), 10)

  def fail(self, error: BaseException, status: int) -> NoReturn:
    """The main thread's `error`: records it at once (a live peer stops at its next poll and
    records why), then waits until every other process has recorded something (all failed
    alike: exit `status`) or the judge finds a peer dead (it exits 1 naming it, with
    `error`), at most until the coordinator's heartbeat timeout."""
    self.error = error
    self._record(_FAILED + _first_line(error))
    deadline = self._deadline()
    while time.monotonic() < deadline:
      try:
        if self.others <= set(self._leaving_keys()):
          break
      except Exception:  # pylint: disable=broad-except  # the coordinator is gone
        break
      time.sleep(0.25)
    self.exit(None, error, status=status)

  def _wait_until_others_exit(self, dead: frozenset[int]) -> None:
    """Process 0 serves the coordinator (by default), and the others' clients abort once it
    is gone: it waits (bounded) until every other process is about to exit (its last act is a
    key) or is dead. The poller keeps running meanwhile: the others' polls need this process's."""
    deadline = self._deadline()
    while time.monotonic() < deadline:
      try:
        exited = set(self._keys(_EXITED))
      except Exception:  # pylint: disable=broad-except
        return
      if self.others <= exited | dead | (self.others - self._live):
        time.sleep(1.0)   # their os._exit, after the key
        return
      time.sleep(0.25)

  def leave_done(self) -> None:
    """The normal end: all processes meet at a last barrier, then the others disconnect and
    process 0, when it serves the coordinator, goes last."""
    if self.leaving is not None:
      return
    self.leaving = _DONE
    self.client.key_value_set(_PREFIX + str(self.me), _DONE)
    try:
      self.client.wait_at_barrier('moe_flan/leave', LEAVE_TIMEOUT_S * 1000)
    except Exception as e:  # pylint: disable=broad-except  # a peer never arrived
      self.exit(f'not all processes reached the end: {_first_line(e)}')
    if self.serves_coordinator:
      self._judge.join(LEAVE_TIMEOUT_S)   # returns once the others have disconnected
    self._closing.set()
    self._judge.join(self.poll_s + 10)
    # A call in flight ends with process 0's next poll (or, on process 0, at once); none may
    # still run when JAX shuts the client down.
    self._poller.join(3 * self.poll_s + 10)


def watching() -> bool:
  """True in a multi-process run started through `distributed.initialize`."""
  return _watchdog is not None


def start(client, prog: str, heartbeat_timeout_s: float, poll_s: float = POLL_S,
          external_coordinator: bool = False) -> Watchdog:
  """Starts this process's watchdog and registers the ordered leave at interpreter exit
  (after JAX's own exit handler is registered, so it runs before JAX shuts the client down)."""
  global _watchdog
  _watchdog = Watchdog(client, prog, heartbeat_timeout_s, poll_s, external_coordinator).start()
  atexit.register(_watchdog.leave_done)
  return _watchdog


def exit_after_failure(prog: str, error: BaseException) -> NoReturn:
  """Ends a multi-process run's process after `error`, without JAX's shutdown: status 2 with
  one line for a ValueError (bad input, found alike by every process), else the traceback and
  status 1; status 1 naming the lost process when a peer died (a failed collective, usually).

  The error is recorded for the other processes, whose watchdogs stop them at the next poll;
  this process waits for them (or for the coordinator to declare a silent one dead).
  """
  status = 2 if isinstance(error, ValueError) else 1
  if status == 1:
    traceback.print_exception(error, file=sys.stderr)
  if _watchdog is not None:
    _watchdog.fail(error, status)   # does not return
  print(f'{prog}: error: process {jax.process_index()} of {jax.process_count()} stops: '
        f'{_first_line(error)}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(status)  # pylint: disable=protected-access
