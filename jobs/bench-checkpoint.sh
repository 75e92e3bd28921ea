#!/usr/bin/env bash
# Checkpoints: seconds to save and to load gpt2-124m with its AdamW state (one collective HDF5 file) on
# 1, 2 and 4 ranks, each paired with a dd-like baseline on the same disk in the same process (see
# bench_checkpoint.c), as rate ratios; then the seconds from SIGTERM to a complete checkpoint at T=4096.
# Usage: jobs/bench-checkpoint.sh   (RT_BENCH_DIR: where the files go, default runs/ on the repo's disk;
# RT_BUILD_DIR: the build tree, default build/; RT_BENCH_RANKS: the rank counts, default "1 2 4"). Figures go in docs/benchmarks.md.
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
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB;" \
  "files in $out ($(df -h --output=source,fstype "$out" | tail -1 | tr -s ' '))"
cold=()
[ "$(id -u)" -eq 0 ] && cold=(--cold)
echo "each save and load is paired with a baseline in the same process just before it: rank 0 writes the"
echo "checkpoint's bytes with write(2) + fsync as dd conv=fsync does, and reads the bytes a load moves from"
echo "the checkpoint${cold:+ (page cache emptied before each read: loads and baseline reads come from the disk)}"
echo "ratio = baseline seconds / operation seconds (the operation's rate over the baseline's for the same bytes):"
echo "the median over the pairs, and best against best; a load moves /optim/{master,m,v}, 3/4 of the file"
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
ratios() { # LINES: baseline_s / s per line, then their median
  while read -r l; do calc "%.3f" "$(field baseline_s "$l") / $(field s "$l")"; done <<<"$1" | median
}
best_ratio() { # LINES: the fastest baseline over the fastest operation
  local b s
  b=$(while read -r l; do field baseline_s "$l"; done <<<"$1" | sort -g | head -1)
  s=$(while read -r l; do field s "$l"; done <<<"$1" | sort -g | head -1)
  calc "%.3f" "$b / $s"
}
list() { while read -r l; do field "$1" "$l"; done <<<"$2" | tr '\n' '/' | sed 's|/$||; s|/| / |g'; }
rows=""
for np in ${RT_BENCH_RANKS-1 2 4}; do
  log=$(mpirun "${mpirun_flags[@]}" -np $np "$build/bench_checkpoint" "$out" --repeats 5 "${cold[@]}")
  grep '^op=' <<<"$log"
  saves=$(grep '^op=save' <<<"$log")
  loads=$(grep '^op=load' <<<"$log")
  rows+="| $np | $(field file_bytes "$(head -1 <<<"$saves")") | $(list s "$saves") | $(list baseline_s "$saves") |"
  rows+=" $(ratios "$saves") / $(best_ratio "$saves") | $(list s "$loads") | $(list baseline_s "$loads") |"
  rows+=" $(ratios "$loads") / $(best_ratio "$loads") |"$'\n'
done
echo
printf "| ranks | bytes | save s | baseline write s | save/baseline rate (median / best) | load s | baseline read s | load/baseline rate (median / best) |\n"
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
