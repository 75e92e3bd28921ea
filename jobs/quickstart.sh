#!/usr/bin/env bash
# From a fresh Debian 12 machine to a trained model: installs the packages, builds, prepares the
# default corpus, trains the `small` preset on 2 MPI ranks (sequence parallel, ZeRO-1, offload)
# and samples text from it. Extra arguments go to `ringtrain train` (e.g. --set train.steps=50).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash jobs/install-deps.sh
bash jobs/build.sh "$root/build"
bash jobs/prepare-corpus.sh

ranks=2
mpirun_flags=(--oversubscribe -x OMP_NUM_THREADS=$(( $(nproc) / ranks > 0 ? $(nproc) / ranks : 1 )))
[ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)
# Each run gets its own directory (train refuses a run.dir that holds an earlier run), unless run.dir is set.
run_dir=runs/quickstart-$(date +%Y%m%d-%H%M%S)
for arg in "$@"; do case $arg in *run.dir=*) run_dir=${arg#*run.dir=} ;; esac; done
# A stop signal (under mpirun: kill -USR1 <mpirun pid>) saves a checkpoint and exits 75; the same command
# with --resume continues it.
status=0
mpirun "${mpirun_flags[@]}" -np $ranks build/ringtrain train --config jobs/configs/quickstart.ini \
  --set "run.dir=$run_dir" "$@" || status=$?
if [ "$status" -eq 75 ]; then
  echo "stopped with a checkpoint; continue with: bash jobs/quickstart.sh --set run.dir=$run_dir --resume"
  exit 75
fi
[ "$status" -eq 0 ] || exit "$status"
echo
echo "== checkpoints in $run_dir/checkpoints (latest: $(cat "$run_dir/checkpoints/latest"))"
build/ringtrain inspect "$run_dir/checkpoints/$(cat "$run_dir/checkpoints/latest")" | sed -n 1,8p  # sed reads it all: head would end inspect with SIGPIPE (exit 141 under pipefail)

echo
echo "== sample from $run_dir/model.h5"
build/ringtrain sample --model "$run_dir/model.h5" --prompt "This License" --tokens 300 --temperature 0.7
