#!/usr/bin/env bash
# Installs what is missing, checks formatting, layering and documents, builds the normal and the sanitizer
# (ASan + UBSan) trees, runs every test of the normal tree and the subset labelled asan of the sanitizer tree
# through CTest (tests/README.md), then the fuzzers.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
suite_start=$(date +%s)
# "== [seconds since the start] stage": when each stage began
stage() { echo "== [$(($(date +%s) - suite_start)) s] $*"; }
bash jobs/install-deps.sh
bash jobs/install-pyenv.sh  # the Hugging Face tests' reference clients (label hf)

stage "format check (clang-format)"
if command -v clang-format >/dev/null; then
  unformatted=$(git ls-files '*.c' '*.h' '*.cu' | xargs clang-format --dry-run 2>&1 | grep -c warning || true)
  if [ "$unformatted" -ne 0 ]; then
    git ls-files '*.c' '*.h' '*.cu' | xargs clang-format --dry-run 2>&1 | grep warning | head -20
    echo "clang-format: $unformatted places differ from .clang-format"; exit 1
  fi
else
  echo "clang-format not installed: skipping the format check"
fi

stage "layering (jobs/check-layers.py: no #include points up a layer or across)"
/usr/bin/python3 jobs/check-layers.py
stage "documents (jobs/check-docs.py: every repository path a document names exists)"
/usr/bin/python3 jobs/check-docs.py

stage "build (release)"
bash jobs/build.sh "$root/build"

status=0
# The slurm tests (release only) run one at a time and mostly wait for SLURM's clock, one core each: they run in
# the background from here on, beside the builds and tests below. They run from build/tests so that their
# CTest logs (build/tests/Testing) are not the ones of the run below (build/Testing).
slurm_log="$root/build/slurm-tests.log"
stage "tests (release, label slurm): in the background; their output is printed at the end"
ctest --test-dir "$root/build/tests" --output-on-failure -L slurm >"$slurm_log" 2>&1 &
slurm_pid=$!

stage "build (AddressSanitizer + UBSan; CPU only: the release tree builds and links the CUDA backend)"
bash jobs/build.sh "$root/build-asan" -DRINGTRAIN_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRINGTRAIN_CUDA=OFF ||
  status=1
stage "tests (release, all but the slurm ones)"
ctest --test-dir "$root/build" --output-on-failure -j2 -LE slurm || status=1
stage "tests (sanitizers: the subset labelled asan; tests/README.md says which and why)"
ctest --test-dir "$root/build-asan" --output-on-failure -j2 -L asan || status=1
stage "fuzzers (libFuzzer + ASan + UBSan, 15 s per target, two at a time)"
bash jobs/fuzz.sh 15 || status=1

stage "tests (release, label slurm), run in the background since the release build"
wait "$slurm_pid" || status=1
cat "$slurm_log"
stage "done"
exit $status
