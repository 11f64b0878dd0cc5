#!/usr/bin/env bash
# Spark GPU discovery script: prints the GPUs this executor may use as Spark resource JSON,
#   {"name": "gpu", "addresses": ["0", "1"]}
#
# Spark runs it when an executor (or a standalone worker) starts, if the profile says
#   spark.executor.resource.gpu.discoveryScript /path/to/spark-gpu-discovery.sh
# (see conf/spark-cluster-gpu.conf). Each task then gets some of these addresses through
# TaskContext.resources()["gpu"], and the engine runs the task's model on that GPU.
#
# Addresses are the indices TensorFlow uses inside the executor's processes:
#   - CUDA_VISIBLE_DEVICES set (YARN, some container runtimes): the devices it lists,
#     renumbered 0..n-1 as CUDA does; empty or "-1" means no GPU.
#   - otherwise: the indices `nvidia-smi` reports.
#   - BATCHSCORE_FAKE_GPUS=N: N fake addresses 0..N-1, without nvidia-smi, so a GPU
#     profile can be tried on a machine without GPUs (docs/gpu-on-a-laptop.md). The Python
#     workers read the same variable and stand N logical CPU devices in for the GPUs.
set -euo pipefail

print_json() {  # print_json ADDR...
  local out="" a
  for a in "$@"; do out+="${out:+, }\"$a\""; done
  printf '{"name": "gpu", "addresses": [%s]}\n' "$out"
}

if [[ -n "${BATCHSCORE_FAKE_GPUS:-}" ]]; then
  if ! [[ "$BATCHSCORE_FAKE_GPUS" =~ ^[0-9]+$ ]]; then
    echo "error: BATCHSCORE_FAKE_GPUS must be a number of GPUs, got '$BATCHSCORE_FAKE_GPUS'" >&2
    exit 1
  fi
  addrs=()
  for ((i = 0; i < BATCHSCORE_FAKE_GPUS; i++)); do addrs+=("$i"); done
  print_json "${addrs[@]}"
  exit 0
fi

if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
  addrs=()
  if [[ -n "$CUDA_VISIBLE_DEVICES" && "$CUDA_VISIBLE_DEVICES" != "-1" ]]; then
    IFS=',' read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
    for ((i = 0; i < ${#visible[@]}; i++)); do addrs+=("$i"); done
  fi
  print_json "${addrs[@]}"
  exit 0
fi

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "error: nvidia-smi not found; no NVIDIA driver on this host (BATCHSCORE_FAKE_GPUS=N fakes N GPUs)" >&2
  exit 1
fi
mapfile -t addrs < <(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ')
print_json "${addrs[@]}"
