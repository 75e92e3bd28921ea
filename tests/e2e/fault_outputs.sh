#!/usr/bin/env bash
# Faults on the outputs: a full disk, a short write, a failing fsync, an unwritable directory, a run.dir that
# holds an earlier run, one rank's output failing under MPI. Each case must end with exactly one line
# "ringtrain: ..." naming the file, a non-zero exit that is not a crash (134, 139) or a hang, no *.tmp left,
# nothing partial, and nothing the user had before changed.
#
# fault_outputs.sh RINGTRAIN FAULT_SHIM.so FAULT_CHECKPOINT
# The write hook is tests/support/fault_inject.c, preloaded (see its header for RT_FAULT_*): it works in every build,
# as any user. A real full tmpfs and a read-only mount are used too where mount works (root); elsewhere
# those cases say "skip". RT_MPIRUN (as for cli_errors.sh) adds the 2-rank cases.
set -u
bin=$1 shim=$2 checkpoint_bin=$3
work=$(mktemp -d /tmp/rt_fault_outputs.XXXXXX)
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
failures=0 passed=0
python=$(command -v /usr/bin/python3 || command -v python3 || true)

# A preloaded shim is not the sanitizer runtime: ASan must not insist on coming first.
faulty() { env LD_PRELOAD="$shim" ASAN_OPTIONS="${ASAN_OPTIONS:-}:verify_asan_link_order=0" "$@"; }

fail() { echo "FAIL $1: $2"; [ -s "$work/stderr" ] && sed 's/^/    /' "$work/stderr"; failures=$((failures + 1)); }

# check NAME STATUS PATTERN DIR: one stderr line matching PATTERN, exit 1, no *.tmp in DIR.
check() {
  local name=$1 status=$2 pattern=$3 dir=$4 lines
  lines=$(grep -c . "$work/stderr")
  if [ "$status" -ne 1 ]; then fail "$name" "exit status $status, expected 1"; return 1; fi
  if [ "$lines" -ne 1 ]; then fail "$name" "$lines lines on stderr"; return 1; fi
  if ! grep -Eq -- "$pattern" "$work/stderr"; then fail "$name" "stderr does not match /$pattern/"; return 1; fi
  if compgen -G "$dir/*.tmp*" >/dev/null; then fail "$name" "left $(ls "$dir"/*.tmp*)"; return 1; fi
  return 0
}
ok() { echo "ok   $1: $(head -c 300 "$work/stderr")"; passed=$((passed + 1)); }

# Every line of a metrics.jsonl is a whole JSON object (where Python is there to say so).
metrics_valid() {
  [ -z "$python" ] && return 0
  "$python" -c 'import json, sys; [json.loads(line) for line in open(sys.argv[1])]' "$1" 2>/dev/null
}

for i in $(seq 1 400); do echo "line $i of a small corpus for the fault tests"; done >"$work/corpus.txt"
"$bin" prepare --input "$work/corpus.txt" --output "$work/train.bin" >/dev/null || { echo "prepare failed"; exit 1; }
cat >"$work/ok.ini" <<INI
[model]
preset = tiny
[train]
steps = 4
batch_size = 2
seq_len = 32
log_every = 1000
[data]
train = $work/train.bin
INI
train() { "$bin" train --config "$work/ok.ini" "$@"; }

# --- model.h5: the save fails; the run's record stays, no model, no .tmp.
for case in "short write at the start|enospc|0|write failed: No space left on device" \
            "short write mid-file|enospc|200000|write failed: No space left on device" \
            "I/O error mid-file|eio|200000|write failed: Input/output error" \
            "fsync fails (NFS-style)|close|0|fsync failed: No space left on device"; do
  IFS='|' read -r name mode after reason <<<"$case"
  run="$work/model_$mode$after"
  RT_FAULT_PATH="$run/model.h5.tmp" RT_FAULT_MODE=$mode RT_FAULT_AFTER=$after \
    faulty "$bin" train --config "$work/ok.ini" --set "run.dir=$run" >/dev/null 2>"$work/stderr"
  status=$?
  if check "model.h5, $name" $status "$run/model.h5: $reason" "$run"; then
    if [ -e "$run/model.h5" ]; then fail "model.h5, $name" "model.h5 exists"
    elif ! metrics_valid "$run/metrics.jsonl" || [ "$(wc -l <"$run/metrics.jsonl")" -ne 4 ]; then
      fail "model.h5, $name" "metrics.jsonl is not the 4 steps' record"
    else ok "model.h5, $name"; fi
  fi
done

# --- an older good checkpoint survives a failed save over it, byte for byte.
"$checkpoint_bin" "$work/keep.h5" 1 2>"$work/stderr" || fail "checkpoint" "the first save failed"
before=$(md5sum <"$work/keep.h5")
for after in 0 3000 2000000; do
  RT_FAULT_PATH="$work/keep.h5.tmp" RT_FAULT_AFTER=$after faulty "$checkpoint_bin" "$work/keep.h5" 2 2>"$work/stderr"
  status=$?
  if check "checkpoint over a good one, short write after $after bytes" $status "keep.h5: write failed" "$work"; then
    if [ "$(md5sum <"$work/keep.h5")" != "$before" ]; then fail "checkpoint, $after" "keep.h5 changed"
    else ok "checkpoint over a good one, short write after $after bytes"; fi
  fi
done

# --- metrics.jsonl: a write fails mid-run (the third line is cut short) or its fsync fails at the end.
for case in "full mid-line|enospc|700|write failed: No space left on device; the run stopped after step 3 of 4" \
            "fsync fails at the end|close|0|fsync failed: No space left on device"; do
  IFS='|' read -r name mode after reason <<<"$case"
  run="$work/metrics_$mode"
  RT_FAULT_PATH="$run/metrics.jsonl" RT_FAULT_MODE=$mode RT_FAULT_AFTER=$after \
    faulty "$bin" train --config "$work/ok.ini" --set "run.dir=$run" >/dev/null 2>"$work/stderr"
  status=$?
  if check "metrics.jsonl, $name" $status "$run/metrics.jsonl: $reason" "$run"; then
    if [ -e "$run/model.h5" ]; then fail "metrics.jsonl, $name" "model.h5 was saved"
    elif ! metrics_valid "$run/metrics.jsonl"; then fail "metrics.jsonl, $name" "a line is not JSON (cut short?)"
    else ok "metrics.jsonl, $name"; fi
  fi
done

# --- config.ini cannot be written: nothing is left, not even the directories the run created.
RT_FAULT_PATH="$work/new/deeper/run/config.ini.tmp" \
  faulty "$bin" train --config "$work/ok.ini" --set "run.dir=$work/new/deeper/run" >/dev/null 2>"$work/stderr"
status=$?
if check "config.ini write fails" $status "run/config.ini: write failed: No space left" "$work"; then
  if [ -e "$work/new" ]; then fail "config.ini write fails" "left $work/new"; else ok "config.ini write fails"; fi
fi

# --- a run.dir that holds an earlier run is refused; its files stay as they were.
train --set "run.dir=$work/done" >/dev/null 2>&1 || fail "re-run" "the first run failed"
before=$(cat "$work"/done/* | md5sum)
train --set "run.dir=$work/done" >/dev/null 2>"$work/stderr"
status=$?
if check "re-run into a used run.dir" $status "run.dir $work/done already holds metrics.jsonl from an earlier run" "$work/done"; then
  if [ "$(cat "$work"/done/* | md5sum)" != "$before" ]; then fail "re-run" "the earlier run's files changed"
  else ok "re-run into a used run.dir"; fi
fi
rm "$work/done/metrics.jsonl" "$work/done/config.ini" # a model.h5 alone still marks the directory as used
train --set "run.dir=$work/done" >/dev/null 2>"$work/stderr"
check "run.dir holding only a model.h5" $? "already holds model.h5" "$work/done" && ok "run.dir holding only a model.h5"
mkdir "$work/empty"
if train --set "run.dir=$work/empty" >/dev/null 2>"$work/stderr" && [ -f "$work/empty/model.h5" ]; then
  ok "an existing empty run.dir is used"
else fail "empty run.dir" "the run did not use it"; fi

# --- stdout is an output too.
"$bin" sample --model "$work/empty/model.h5" --tokens 2000 >/dev/full 2>"$work/stderr"
check "sample to a full stdout" $? "cannot write to standard output: No space left" "$work" && ok "sample to a full stdout"

# --- a real full filesystem and a read-only one (mount needs root; elsewhere the hook above covers it).
full="$work/full" ro="$work/ro"
mkdir -p "$full" "$ro"
if mount -t tmpfs -o size=64k tmpfs "$full" 2>/dev/null; then
  mounts+=("$full")
  train --set "run.dir=$full/run" >/dev/null 2>"$work/stderr"
  status=$?
  # The run's final checkpoint comes before model.h5 and is the first thing that does not fit.
  if check "tmpfs of 64 KiB: the final checkpoint does not fit" $status \
      "$full/run/checkpoints/step_[0-9]*.h5.*No space left on device" "$full/run"; then
    if [ -e "$full/run/model.h5" ] || ls "$full/run/checkpoints" | grep -q step_ || ! metrics_valid "$full/run/metrics.jsonl"; then
      fail "tmpfs" "partial output: $(ls "$full/run" "$full/run/checkpoints")"
    else ok "tmpfs of 64 KiB: the final checkpoint does not fit"; fi
  fi
  rm -rf "${full:?}/run"
  head -c 64k /dev/zero >"$full/filler" 2>/dev/null
  train --set "run.dir=$full/run" >/dev/null 2>"$work/stderr"
  status=$?
  if check "full tmpfs: nothing fits" $status "$full/run.*No space left on device" "$full"; then
    if [ -e "$full/run" ]; then fail "full tmpfs" "left $full/run"; else ok "full tmpfs: nothing fits"; fi
  fi
else
  echo "skip full tmpfs: mount not allowed here"
fi
if [ "$(id -u)" -ne 0 ]; then
  chmod 555 "$ro"
  ro_ready=1
elif mount -t tmpfs -o ro,size=64k tmpfs "$ro" 2>/dev/null; then
  mounts+=("$ro")
  ro_ready=1
else
  ro_ready=0
  echo "skip unwritable directory: root without mount"
fi
if [ "$ro_ready" -eq 1 ]; then
  train --set "run.dir=$ro/run" >/dev/null 2>"$work/stderr"
  check "unwritable parent directory" $? "cannot create directory $ro/run: (Read-only file system|Permission denied)" "$ro" &&
    ok "unwritable parent directory"
  train --set "run.dir=$ro" >/dev/null 2>"$work/stderr"
  check "unwritable run.dir" $? "$ro/metrics.jsonl: cannot create: (Read-only file system|Permission denied)" "$ro" &&
    ok "unwritable run.dir"
fi

# --- 2 ranks: only rank 0 writes files, so its failures are rank-divergent; the job ends, one line, no hang.
if [ -n "${RT_MPIRUN:-}" ]; then
  read -r -a mpirun_cmd <<<"$RT_MPIRUN"
  for case in "metrics.jsonl fails mid-run|metrics.jsonl|700|metrics.jsonl: write failed" \
              "model.h5 save fails|model.h5.tmp|1000|model.h5: write failed"; do
    IFS='|' read -r name file after pattern <<<"$case"
    run="$work/mpi_${file%%.*}"
    ASAN_OPTIONS="${ASAN_OPTIONS:-}:verify_asan_link_order=0" timeout 120 "${mpirun_cmd[@]}" -np 2 -x LD_PRELOAD="$shim" \
      -x RT_FAULT_PATH="$run/$file" -x RT_FAULT_AFTER=$after -x RT_FAULT_RANK=0 \
      "$bin" train --config "$work/ok.ini" --set parallel.sp=2 --set "run.dir=$run" >/dev/null 2>"$work/stderr"
    status=$?
    lines=$(grep -c '^ringtrain:' "$work/stderr")
    if [ $status -eq 124 ]; then fail "2 ranks, $name" "hung (killed after 120 s)"
    elif [ $status -eq 0 ] || [ "$lines" -ne 1 ] || ! grep -Eq -- "$pattern" "$work/stderr" ||
         grep -q 'MPI_ABORT\|Signal:' "$work/stderr"; then
      fail "2 ranks, $name" "status $status, $lines ringtrain lines"
    elif [ -e "$run/model.h5" ] || compgen -G "$run/*.tmp*" >/dev/null; then fail "2 ranks, $name" "partial output"
    else echo "ok   2 ranks, $name: $(grep '^ringtrain:' "$work/stderr")"; passed=$((passed + 1)); fi
  done
fi

echo "$passed passed, $failures failed"
[ $failures -eq 0 ]
