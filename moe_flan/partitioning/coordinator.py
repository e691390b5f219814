"""jax.distributed's coordination service in a small process of its own (opt-in).

By default the service runs inside training process 0, so losing process 0 loses the service,
and jax/jaxlib 0.10.2's clients then abort the survivors with a C++ fatal error. Run here
instead, every training process is a client only: the service outlives any of them, declares
a silent one dead after the heartbeat timeout, and each survivor's watchdog (liveness.py)
ends it with one line naming the lost process, whichever process it was.

    python -m moe_flan.partitioning.coordinator --bind_address='[::]:8476' --num_processes=N &
    python -m moe_flan.train ... --coordinator_address=HOST:8476 --num_processes=N \\
        --process_id=I --external_coordinator          # on every host

(`--distributed_auto_detect` instead of address and ids works too: set JAX_COORDINATOR_PORT
to the port served here on every host.) It serves until SIGTERM or SIGINT, then exits 0: the
launcher stops it after the training processes have exited (launch/local_multiprocess.sh
with EXTERNAL_COORDINATOR=1; launch/README.md for pods). The service's own process must
outlive the run: losing it ends every training process as losing process 0 does by default.

JAX has no public constructor for a stand-alone service; this uses the jaxlib function
`jax.distributed.initialize` itself calls on process 0 (`get_distributed_runtime_service`),
with the same arguments.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, Optional, Sequence

from moe_flan.partitioning import distributed

DEFAULT_HEARTBEAT_TIMEOUT_S = distributed.DEFAULT_HEARTBEAT_TIMEOUT_S   # must be theirs
SHUTDOWN_TIMEOUT_S = 300            # JAX's default


def serve(bind_address: str, num_processes: int,
          heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S) -> Any:
  """Starts a coordination service for `num_processes` clients on `bind_address` (HOST:PORT)
  and returns it (`.shutdown()` stops it). Recoverable, as `distributed.initialize` makes
  every training process: a dead client is recorded and reported to the others through
  `get_live_nodes`, not turned into an error pushed to every client (which aborts them).

  Raises:
    ValueError: a setting out of range, naming it.
    RuntimeError: this jaxlib has no stand-alone service, or the address cannot be bound.
  """
  if num_processes < 1:
    raise ValueError(f'num_processes={num_processes} must be >= 1')
  if heartbeat_timeout_s < 1:
    raise ValueError(f'heartbeat_timeout_s={heartbeat_timeout_s} must be >= 1')
  host, port = distributed.host_and_port('bind_address', bind_address)
  probe = '127.0.0.1' if host.strip('[]') in ('::', '0.0.0.0') else host
  if distributed.accepts_connections(f'{probe}:{port}'):
    # gRPC would share the port with it (SO_REUSEPORT): two services, clients split between.
    raise RuntimeError(f'bind_address={bind_address!r}: port {port} is already served by '
                       f'another process')
  try:
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
    get_service = _jax.get_distributed_runtime_service
  except (ImportError, AttributeError) as e:
    import jax  # pylint: disable=g-import-not-at-top
    raise RuntimeError(f'jax {jax.__version__} has no jaxlib get_distributed_runtime_service '
                       f'({e}); run without --external_coordinator') from e
  try:
    return get_service(bind_address, num_processes, heartbeat_timeout=heartbeat_timeout_s,
                       shutdown_timeout=SHUTDOWN_TIMEOUT_S, recoverable=True)
  except Exception as e:  # pylint: disable=broad-except  # XlaRuntimeError: bind failed
    raise RuntimeError(f'cannot serve the coordinator on bind_address={bind_address!r}: '
                       f'{e}') from e


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='moe_flan.partitioning.coordinator', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--bind_address', required=True,
                      help="HOST:PORT to serve on, e.g. '[::]:8476' (all interfaces)")
  parser.add_argument('--num_processes', type=int, required=True,
                      help='number of training processes in the job')
  parser.add_argument('--heartbeat_timeout_s', type=int, default=DEFAULT_HEARTBEAT_TIMEOUT_S,
                      help='seconds without heartbeats after which a process counts as lost '
                           '(the training processes\' --distributed_heartbeat_timeout_s)')
  args = parser.parse_args(argv)
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
  try:
    service = serve(args.bind_address, args.num_processes, args.heartbeat_timeout_s)
  except (ValueError, RuntimeError) as e:
    print(f'{parser.prog}: error: {e}', file=sys.stderr)
    return 2
  print(f'{parser.prog}: serving {args.num_processes} processes on {args.bind_address} '
        f'(heartbeat timeout {args.heartbeat_timeout_s} s)', file=sys.stderr, flush=True)
  while not stop.wait(3600):
    pass
  service.shutdown()
  return 0


if __name__ == '__main__':
  sys.exit(main())
