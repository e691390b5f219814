#!/usr/bin/env bash
# N processes on this machine, coordinator on 127.0.0.1: a multi-host run simulated on one box
# (CPU devices, gloo collectives). Same gin files and flags as a single-process run:
#
#   launch/local_multiprocess.sh 2 --gin_file=gin/runs/quickstart.gin \
#       --gin_file=gin/partitioning/expert_parallel.gin --gin.EXPERT_PARTITIONS=2 \
#       --gin.MODEL_DIR="'/tmp/multiprocess'"
#
# Arguments: NUM_PROCESSES, then the arguments of every process. Each process also gets
#   --coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=I  (PORT: a free port).
# Environment (optional):
#   DEVICES_PER_PROCESS=2        CPU devices per process (JAX_NUM_CPU_DEVICES)
#   COMMAND="-m moe_flan.train"  what each process runs before the arguments (a script path works)
#   PYTHON=.venv/bin/python      interpreter;  LOG_DIR=<temp dir>  one log per process
#   TIMEOUT_S=1800               kill everything after this long
#   EXTERNAL_COORDINATOR=1       serve jax.distributed's coordinator from its own process
#                                (python -m moe_flan.partitioning.coordinator, log coordinator.log)
#                                instead of process 0, and pass --external_coordinator: losing
#                                process 0 then stops the others cleanly too
# Exits non-zero (and stops the other processes) as soon as one process fails. A process that exits
# 75 (stopped by SIGTERM after saving: preempted, requeue) is no failure: the others stop after the
# same step by themselves, and the script then exits 75 too.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NUM_PROCESSES [args for every process...]" >&2
  exit 2
fi
NUM_PROCESSES=$1; shift
PYTHON=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
COMMAND=${COMMAND:--m moe_flan.train}
LOG_DIR=${LOG_DIR:-$(mktemp -d -t moe_flan_multiprocess.XXXXXX)}
TIMEOUT_S=${TIMEOUT_S:-1800}
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$LOG_DIR"

export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export JAX_NUM_CPU_DEVICES=${DEVICES_PER_PROCESS:-2}
export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
unset XLA_FLAGS   # a forced host device count would override JAX_NUM_CPU_DEVICES

pids=()
coordinator_pid=
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # The coordinator last (a training process still running aborts without it): at most 60 s.
  if [[ -n "$coordinator_pid" ]]; then
    for ((t = 0; t < 300; t++)); do
      alive=0
      for pid in "${pids[@]}"; do if kill -0 "$pid" 2>/dev/null; then alive=1; fi; done
      if [[ $alive -eq 0 ]]; then break; fi
      sleep 0.2
    done
    kill "$coordinator_pid" 2>/dev/null || true; wait "$coordinator_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
distributed_flags=()
if [[ "${EXTERNAL_COORDINATOR:-0}" == 1 ]]; then
  coordinator_args=(--bind_address="127.0.0.1:$PORT" --num_processes="$NUM_PROCESSES")
  for a in "$@"; do   # the processes' heartbeat timeout is the service's
    if [[ "$a" == --distributed_heartbeat_timeout_s=* ]]; then
      coordinator_args+=(--heartbeat_timeout_s="${a#*=}")
    fi
  done
  "$PYTHON" -m moe_flan.partitioning.coordinator "${coordinator_args[@]}" \
      > "$LOG_DIR/coordinator.log" 2>&1 &
  coordinator_pid=$!
  distributed_flags+=(--external_coordinator)
fi
for ((i = 0; i < NUM_PROCESSES; i++)); do
  # shellcheck disable=SC2086  # COMMAND is deliberately split into words
  timeout "$TIMEOUT_S" "$PYTHON" $COMMAND "$@" --coordinator_address="127.0.0.1:$PORT" \
      --num_processes="$NUM_PROCESSES" --process_id="$i" \
      ${distributed_flags[@]+"${distributed_flags[@]}"} > "$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done
echo "started $NUM_PROCESSES processes (coordinator 127.0.0.1:$PORT); logs in $LOG_DIR" >&2

# Poll (rather than `wait -n`) so each exit status is read exactly once, on any bash.
status=0
preempted=0
remaining=("${!pids[@]}")
while [[ ${#remaining[@]} -gt 0 && $status -eq 0 ]]; do
  still=()
  for i in "${remaining[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then still+=("$i"); continue; fi
    rc=0; wait "${pids[$i]}" || rc=$?
    if [[ $rc -eq 75 ]]; then
      preempted=1
    elif [[ $rc -ne 0 ]]; then
      status=1
      echo "process $i failed; stopping the others. Last lines of each log:" >&2
      for ((j = 0; j < NUM_PROCESSES; j++)); do
        echo "--- process $j ($LOG_DIR/process_$j.log)" >&2; tail -n 20 "$LOG_DIR/process_$j.log" >&2
      done
    fi
  done
  remaining=("${still[@]}")
  [[ ${#remaining[@]} -gt 0 && $status -eq 0 ]] && sleep 0.5
done
[[ $status -eq 0 && $preempted -eq 1 ]] && status=75
exit $status
