#!/usr/bin/env bash
# Activation offload: tokens/s and peak device bytes of gpt2-124m (12 layers) at T = 1024 and 4096 for
# keep / recompute / offload, with ratios against recompute; then the longest sequence within a 4 GiB
# device.memory_limit, keep vs offload. Usage: jobs/bench-offload.sh [STEPS] [T...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash jobs/build.sh build >/dev/null
bash jobs/prepare-corpus.sh >/dev/null
steps=${1:-3}
shift || true
lengths=("${@:-1024 4096}")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
out=$(mktemp -d /tmp/rt_bench_offload.XXXXXX)
trap 'rm -rf "$out"' EXIT
printf "%-5s %-10s %-9s %-11s %-17s %-14s %s\n" T mode tokens/s "vs recomp" peak_device_bytes "vs recompute" prefetch_wait_s
for T in ${lengths[@]}; do
  declare -A tps=() peak=()
  for mode in recompute keep offload; do
    run="$out/t${T}_${mode}"
    build/ringtrain train --config jobs/configs/quickstart.ini --set model.preset=gpt2-124m \
      --set model.max_seq_len=$T --set train.seq_len=$T --set train.batch_size=1 --set train.steps=$steps \
      --set train.val_every=0 --set parallel.dp=1 --set parallel.sp=1 --set zero.stage=0 --set activations.mode=$mode --set run.dir="$run" --set train.log_every=1000 >/dev/null
    read -r t k w < <(/usr/bin/python3 jobs/metrics_summary.py "$run" | /usr/bin/python3 -c \
      'import json,sys; d=json.load(sys.stdin); print(d["tokens_per_s"], d["peak_device_bytes"], d["prefetch_wait_s"])')
    tps[$mode]=$t; peak[$mode]=$k
    printf "%-5s %-10s %-9.1f %-11s %-17s %-14s %s\n" $T $mode "$t" \
      "$(/usr/bin/python3 -c "print(f'{$t / ${tps[recompute]}:.3f}')")" $k \
      "$(/usr/bin/python3 -c "print(f'{($k - ${peak[recompute]}) / 2**20:+.1f} MiB')")" "$w"
  done
done
echo
echo "longest gpt2-124m sequence within device.memory_limit = 4G (setup fits):"
build/bench_memory gpt2-124m 4G 0 keep recompute offload
