#!/usr/bin/env bash
# ZeRO: optimizer-state bytes per rank and step time of gpt2-124m for stages 0/1/2 on 1 and 2 ranks,
# with ratios against stage 0 on the same rank count. Usage: jobs/bench-zero.sh [STEPS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash jobs/build.sh build >/dev/null
bash jobs/prepare-corpus.sh >/dev/null
steps=${1:-4}
mpirun_flags=(--oversubscribe)
[ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)
out=$(mktemp -d /tmp/rt_bench_zero.XXXXXX)
trap 'rm -rf "$out"' EXIT
printf "%-2s %-5s %-16s %-10s %-10s %-10s %s\n" P stage optimizer_bytes "vs stage0" step_s "vs stage0" peak_device_bytes
for p in 1 2; do
  threads=$((2 / p))
  declare -A bytes=() secs=()
  for stage in 0 1 2; do
    run="$out/p${p}_s${stage}"
    mpirun "${mpirun_flags[@]}" -x OMP_NUM_THREADS=$threads -np $p build/ringtrain train --config jobs/configs/quickstart.ini \
      --set model.preset=gpt2-124m --set train.seq_len=64 --set train.batch_size=2 --set train.steps=$steps \
      --set train.val_every=0 --set parallel.sp=1 --set activations.mode=keep --set parallel.dp=$p --set zero.stage=$stage --set run.dir="$run" \
      --set train.log_every=1000 >/dev/null
    read -r b s k < <(/usr/bin/python3 jobs/metrics_summary.py "$run" | /usr/bin/python3 -c \
      'import json,sys; d=json.load(sys.stdin); print(d["optimizer_bytes"], d["step_s"], d["peak_device_bytes"])')
    bytes[$stage]=$b; secs[$stage]=$s
    printf "%-2s %-5s %-16s %-10s %-10.3f %-10s %s\n" $p $stage $b \
      "$(/usr/bin/python3 -c "print(f'{$b / ${bytes[0]}:.3f}')")" "$s" \
      "$(/usr/bin/python3 -c "print(f'{$s / ${secs[0]}:.2f}')")" $k
  done
done
