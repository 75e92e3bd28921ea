#!/usr/bin/env bash
# Memory that shrinks with ranks: the longest sequence whose setup fits device.memory_limit = 4 GiB per rank
# (jobs/bench_memory: every device buffer of a run is allocated at setup, through the accounted arena), for
# gpt2-124m and llama-336m, offload + ZeRO-3 + tiled MLP at P = 1, 2, 4 (sequence parallel over all ranks),
# against keep mode, ZeRO-0, untiled on one rank. Prints the ratio per doubling of P and against that baseline.
# Usage: jobs/bench-scale.sh [MLP_TILE_MIB]   (default 32)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash jobs/build.sh build >/dev/null
tile=${1:-32}
mpirun_flags=(--oversubscribe -x OMP_NUM_THREADS=1)
[ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)
longest() { # P PRESET STAGE TILE MODE -> longest T
  mpirun "${mpirun_flags[@]}" -np "$1" build/bench_memory "$2" 4G "$3" --mlp-tile-mib="$4" "$5" |
    sed -n 's/.*longest T = \([0-9]*\).*/\1/p'
}
ratio() { /usr/bin/python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.2f}x' if b else '-')" "$1" "$2"; }
printf "%-11s %-2s %-40s %-8s %-15s %s\n" preset P setup longest_T "vs P/2" "vs keep, 1 rank"
for preset in gpt2-124m llama-336m; do
  base=$(longest 1 $preset 0 0 keep)
  printf "%-11s %-2s %-40s %-8s %-15s %s\n" $preset 1 "keep, ZeRO-0, untiled (baseline)" "$base" - -
  prev=""
  for p in 1 2 4; do
    t=$(longest $p $preset 3 "$tile" offload)
    printf "%-11s %-2s %-40s %-8s %-15s %s\n" $preset $p "offload, ZeRO-3, mlp_tile_mib=$tile" "$t" \
      "$([ -n "$prev" ] && ratio "$t" "$prev" || echo -)" "$(ratio "$t" "$base")"
    prev=$t
  done
done
