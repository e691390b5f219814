#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: the same command on every worker, one process per host.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#       --gin_file=gin/runs/instruction_tune.gin \
#       --gin_file=gin/partitioning/expert_parallel.gin --gin.EXPERT_PARTITIONS=16 \
#       --gin.MODEL_DIR="'gs://my-bucket/flan_moe_run'"
#
# Arguments: the flags of `python -m moe_flan.train` (any gin run file, model file and
# gin/partitioning/*.gin overlay). MODEL_DIR must be shared storage (gs://...): all hosts write
# the checkpoint together (orbax), process 0 writes metrics.
# jax.distributed finds the coordinator and process ids from the TPU VM metadata
# (--distributed_auto_detect is added), so no address or ids are passed.
# Environment:
#   TPU_NAME, ZONE (required); PROJECT (optional gcloud project)
#   REMOTE_DIR=~/moe_flan   checkout on every worker (with its deps installed, e.g. pip -e .)
#   SYNC=1                  first copy this checkout to REMOTE_DIR on every worker
#   PYTHON=python3          interpreter on the workers
#   DRY_RUN=1               print the gcloud commands instead of running them
#   EXTERNAL_COORDINATOR=1  serve jax.distributed's coordinator from its own process on worker 0
#     NUM_HOSTS=8           (python -m moe_flan.partitioning.coordinator, REMOTE_DIR/coordinator.log;
#     [COORDINATOR_PORT=8482] NUM_HOSTS workers, the port auto-detection uses) started before and
#                           stopped after training, which gets --external_coordinator: losing
#                           worker 0's training process then stops the others cleanly too
#   TOPOLOGY=v5p:4x4x8      pre-flight check first, on this machine: `python -m moe_flan.aot`
#   [NUM_SLICES=2]          compiles the same train step for that slice (libtpu, no TPU needed:
#                           pip install 'moe_flan[tpu]') and prints per-chip HBM, FLOPs and every
#                           collective; the job is not started when it does not fit
#                           (LOCAL_PYTHON=python3 runs it, PREFLIGHT_OUT=FILE.json keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
REMOTE_DIR=${REMOTE_DIR:-'~/moe_flan'}
PYTHON=${PYTHON:-python3}
gcloud_args=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && gcloud_args+=(--project="$PROJECT")

run() { if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }

if [[ -n "${TOPOLOGY:-}" ]]; then
  # The gin flags only: the rest (multi-host flags) mean nothing to a compile on one host.
  aot_args=()
  for a in "$@"; do [[ "$a" == --gin* ]] && aot_args+=("$a"); done
  ${LOCAL_PYTHON:-python3} -m moe_flan.aot "${aot_args[@]}" --topology="$TOPOLOGY" \
      --num_slices="${NUM_SLICES:-1}" --out="${PREFLIGHT_OUT:-/tmp/moe_flan_preflight.json}" || {
    echo "tpu_pod.sh: the pre-flight check failed (see above); not starting the job" >&2; exit 1; }
fi
if [[ -n "${SYNC:-}" ]]; then
  run gcloud compute tpus tpu-vm scp --recurse . "$TPU_NAME:$REMOTE_DIR" "${gcloud_args[@]}" \
      --worker=all
fi
train_args=$(printf '%q ' "$@")
train_env=
if [[ "${EXTERNAL_COORDINATOR:-0}" == 1 ]]; then
  : "${NUM_HOSTS:?set NUM_HOSTS to the number of TPU VM workers (EXTERNAL_COORDINATOR=1)}"
  port=${COORDINATOR_PORT:-8482}
  coordinator_args=(--bind_address="[::]:$port" --num_processes="$NUM_HOSTS")
  for a in "$@"; do   # the processes' heartbeat timeout is the service's
    if [[ "$a" == --distributed_heartbeat_timeout_s=* ]]; then
      coordinator_args+=(--heartbeat_timeout_s="${a#*=}")
    fi
  done
  # Detached (nohup, no ssh streams) so that it outlives this ssh session and the training.
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=0 \
      --command="cd $REMOTE_DIR && nohup $PYTHON -m moe_flan.partitioning.coordinator \
$(printf '%q ' "${coordinator_args[@]}")> coordinator.log 2>&1 < /dev/null & echo \$! > coordinator.pid"
  # Auto-detection points every worker at worker 0's JAX_COORDINATOR_PORT.
  train_env="JAX_COORDINATOR_PORT=$port "
  train_args="--external_coordinator $train_args"
fi
status=0
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all \
    --command="cd $REMOTE_DIR && $train_env$PYTHON -m moe_flan.train --distributed_auto_detect \
$train_args" || status=$?
if [[ "${EXTERNAL_COORDINATOR:-0}" == 1 ]]; then   # last: a training process aborts without it
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=0 \
      --command="cd $REMOTE_DIR && kill \$(cat coordinator.pid)" || true
fi
exit $status
