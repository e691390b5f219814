#!/usr/bin/env bash
# The GPU checks in one command, for a GPU machine without network access that already has JAX
# for CUDA, flax and optax: the Hopper-kernel tests, then `--suite gpu`.
#
#   bash benchmarks/gpu_run.sh OUT_DIR [SUITE_SECONDS]
#
# Wheels of packages that machine lacks (gin-config) may sit in .whl/ (see BENCHMARKS.md);
# they are installed into a private folder, not over the machine's own packages. Logs and
# OUT_DIR/gpu.json (rewritten after every case, so a run cut off by SUITE_SECONDS keeps the
# cases it finished) land in OUT_DIR.
set -u -o pipefail
out=${1:?usage: gpu_run.sh OUT_DIR [SUITE_SECONDS]}
suite_seconds=${2:-420}
mkdir -p "$out"
if compgen -G '.whl/*.whl' >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/moe_flan_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/moe_flan_site
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/machine.txt"
python3 -c 'import jax, flax, optax, gin; print("jax", jax.__version__, "flax", flax.__version__,
"optax", optax.__version__, jax.devices())' 2>&1 | tee -a "$out/machine.txt" || exit 1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_grouped_matmul_hopper.py \
  2>&1 | tee "$out/hopper_kernel_tests.log"
timeout "$suite_seconds" python3 -m benchmarks.run --suite gpu --results_dir "$out" \
  2>&1 | tee "$out/gpu_suite.log"
