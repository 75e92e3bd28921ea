#!/usr/bin/env bash
# Hugging Face import and export of llama-336m (336M parameters, 1.3 GB in fp32), each against dd copying the
# same safetensors bytes in the same job, as rate ratios (dd's seconds / ours: 1.0 = as fast as copying).
#   export: a ringtrain model.h5 -> a Hugging Face directory (export --hf: HDF5 read, rows permuted, written)
#   import: inspect DIR (every tensor read, checked finite, widened or copied into ringtrain's layout: the
#           path model.init_from = DIR takes) and export DIR -> DIR2 (import and export in one process)
# Each command runs 3 times, alternating with dd; the medians are printed. The page cache is warm for every
# read (the files were just written), as it is for dd; export syncs each file it writes (fsync), and so does
# dd (conv=fsync).
# Usage: jobs/bench-hf.sh   (RT_BENCH_DIR: where the files go, default runs/; RT_BUILD_DIR: default build/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${RT_BUILD_DIR:-$root/build}
bash jobs/build.sh "$build" >/dev/null
mkdir -p "${RT_BENCH_DIR:-$root/runs}"
out=$(mktemp -d "${RT_BENCH_DIR:-$root/runs}/bench-hf.XXXXXX")
trap 'rm -rf "$out"' EXIT
rt="$build/ringtrain"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB;" \
  "files in $out ($(df -h --output=source,fstype "$out" | tail -1 | tr -s ' '))"

# A llama-336m model.h5: one step from random init (its values are what they are; the sizes are what matter).
head -c 200000 /dev/urandom | od -An -v -tu1 | tr -s ' ' '\n' | sed '/^$/d' >"$out/bytes.txt"
"$rt" prepare --input "$out/bytes.txt" --output "$out/train.bin" >/dev/null
"$rt" train --set model.preset=llama-336m --set model.vocab_size=256 --set data.train="$out/train.bin" \
  --set run.dir="$out/run" --set train.steps=1 --set train.seq_len=16 --set train.batch_size=1 \
  --set checkpoint.every=0 >/dev/null
model="$out/run/model.h5"

seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); awk "BEGIN { printf \"%.3f\", $t1 - $t0 }"; }
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
"$rt" export --checkpoint "$model" --hf "$out/hf" --shard-mib 0 >/dev/null # warms the page cache
bytes=$(stat -c %s "$out/hf/model.safetensors")
declare -A t
for run in 1 2 3; do
  rm -rf "$out/x" "$out/y" "$out/copy"
  t[dd]+=" $(seconds dd if="$out/hf/model.safetensors" of="$out/copy" bs=16M conv=fsync status=none)"
  t[export]+=" $(seconds "$rt" export --checkpoint "$model" --hf "$out/x" --shard-mib 0)"
  t[inspect]+=" $(seconds "$rt" inspect "$out/hf")"
  t[roundtrip]+=" $(seconds "$rt" export --checkpoint "$out/hf" --hf "$out/y" --shard-mib 0)"
done
dd_s=$(median ${t[dd]})
printf "%-44s %8s %10s %14s\n" "llama-336m ($((bytes / 1000000)) MB fp32)" "seconds" "MB/s" "dd s / ours s"
for k in dd export inspect roundtrip; do
  s=$(median ${t[$k]})
  case $k in
    dd) what="dd copy of model.safetensors (baseline)" ;;
    export) what="export model.h5 -> HF dir" ;;
    inspect) what="import: inspect HF dir (read + convert)" ;;
    roundtrip) what="import + export: HF dir -> HF dir" ;;
  esac
  awk -v w="$what" -v s="$s" -v b="$bytes" -v d="$dd_s" 'BEGIN { printf "%-44s %8.2f %10.0f %14.2f\n", w, s, b / s / 1e6, d / s }'
done
