#!/usr/bin/env bash
# Bad inputs to `ringtrain`: each must give a non-zero exit, exactly one line on
# stderr that names the input and what was expected, and no files left behind.
set -u
bin=$1
work=$(mktemp -d /tmp/rt_cli_errors.XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=0 passed=0

# expect_error NAME PATTERN COMMAND...: PATTERN is an extended regex the stderr line must match.
expect_error() {
  local name=$1 pattern=$2; shift 2
  local run_dir="$work/run"
  rm -rf "$run_dir"
  "$@" >"$work/stdout" 2>"$work/stderr"
  local status=$? lines
  lines=$(grep -c . "$work/stderr")
  if [ $status -eq 0 ]; then
    echo "FAIL $name: exit status 0"; failures=$((failures + 1)); return
  fi
  if [ "$lines" -ne 1 ]; then
    echo "FAIL $name: $lines lines on stderr:"; cat "$work/stderr"; failures=$((failures + 1)); return
  fi
  if ! grep -Eq -- "$pattern" "$work/stderr"; then
    echo "FAIL $name: stderr does not match /$pattern/:"; cat "$work/stderr"; failures=$((failures + 1)); return
  fi
  # A run that started keeps config.ini and metrics.jsonl as its record (RUN_STARTED=1), but no model.
  if { [ -z "${RUN_STARTED:-}" ] && [ -e "$run_dir" ]; } || [ -e "$run_dir/model.h5" ] ||
     compgen -G "$work/*.tmp" >/dev/null || compgen -G "$run_dir/*.tmp" >/dev/null; then
    echo "FAIL $name: left files behind"; ls -la "$work"; failures=$((failures + 1)); return
  fi
  echo "ok   $name: $(cat "$work/stderr")"
  passed=$((passed + 1))
}

# A valid corpus to start from.
for i in $(seq 1 400); do echo "line $i of a small corpus for the error tests"; done >"$work/corpus.txt"
"$bin" prepare --input "$work/corpus.txt" --output "$work/train.bin" >/dev/null || { echo "prepare failed"; exit 1; }
cat >"$work/ok.ini" <<INI
[model]
preset = tiny
[train]
steps = 2
batch_size = 2
seq_len = 32
[data]
train = $work/train.bin
[run]
dir = $work/run
INI
train() { "$bin" train --config "$work/ok.ini" "$@"; }

# The valid config trains (so the failures below are the bad input's doing).
if "$bin" train --config "$work/ok.ini" >/dev/null 2>&1 && [ -f "$work/run/metrics.jsonl" ]; then
  echo "ok   valid config trains"; passed=$((passed + 1))
else
  echo "FAIL valid config does not train"; failures=$((failures + 1))
fi

expect_error "missing config file" "$work/nope.ini.*(No such file|cannot)" "$bin" train --config "$work/nope.ini"
expect_error "config key typo" "n_layer.*n_layers" train --set model.n_layer=3
expect_error "config wrong type" "train.lr.*fast" train --set train.lr=fast
expect_error "config out of range" "train.steps" train --set train.steps=-1
expect_error "heads do not divide channels" "n_heads.*d_model|d_model.*n_heads" train --set model.n_heads=5
expect_error "seq_len beyond max positions" "seq_len.*max_seq_len" train --set train.seq_len=512
expect_error "device memory limit" "device memory limit exceeded.*device.memory_limit = 1.0 MiB" train --set device.memory_limit=1M
# Whoever owns the parameters and gradients (the model, or ZeRO 2-3's hooks), the first allocation and the shape
# check come in the model's order: the same message at every stage.
for stage in 0 2 3; do
  expect_error "model too large, ZeRO $stage" "d_model 1048576.*too many parameters" \
    train --set model.d_model=1048576 --set device.memory_limit=4G --set zero.stage=$stage
done
expect_error "device memory limit, ZeRO 2" "allocating .* for parameters with" train --set device.memory_limit=1K \
  --set zero.stage=2
expect_error "device memory limit, ZeRO 3" "allocating .* for parameters \(gathered embeddings and head\)" \
  train --set device.memory_limit=1K --set zero.stage=3
expect_error "missing data file" "$work/missing.bin" train --set "data.train=$work/missing.bin"
expect_error "document separator outside the vocabulary" \
  "data.document_separator = 256 is outside the vocabulary of data.train \\(.*: ids 0..255\\)" \
  train --set data.document_separator=256

head -c 2000 "$work/train.bin" >"$work/truncated.bin"
expect_error "truncated data file" "truncated.bin.*truncated" train --set "data.train=$work/truncated.bin"

printf 'this is not a token file at all, just text padding the header.%.0s' $(seq 1 40) >"$work/garbage.bin"
expect_error "data file with bad magic" "garbage.bin.*magic" train --set "data.train=$work/garbage.bin"

# Header says vocab 100, but the bytes of the text go up to 'y' (121).
cp "$work/train.bin" "$work/badtoken.bin"
printf '\x64\x00\x00\x00' | dd of="$work/badtoken.bin" bs=1 seek=8 conv=notrunc status=none
expect_error "token id >= vocab" "badtoken.bin.*(token|vocab)" train --set "data.train=$work/badtoken.bin"
# One bad token (300, vocab 256) three quarters into the file: with ranks checking shares of the file, the
# last rank finds it, and the message names the same token on 1 and 2 ranks (the MPI cases below).
cp "$work/train.bin" "$work/latetoken.bin"
late=$(( ($(stat -c %s "$work/train.bin") - 1024) / 2 * 3 / 4 ))
printf '\x2c\x01' | dd of="$work/latetoken.bin" bs=1 seek=$((1024 + 2 * late)) conv=notrunc status=none
expect_error "token id >= vocab, late in the file" "latetoken.bin: token $late has id 300, not below" \
  train --set "data.train=$work/latetoken.bin"

expect_error "missing model file" "$work/gpt2.bin" train --set "model.init_from=$work/gpt2.bin"
head -c 4000 "$work/train.bin" >"$work/fake_model.bin"
expect_error "model file with bad magic" "fake_model.bin.*magic" train --set "model.init_from=$work/fake_model.bin"

expect_error "unknown command" "unknown command 'trian'" "$bin" trian
expect_error "prepare missing input" "$work/nothing.txt" "$bin" prepare --input "$work/nothing.txt" --output "$work/out.bin"
[ -e "$work/out.bin" ] && { echo "FAIL prepare left $work/out.bin"; failures=$((failures + 1)); }
expect_error "sample missing model" "$work/none.h5" "$bin" sample --model "$work/none.h5"

expect_error "resume from a missing checkpoint" "$work/none.h5" train "--resume=$work/none.h5"
expect_error "empty checkpoint.resume" "checkpoint.resume = '': must not be empty" train --set checkpoint.resume=
expect_error "sample: bad value" "--tokens '2.5'" "$bin" sample --model "$work/run/model.h5" --tokens 2.5
RUN_STARTED=1 expect_error "non-finite loss" "not finite" train --set train.lr=1e30 --set train.min_lr=0 --set train.warmup_steps=1
rm -rf "$work/run" # a run that failed mid-way keeps its record; the next case starts clean

# Under MPI: a setup error every rank meets, or one rank 0 meets, is printed once and every rank exits.
if [ -n "${RT_MPIRUN:-}" ]; then
  read -r -a mpirun_cmd <<<"$RT_MPIRUN"
  mpi_train() { "${mpirun_cmd[@]}" -np 2 "$bin" train --config "$work/ok.ini" --set parallel.sp=2 "$@"; }
  for case in "missing data file|$work/missing.bin|--set|data.train=$work/missing.bin" \
              "run.dir not creatable|cannot create directory|--set|run.dir=$work/ok.ini/sub" \
              "non-finite loss|not finite|--set|train.lr=1e30" \
              "token id >= vocab|badtoken.bin: token 0 has id|--set|data.train=$work/badtoken.bin" \
              "token id >= vocab, late in the file|latetoken.bin: token $late has id 300|--set|data.train=$work/latetoken.bin"; do
    IFS='|' read -r name pattern flag value <<<"$case"
    rm -rf "$work/run"
    mpi_train "$flag" "$value" >"$work/stdout" 2>"$work/stderr"
    status=$?
    lines=$(grep -c '^ringtrain:' "$work/stderr")
    if [ $status -ne 0 ] && [ "$lines" -eq 1 ] && grep -Eq -- "$pattern" "$work/stderr" && ! grep -q MPI_ABORT "$work/stderr"; then
      echo "ok   2 ranks, $name: $(grep '^ringtrain:' "$work/stderr")"; passed=$((passed + 1))
    else
      echo "FAIL 2 ranks, $name: status $status, $lines ringtrain lines:"; cat "$work/stderr"; failures=$((failures + 1))
    fi
  done

  # Ranks set up differently (each app context of mpirun gets its own command line or directory): one
  # clear line naming the rank, every rank ends, within 60 s (before the agreement, these hung forever).
  mkdir -p "$work/a" "$work/b" "$work/c"
  cp "$work/train.bin" "$work/a/train.bin"
  for i in $(seq 1 300); do echo "another corpus, line $i"; done >"$work/other.txt"
  "$bin" prepare --input "$work/other.txt" --output "$work/b/train.bin" >/dev/null || echo "FAIL prepare other.txt"
  sed -e "s|^train = .*|train = train.bin|" -e "s|^dir = .*|dir = run|" "$work/ok.ini" >"$work/relative.ini"
  bad=(train --config "$work/ok.ini" --set model.n_heads=5)
  good=(train --config "$work/ok.ini")
  mpmd_case() { # NAME PATTERN -- APP0 ARGS... : APP1 ARGS...
    local name=$1 pattern=$2; shift 3
    local t0=$SECONDS
    timeout 90 "${mpirun_cmd[@]}" "$@" >"$work/stdout" 2>"$work/stderr"
    local status=$? lines
    lines=$(grep -c '^ringtrain:' "$work/stderr")
    if [ $status -ne 0 ] && [ $status -ne 124 ] && [ $((SECONDS - t0)) -le 60 ] && [ "$lines" -eq 1 ] &&
       grep -Eq -- "$pattern" "$work/stderr" && ! grep -q MPI_ABORT "$work/stderr"; then
      echo "ok   $name ($((SECONDS - t0)) s): $(grep '^ringtrain:' "$work/stderr")"; passed=$((passed + 1))
    else
      echo "FAIL $name: status $status after $((SECONDS - t0)) s, $lines ringtrain lines:"; cat "$work/stderr"
      failures=$((failures + 1))
    fi
  }
  mpmd_case "config invalid on rank 1 only" "^ringtrain: rank 1: .*n_heads" -- \
    -np 1 "$bin" "${good[@]}" : -np 1 "$bin" "${bad[@]}"
  mpmd_case "config invalid on rank 0 only" "^ringtrain: rank 0: .*n_heads" -- \
    -np 1 "$bin" "${bad[@]}" : -np 1 "$bin" "${good[@]}"
  mpmd_case "configs differ in n_layers" \
    "^ringtrain: rank 1: its resolved config differs from rank 0's: model.n_layers = 2 here, 3 on rank 0" -- \
    -np 1 "$bin" "${good[@]}" --set model.n_layers=3 : -np 1 "$bin" "${good[@]}" --set model.n_layers=2
  mpmd_case "unknown option on rank 1 only" "^ringtrain: rank 1: train: unexpected or incomplete argument '--bogus'" -- \
    -np 1 "$bin" "${good[@]}" : -np 1 "$bin" "${good[@]}" --bogus
  mpmd_case "another data file on rank 1" \
    "^ringtrain: rank 1: data.train: train.bin differs from rank 0's \([0-9]+ bytes here, [0-9]+ on rank 0" -- \
    -np 1 -wdir "$work/a" "$bin" train --config "$work/relative.ini" : \
    -np 1 -wdir "$work/b" "$bin" train --config "$work/relative.ini"
  mpmd_case "data file missing on rank 1's node" \
    "^ringtrain: rank 1: data.train: train.bin: cannot be opened here, readable on rank 0" -- \
    -np 1 -wdir "$work/a" "$bin" train --config "$work/relative.ini" : \
    -np 1 -wdir "$work/c" "$bin" train --config "$work/relative.ini"
  if [ -e "$work/a/run" ] || [ -e "$work/b/run" ] || [ -e "$work/c/run" ]; then
    echo "FAIL ranks set up differently: a run directory was created"; failures=$((failures + 1))
  fi
  rm -rf "$work/a" "$work/b" "$work/c" "$work/other.txt" "$work/relative.ini"
fi

# prepare: a failed command deletes or truncates nothing the user has, and names the user's path (not a .tmp).
echo "an earlier good file" >"$work/keep.bin"
expect_error "prepare: val output in a missing directory" "nodir/v.bin: cannot create: No such file" \
  "$bin" prepare --input "$work/corpus.txt" --output "$work/keep.bin" --val-output "$work/nodir/v.bin"
mkdir -p "$work/adir"
expect_error "prepare: val output is a directory" "adir: is a directory" \
  "$bin" prepare --input "$work/corpus.txt" --output "$work/keep.bin" --val-output "$work/adir"
if [ "$(cat "$work/keep.bin")" != "an earlier good file" ]; then
  echo "FAIL prepare: a failed command changed keep.bin"; failures=$((failures + 1))
elif grep -q '\.tmp' "$work/stderr"; then
  echo "FAIL prepare: the error names a .tmp path"; failures=$((failures + 1))
else
  echo "ok   prepare: keep.bin untouched by the failed commands"; passed=$((passed + 1))
fi
rm -rf "$work/adir" "$work/keep.bin"

echo "$passed passed, $failures failed"
[ $failures -eq 0 ]
