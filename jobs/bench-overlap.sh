#!/usr/bin/env bash
# Overlap: exposed communication per step (comm_exposed_s: time blocked in ring waits and ZeRO collectives)
# with ZeRO-3 and sequence parallelism over all ranks, at T_local = 2048 and 4096, P = 2 and 4, over Open
# MPI's shared-memory transport and over its TCP transport (--mca btl tcp,self); then offload vs recompute
# tokens/s on 2 ranks. The `small` preset, one thread per rank. Usage: jobs/bench-overlap.sh [STEPS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash jobs/build.sh build >/dev/null
bash jobs/prepare-corpus.sh >/dev/null
steps=${1:-5}
mpirun_flags=(--oversubscribe -x OMP_NUM_THREADS=1)
[ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
step_metrics() { # NP RUN TRANSPORT MODE STAGE T -> "step_s comm_exposed_s tokens_per_s"
  local btl=()
  [ "$3" = tcp ] && btl=(--mca btl tcp,self)
  mpirun "${mpirun_flags[@]}" "${btl[@]}" -np "$1" build/ringtrain train --config jobs/configs/quickstart.ini \
    --set model.max_seq_len="$6" --set train.seq_len="$6" --set train.batch_size=1 --set train.steps="$steps" \
    --set train.val_every=0 --set parallel.dp=1 --set parallel.sp="$1" --set zero.stage="$5" \
    --set activations.mode="$4" --set checkpoint.every=0 --set run.dir="$2" --set train.log_every=1000 >/dev/null
  /usr/bin/python3 jobs/metrics_summary.py "$2" | /usr/bin/python3 -c \
    'import json,sys; d=json.load(sys.stdin); print(d["step_s"], d["comm_exposed_s"], d["tokens_per_s"])'
}
printf "%-9s %-8s %-2s %-6s %-9s %-15s %s\n" transport T_local P T step_s comm_exposed_s "exposed %"
for transport in shm tcp; do
  for t_local in 2048 4096; do
    for p in 2 4; do
      T=$((t_local * p))
      read -r s c _ < <(step_metrics $p "$out/${transport}_${t_local}_$p" $transport offload 3 $T)
      printf "%-9s %-8s %-2s %-6s %-9.3f %-15.4f %.1f\n" $transport $t_local $p $T "$s" "$c" \
        "$(/usr/bin/python3 -c "print(100 * $c / $s)")"
    done
  done
done
echo
echo "offload vs recompute on 2 ranks (ZeRO-3, shared memory):"
printf "%-6s %-10s %-10s %s\n" T mode tokens/s "vs recompute"
for T in 4096 8192; do
  read -r _ _ base < <(step_metrics 2 "$out/rec_$T" shm recompute 3 $T)
  printf "%-6s %-10s %-10.1f %s\n" $T recompute "$base" 1.000
  read -r _ _ t < <(step_metrics 2 "$out/off_$T" shm offload 3 $T)
  printf "%-6s %-10s %-10.1f %s\n" $T offload "$t" "$(/usr/bin/python3 -c "print(f'{$t / $base:.3f}')")"
done
