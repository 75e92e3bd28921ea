#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) in build-fuzz/ and runs each on its seed corpus for a
# bounded time: jobs/fuzz.sh [seconds per target, default 30] [target...]; FUZZ_JOBS targets at once (default nproc).
# Fails on any crash, sanitizer report, leak, timeout or out-of-memory. Inputs the fuzzer finds go to
# build-fuzz/fuzz-work/<target>/ (the checked-in seeds in tests/fuzz/corpus/ are only read); a failing input
# is saved as build-fuzz/fuzz-work/<kind>-<hash> and its log printed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(tokens llmc_model config checkpoint safetensors hf_config hf_index tokenizer_json)
build="$root/build-fuzz"

if ! command -v clang >/dev/null; then
  echo "fuzz.sh: clang not found (jobs/install-deps.sh installs clang and libclang-rt-14-dev)"; exit 1
fi
echo "== build (libFuzzer + ASan + UBSan, clang) in $build"
cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DRINGTRAIN_FUZZ=ON -DRINGTRAIN_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target fuzzers

work="$build/fuzz-work"
mkdir -p "$work"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# One OpenMP/BLAS thread: the readers are serial, and the fuzzer process is one of several on the machine.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 TMPDIR="$scratch"
asan_options="detect_leaks=1:abort_on_error=0:intercept_tls_get_addr=0"
export LSAN_OPTIONS="suppressions=$root/tests/fuzz/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# Up to FUZZ_JOBS targets (default: one per core) run at once, each on its own core for its whole time; the
# results are printed in target order when all have finished.
jobs_at_once=${FUZZ_JOBS:-$(nproc)}
run_target() {
  local target=$1 binary=$2 seeds=$3 start rc=0
  # HDF5 is built without frame pointers: full stacks (slower) let lsan.supp match frames inside it.
  export ASAN_OPTIONS="$asan_options"
  [ "$target" = checkpoint ] && export ASAN_OPTIONS="$asan_options:fast_unwind_on_malloc=0"
  start=$(date +%s)
  # -max_len: small files reach every field; -rss_limit_mb/-malloc_limit_mb: a reader that sizes memory
  # from a header fails here; -timeout: a reader that blocks or loops fails here.
  "$binary" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$work/$target-" "$work/$target" "$seeds" >"$work/$target.log" 2>&1 || rc=$?
  echo "$rc $(( $(date +%s) - start ))" >"$work/$target.status"
}
status=0 passed=0 failed=0
ran=()
for target in "${targets[@]}"; do
  binary="$build/tests/fuzz/fuzz_$target"
  seeds="$root/tests/fuzz/corpus/$target"
  if [ ! -x "$binary" ] || [ ! -d "$seeds" ]; then
    echo "fuzz.sh: unknown target '$target' (no $binary or $seeds)"; status=1; failed=$((failed + 1)); continue
  fi
  mkdir -p "$work/$target"
  rm -f "$work/$target.status"
  echo "== fuzz_$target for ${seconds}s"
  run_target "$target" "$binary" "$seeds" &
  ran+=("$target")
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_at_once" ]; do wait -n || true; done
done
wait
for target in "${ran[@]}"; do
  log="$work/$target.log"
  read -r rc elapsed <"$work/$target.status" || rc=1 elapsed="?"
  if [ "$rc" = 0 ]; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "ok   fuzz_$target: $runs inputs in ${elapsed}s, no crash or sanitizer report"
    passed=$((passed + 1))
  else
    echo "FAIL fuzz_$target (log $log):"
    grep -E "ERROR|SUMMARY|runtime error|Test unit written|abort|left open|spans lines|accepted" "$log" | head -20
    tail -40 "$log"
    status=1 failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
exit $status
