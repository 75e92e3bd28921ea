#!/usr/bin/env bash
# Checkpoints: seconds to save and to load gpt2-124m with its AdamW state (one collective HDF5 file) on
# 1, 2 and 4 ranks, next to dd writing (conv=fsync) and reading the same number of bytes on the same disk
# in the same job, as rate ratios; then the seconds from SIGTERM to a complete checkpoint at T=4096.
# Usage: jobs/bench-checkpoint.sh   (RT_BENCH_DIR: where the files go, default runs/ on the repo's disk;
# RT_BUILD_DIR: the build tree, default build/; RT_BENCH_RANKS: the rank counts, default "1 2 4"). Figures go in README.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${RT_BUILD_DIR:-$root/build}
bash jobs/build.sh "$build" >/dev/null
bash jobs/prepare-corpus.sh >/dev/null
mpirun_flags=(--oversubscribe -x OMP_NUM_THREADS=1)
[ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)
mkdir -p "${RT_BENCH_DIR:-$root/runs}"
out=$(mktemp -d "${RT_BENCH_DIR:-$root/runs}/bench-checkpoint.XXXXXX")
train_pid=""
cleanup() {
  [ -n "$train_pid" ] && kill -KILL $(pgrep -P "$train_pid") "$train_pid" 2>/dev/null
  rm -rf "$out"
}
trap cleanup EXIT

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"$1\\n\", $2 }"; }
joined() { local IFS=/; sed 's|/| / |g' <<<"$*"; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB;" \
  "files in $out ($(df -h --output=source,fstype "$out" | tail -1 | tr -s ' '))"
echo "loads and dd's read follow the write of the same file: from the page cache unless it is larger than memory"
echo "save and load: two runs each (s run 1 / run 2); ratios are rates against dd from the faster run;"
echo "a load reads /optim/{master,m,v} (12 bytes per parameter), 3/4 of the file that dd reads whole"
rows=""
for np in ${RT_BENCH_RANKS-1 2 4}; do
  log=$(mpirun "${mpirun_flags[@]}" -np $np "$build/bench_checkpoint" "$out")
  grep '^op=' <<<"$log"
  saves=$(grep '^op=save' <<<"$log")
  loads=$(grep '^op=load' <<<"$log")
  bytes=$(field file_bytes "$(head -1 <<<"$saves")")
  load_bytes=$(field moved_bytes "$(head -1 <<<"$loads")")
  save_s=($(while read -r l; do field s "$l"; done <<<"$saves"))
  load_s=($(while read -r l; do field s "$l"; done <<<"$loads"))
  rm -f "$out/bench.h5"
  t0=$(now)
  dd if=/dev/zero of="$out/dd.bin" bs=4M count="$bytes" iflag=count_bytes conv=fsync status=none
  t1=$(now)
  dd if="$out/dd.bin" of=/dev/null bs=4M status=none
  t2=$(now)
  rm -f "$out/dd.bin"
  dd_write=$(calc "%.3f" "$t1 - $t0")
  dd_read=$(calc "%.3f" "$t2 - $t1")
  best_save=$(printf "%s\n" "${save_s[@]}" | sort -g | head -1)
  best_load=$(printf "%s\n" "${load_s[@]}" | sort -g | head -1)
  rows+=$(printf "| %s | %s | %s | %s | %s | %s | %s | %s |" $np "$bytes" "$(joined "${save_s[@]}")" \
    "$dd_write" "$(calc "%.3f" "$dd_write / $best_save")" "$(joined "${load_s[@]}")" \
    "$dd_read" "$(calc "%.3f" "($load_bytes / $best_load) / ($bytes / $dd_read)")")$'\n'
done
echo
printf "| ranks | bytes | save s | dd write s | save/dd rate | load s | dd read s | load/dd rate |\n"
printf "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
printf "%s" "$rows"

# Stopping at T=4096: two ranks share every sequence (sp=2); the signal comes once the first step has logged.
# Open MPI 4.1's mpirun does not pass SIGTERM on at once: it sends SIGCONT, sleeps odls_base_sigkill_timeout
# seconds (default 1, its event loop blocked: no output, no notice of exits), sends SIGTERM, sleeps as long
# again and sends SIGKILL. So the ranks get SIGTERM directly (as SLURM's scancel signals every task), or
# mpirun gets SIGUSR1 (forwarded at once; ringtrain stops on it too), or mpirun gets SIGTERM with a timeout
# longer than the save.
stop_run() { # NAME SIGNAL TARGET(ranks|mpirun) [mpirun args...]
  local name=$1 signal=$2 target=$3
  shift 3
  local run="$out/$name" log="$out/$name.log"
  mpirun "$@" "${mpirun_flags[@]}" -np 2 "$build/ringtrain" train \
    --config jobs/configs/quickstart.ini --set model.max_seq_len=4096 --set train.seq_len=4096 \
    --set train.batch_size=1 --set parallel.sp=2 --set train.steps=1000 --set train.val_every=0 \
    --set train.log_every=1 --set run.dir="$run" >"$log" 2>&1 &
  train_pid=$!
  for _ in $(seq 3000); do
    grep -q '^step ' "$log" && break
    kill -0 "$train_pid" 2>/dev/null || break
    sleep 0.1
  done
  grep -q '^step ' "$log" || { cat "$log"; echo "$name: no step logged" >&2; exit 1; }
  local pids=$train_pid
  [ "$target" = ranks ] && pids=$(pgrep -P "$train_pid" -x ringtrain | tr '\n' ' ')
  local t_kill status=0
  t_kill=$(now)
  kill -"$signal" $pids
  wait "$train_pid" || status=$?
  local t_exit
  t_exit=$(now)
  train_pid=""
  local complete ckpt
  complete=$(sed -n 's/.*complete \([0-9.]*\) s after the signal.*/\1/p' "$log")
  ckpt=$(ls "$run"/checkpoints/step_*.h5 2>/dev/null | tail -1)
  printf "| %s to %s%s | %s | %s | %s | %s | %s | %s |\n" "$signal" "$target" "${*:+ ($*)}" "$status" \
    "${complete:-none}" "$(calc "%.1f" "$t_exit - $t_kill")" "$(sed -n 's/^checkpoint .*, \([0-9.]*\) s)$/\1/p' "$log")" \
    "$(sed -n 's/^step .*| \([0-9.]*\) ms\/step .*/\1/p' "$log" | head -1 | awk '{printf "%.1f", $1 / 1000}')" \
    "$( [ -n "$ckpt" ] && stat -c %s "$ckpt" || echo none)"
}
echo
echo "stopping: small preset, T=4096, 2 ranks (sp=2), quickstart config (ZeRO 1, offload), signal after step 1"
printf "| signal | exit status | checkpoint complete after the rank's signal (s) | kill to exit (s) | save (s) | step 1 (s) | checkpoint bytes |\n"
printf "| --- | --- | --- | --- | --- | --- | --- |\n"
stop_run term_ranks TERM ranks
stop_run usr1_mpirun USR1 mpirun
stop_run term_mpirun TERM mpirun --mca odls_base_sigkill_timeout 10
