#!/usr/bin/env bash
# Training-step throughput of gpt2-124m against this machine's sgemm rate (same process).
# Usage: jobs/bench-train.sh [STEPS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/jobs/build.sh" "$root/build" >/dev/null
steps=${1:-3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
for shape in "4 64" "1 1024"; do
  "$root/build/bench_train" gpt2-124m $shape "$steps"
done
