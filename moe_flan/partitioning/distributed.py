"""Multi-host start-up: `jax.distributed.initialize` from flags or environment, failing fast.

One process per host (TPU VM pod) or per GPU (SLURM); all run the same command. Settings come,
in order, from the arguments/flags, the environment (MOE_FLAN_COORDINATOR_ADDRESS,
MOE_FLAN_NUM_PROCESSES, MOE_FLAN_PROCESS_ID), or JAX's own cluster auto-detection
(SLURM with more than one task; Cloud TPU pods when asked for with `auto_detect=True`).
A single process with nothing set runs without a distributed runtime.

Flags (argparse, like the entry points): `add_flags(parser)`, then `initialize_from_flags(args)`
first thing in `main`, before any other JAX call.

A started runtime runs with `jax_enable_recoverability` and a `liveness.Watchdog`: a process
that dies makes the others exit 1 within `heartbeat_timeout_s` (plus a poll), naming it, instead
of aborting or waiting for it; at the end all processes leave together (see liveness.py).
By default process 0 serves JAX's coordination service, and losing process 0 aborts the others
(liveness.py); with `external_coordinator` (`--external_coordinator`,
MOE_FLAN_EXTERNAL_COORDINATOR=1) the service runs in a process of its own
(`python -m moe_flan.partitioning.coordinator`) and losing any process is a clean stop.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from typing import Optional

import jax

from moe_flan.partitioning import liveness

ENV_COORDINATOR = 'MOE_FLAN_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'MOE_FLAN_NUM_PROCESSES'
ENV_PROCESS_ID = 'MOE_FLAN_PROCESS_ID'
ENV_EXTERNAL_COORDINATOR = 'MOE_FLAN_EXTERNAL_COORDINATOR'
# jax.distributed.initialize always starts a coordination service on process 0; under an
# external coordinator that one is never used (every client connects to the external one), so
# it listens on an ephemeral loopback port where nothing can reach it by mistake.
_UNUSED_SERVICE_BIND_ADDRESS = '127.0.0.1:0'
_SLURM_VARS = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
               'SLURM_LOCALID')
DEFAULT_TIMEOUT_S = 300
DEFAULT_HEARTBEAT_TIMEOUT_S = 100   # JAX's default


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value in (None, ''):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'environment variable {name}={value!r} must be an integer') from None


def slurm_detected() -> bool:
  """True inside a multi-task SLURM step, where JAX finds coordinator/ids by itself."""
  return all(v in os.environ for v in _SLURM_VARS) and (_env_int('SLURM_NTASKS') or 1) > 1


def check_settings(coordinator_address: Optional[str], num_processes: Optional[int],
                   process_id: Optional[int]) -> None:
  """Raises ValueError naming the values when an explicit multi-process setting is incomplete."""
  if num_processes is not None and num_processes < 1:
    raise ValueError(f'num_processes={num_processes} must be >= 1')
  if num_processes is not None and num_processes > 1 and not coordinator_address:
    raise ValueError(
        f'num_processes={num_processes} but no coordinator_address was given: pass '
        f'--coordinator_address=HOST:PORT (process 0\'s host) or set {ENV_COORDINATOR}')
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError(
          f'coordinator_address={coordinator_address!r} needs num_processes (got '
          f'{num_processes}) and process_id (got {process_id}) as well')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'process_id={process_id} must be in [0, num_processes={num_processes})')
    host_and_port('coordinator_address', coordinator_address)


def host_and_port(name: str, address: str) -> tuple[str, str]:
  """`address` split into (HOST, PORT); ValueError naming `name` unless it looks like that."""
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise ValueError(f'{name}={address!r} must look like HOST:PORT')
  return host, port


def accepts_connections(coordinator_address: str) -> bool:
  """True if HOST:PORT accepts a TCP connection now."""
  host, _, port = coordinator_address.rpartition(':')
  try:
    with socket.create_connection((host.strip('[]'), int(port)), timeout=2.0):
      return True
  except OSError:
    return False


def wait_for_coordinator(coordinator_address: str, timeout_s: float,
                         external: bool = False) -> None:
  """Blocks until HOST:PORT accepts TCP connections; RuntimeError after `timeout_s`.

  JAX's own client aborts the whole process (a C++ fatal error, no Python exception) when the
  coordinator never answers, so the processes that do not serve it check reachability first
  and fail cleanly.
  """
  who = ('start `python -m moe_flan.partitioning.coordinator` there' if external else
         'start process 0 (which serves it)')
  host, _, port = coordinator_address.rpartition(':')
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip('[]'), int(port)), timeout=2.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise RuntimeError(
            f'coordinator_address={coordinator_address!r} is not reachable after {timeout_s}s '
            f'({e}); {who} or fix --coordinator_address') from e
      time.sleep(0.25)


def _check_coordinator(coordinator_address: str, process_id: int, external: bool,
                       timeout_s: float) -> None:
  """Processes that do not serve the coordinator wait until it is reachable; process 0, which
  will serve it, refuses an address another process serves already (gRPC may share the port:
  two services, the clients split between them)."""
  if process_id != 0 or external:
    wait_for_coordinator(coordinator_address, timeout_s, external)
  elif accepts_connections(coordinator_address):
    raise RuntimeError(
        f'coordinator_address={coordinator_address!r} is already served by another process: '
        f'if it is moe_flan.partitioning.coordinator, pass --external_coordinator to every '
        f'process; else pick a free port')


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               *,
               auto_detect: bool = False,
               local_device_ids: Optional[list[int]] = None,
               timeout_s: int = DEFAULT_TIMEOUT_S,
               heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
               external_coordinator: Optional[bool] = None,
               prog: str = 'moe_flan') -> bool:
  """Starts JAX's distributed runtime when this is a multi-process run.

  Args:
    coordinator_address: 'host:port' of the coordination service: process 0's, or the
      external one's.
    num_processes: total processes in the job.
    process_id: this process's index in [0, num_processes).
    auto_detect: let JAX find the cluster (Cloud TPU VM pods, SLURM, Open MPI, k8s).
    local_device_ids: restrict this process to these local accelerators.
    timeout_s: give up (raise) when the processes have not all connected by then, instead of
      waiting forever for a coordinator that is not there.
    heartbeat_timeout_s: a process silent this long counts as lost (the others then stop).
    external_coordinator: the service runs in its own process (moe_flan.partitioning.coordinator,
      started first with the same heartbeat timeout), and every process here is a client only;
      None reads $MOE_FLAN_EXTERNAL_COORDINATOR (1 or 0), default False.
    prog: the program name that starts the lost-process messages.
  Returns:
    True if a distributed runtime was started, False for a plain single-process run.
  Raises:
    ValueError: incomplete or inconsistent settings (naming them).
    RuntimeError: the coordinator could not be reached within `timeout_s`.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  check_settings(coordinator_address, num_processes, process_id)
  if external_coordinator is None:
    external_coordinator = bool(_env_int(ENV_EXTERNAL_COORDINATOR))
  if jax.distributed.is_initialized():
    return True
  if coordinator_address is None and not (auto_detect or slurm_detected()):
    return False  # single process; num_processes is None or 1 here (check_settings)
  kwargs = {}
  if coordinator_address is not None:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  external = ', coordinator in its own process' if external_coordinator else ''
  print(f'moe_flan: jax.distributed.initialize({kwargs or "auto-detect"}){external}, '
        f'timeout {timeout_s}s', file=sys.stderr, flush=True)
  if heartbeat_timeout_s < 1:
    raise ValueError(f'heartbeat_timeout_s={heartbeat_timeout_s} must be >= 1')
  if coordinator_address is not None:
    _check_coordinator(coordinator_address, process_id, external_coordinator, timeout_s)
  if external_coordinator:
    kwargs['coordinator_bind_address'] = _UNUSED_SERVICE_BIND_ADDRESS
  _start_runtime(kwargs, local_device_ids, timeout_s, heartbeat_timeout_s,
                 f'coordinator_address={coordinator_address!r}, num_processes={num_processes}, '
                 f'process_id={process_id}')
  _watch(prog, heartbeat_timeout_s, external_coordinator)
  return True


def _start_runtime(kwargs: dict, local_device_ids: Optional[list[int]], timeout_s: int,
                   heartbeat_timeout_s: int, settings: str) -> None:
  """`jax.distributed.initialize(**kwargs)`, recoverable; RuntimeError naming `settings`."""
  # Without it, the coordinator aborts every process (a C++ fatal error, wherever it is) once
  # one stops sending heartbeats; with it, the watchdog stops them cleanly.
  jax.config.update('jax_enable_recoverability', True)
  try:
    jax.distributed.initialize(local_device_ids=local_device_ids,
                               initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s, **kwargs)
  except (RuntimeError, ValueError) as e:  # XlaRuntimeError is a RuntimeError
    raise RuntimeError(f'jax.distributed.initialize failed ({settings}, timeout '
                       f'{timeout_s}s): {e}') from e


def _watch(prog: str, heartbeat_timeout_s: int, external_coordinator: bool) -> None:
  """Logs the processes and devices; starts a multi-process run's lost-process watchdog."""
  logging.info('process %d of %d; %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.process_count() > 1:
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
    liveness.start(jax_distributed.global_state.client, prog, heartbeat_timeout_s,
                   external_coordinator=external_coordinator)


# ---- flags ------------------------------------------------------------------------------------
def add_flags(parser: argparse.ArgumentParser) -> None:
  """Adds --coordinator_address, --num_processes, --process_id, --distributed_auto_detect and
  --distributed_timeout_s to an argparse parser (the entry points' flag style)."""
  parser.add_argument('--coordinator_address', default=None,
                      help=f'HOST:PORT of process 0 for multi-process runs (or ${ENV_COORDINATOR})')
  parser.add_argument('--num_processes', type=int, default=None,
                      help=f'number of processes in the job (or ${ENV_NUM_PROCESSES})')
  parser.add_argument('--process_id', type=int, default=None,
                      help=f"this process's id (or ${ENV_PROCESS_ID})")
  parser.add_argument('--distributed_auto_detect', action='store_true',
                      help='let JAX detect the cluster (Cloud TPU VM pods; SLURM)')
  parser.add_argument('--distributed_timeout_s', type=int, default=DEFAULT_TIMEOUT_S,
                      help='seconds to wait for all processes to connect before failing')
  parser.add_argument('--distributed_heartbeat_timeout_s', type=int,
                      default=DEFAULT_HEARTBEAT_TIMEOUT_S,
                      help='seconds without heartbeats after which a process counts as lost '
                           'and the others stop')
  parser.add_argument('--external_coordinator', action='store_true', default=None,
                      help='the coordination service runs in its own process (python -m '
                           'moe_flan.partitioning.coordinator) at --coordinator_address, so '
                           f'that losing any process stops the others cleanly (or '
                           f'${ENV_EXTERNAL_COORDINATOR}=1)')


def initialize_from_flags(args: argparse.Namespace) -> bool:
  """`initialize()` with the flags of `add_flags`; call before any other JAX call."""
  return initialize(args.coordinator_address, args.num_processes, args.process_id,
                    auto_detect=args.distributed_auto_detect,
                    timeout_s=args.distributed_timeout_s,
                    heartbeat_timeout_s=args.distributed_heartbeat_timeout_s,
                    external_coordinator=args.external_coordinator)
