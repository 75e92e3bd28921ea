#!/usr/bin/env bash
# On the GPU machine: unpacks the bundle (jobs/bundle.sh, built on the development machine), runs every GPU test
# and then jobs/bench-gpu.sh, and prints a summary with pass/fail per check; exits non-zero if any failed.
#   bash jobs/gpu-check.sh [BUNDLE_DIR (default gpu-bundle)]
# Checks, each with its own timeout, all within RT_CHECK_BUDGET_S (default 470 s; a check that would start with
# under 15 s left is reported as not run, and fails):
#   nvidia-smi            the GPU, its driver and memory
#   libraries             every library of the bundle resolves (./run --check)
#   mpirun (CPU)          test_ring_attention on 2 ranks through the bundled mpirun: MPI itself works here
#   test_cuda_ops         every op, CUDA vs CPU
#   test_cuda_train np1   tiny llama and gpt2, CUDA vs CPU; keep == recompute == offload on the GPU
#   test_cuda_train np2   2 ranks sharing the GPU (RINGTRAIN_DEVICE_PLANE=staged): ring attention + ZeRO-2/3 vs 1 rank
#   bench-gpu             throughput, MFU, offload vs recompute, attention vs PyTorch (numbers, not pass/fail,
#                         but a benchmark that fails to run fails the check)
# A GPU test that skips (exit 77) fails here: on this machine a GPU must be visible.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle_dir=${1:-$root/gpu-bundle}
budget=${RT_CHECK_BUDGET_S:-470}
deadline=$(($(date +%s) + budget))
work=${RT_GPU_WORK:-/tmp/ringtrain-gpu}
names=()
results=()

# check NAME TIMEOUT_S COMMAND...: runs it with the timeout (cut to what the budget has left), records the result
check() {
  local name=$1 limit=$2
  shift 2
  local left=$((deadline - $(date +%s)))
  if [ "$left" -lt 15 ]; then
    names+=("$name") results+=("FAIL (not run: the ${budget} s budget is spent)")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo
  echo "== $name (timeout ${limit} s)"
  local t0 rc
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@"
  rc=$?
  local took=$(($(date +%s) - t0))
  names+=("$name")
  case $rc in
    0) results+=("pass (${took} s)") ;;
    77) results+=("FAIL (skipped: no GPU visible to it)") ;;
    124 | 137) results+=("FAIL (timed out after ${limit} s)") ;;
    *) results+=("FAIL (exit $rc, ${took} s)") ;;
  esac
}

echo "== unpacking $bundle_dir/ringtrain-gpu.tar.xz into $work"
rm -rf "$work" && mkdir -p "$work" || exit 1
if command -v xz >/dev/null; then
  tar -C "$work" -xJf "$bundle_dir/ringtrain-gpu.tar.xz"
else # no xz binary: Python's tarfile reads xz
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$bundle_dir/ringtrain-gpu.tar.xz" "$work"
fi || {
  echo "gpu-check: cannot unpack $bundle_dir/ringtrain-gpu.tar.xz"
  exit 1
}
head -n 2 "$work/MANIFEST"
run=$work/run
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} TEST_CUDA_VERBOSE=1

check "nvidia-smi" 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
check "libraries" 60 "$run" --check
check "mpirun (CPU): test_ring_attention np2" 60 env OMP_NUM_THREADS=4 "$run" mpirun -np 2 -x OMP_NUM_THREADS test_ring_attention
check "test_cuda_ops" 150 "$run" test_cuda_ops
check "test_cuda_train np1" 90 "$run" test_cuda_train
check "test_cuda_train np2 (staged plane, ring + ZeRO-2)" 120 \
  env OMP_NUM_THREADS=8 "$run" mpirun -np 2 -x OMP_NUM_THREADS -x TEST_CUDA_VERBOSE -x RINGTRAIN_DEVICE_PLANE=staged test_cuda_train
left=$((deadline - $(date +%s) - 5))
check "bench-gpu" "$((left > 0 ? left : 1))" env RT_BUNDLE="$work" bash "$root/jobs/bench-gpu.sh" "$run"

echo
echo "== summary ($(($(date +%s) - deadline + budget)) s)"
failed=0
for i in "${!names[@]}"; do
  printf "  %-52s %s\n" "${names[$i]}" "${results[$i]}"
  case ${results[$i]} in pass*) ;; *) failed=1 ;; esac
done
exit $failed
