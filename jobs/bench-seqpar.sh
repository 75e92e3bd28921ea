#!/usr/bin/env bash
# Sequence parallelism: step time and exposed communication at a fixed local length per rank,
# 1 vs 2 ranks (one core each), then the longest gpt2-124m sequence that fits 4 GiB per rank.
# Usage: jobs/bench-seqpar.sh [STEPS]   (the `small` preset; figures go in docs/benchmarks.md)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash jobs/build.sh build >/dev/null
bash jobs/prepare-corpus.sh >/dev/null
steps=${1:-4}
mpirun_flags=(--oversubscribe -x OMP_NUM_THREADS=1)
[ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)
out=$(mktemp -d /tmp/rt_bench_seqpar.XXXXXX)
trap 'rm -rf "$out"' EXIT
printf "%-8s %-2s %-6s %-10s %-14s %-10s %s\n" T_local P T step_s comm_exposed_s exposed% "step ratio P2/P1"
for t_local in 1024 2048 4096; do
  declare -A step=()
  for p in 1 2; do
    T=$((t_local * p))
    run="$out/t${t_local}_p${p}"
    mpirun "${mpirun_flags[@]}" -np $p build/ringtrain train --config jobs/configs/quickstart.ini \
      --set model.max_seq_len=$T --set train.seq_len=$T --set train.batch_size=1 --set train.steps=$steps \
      --set train.val_every=0 --set parallel.dp=1 --set zero.stage=0 --set activations.mode=keep --set parallel.sp=$p --set run.dir="$run" --set train.log_every=1000 >/dev/null
    read -r s c < <(/usr/bin/python3 jobs/metrics_summary.py "$run" | /usr/bin/python3 -c \
      'import json,sys; d=json.load(sys.stdin); print(d["step_s"], d["comm_exposed_s"])')
    step[$p]=$s
    ratio=""
    [ $p -eq 2 ] && ratio=$(/usr/bin/python3 -c "print(f'{$s / ${step[1]}:.2f}')")
    printf "%-8s %-2s %-6s %-10.3f %-14.4f %-10.1f %s\n" $t_local $p $T "$s" "$c" \
      "$(/usr/bin/python3 -c "print(100 * $c / $s)")" "$ratio"
  done
done
echo
echo "longest gpt2-124m sequence within device.memory_limit = 4G per rank (setup fits; ZeRO-1 on 2 ranks):"
build/bench_memory gpt2-124m 4G 0 keep offload
mpirun "${mpirun_flags[@]}" -np 2 build/bench_memory gpt2-124m 4G 1 keep offload
