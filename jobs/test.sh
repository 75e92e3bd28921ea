#!/usr/bin/env bash
# Installs what is missing, builds the normal and the sanitizer (ASan + UBSan)
# trees, checks formatting, and runs every test of both through CTest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash jobs/install-deps.sh

echo "== format check (clang-format)"
if command -v clang-format >/dev/null; then
  unformatted=$(git ls-files '*.c' '*.h' '*.cu' | xargs clang-format --dry-run 2>&1 | grep -c warning || true)
  if [ "$unformatted" -ne 0 ]; then
    git ls-files '*.c' '*.h' '*.cu' | xargs clang-format --dry-run 2>&1 | grep warning | head -20
    echo "clang-format: $unformatted places differ from .clang-format"; exit 1
  fi
else
  echo "clang-format not installed: skipping the format check"
fi

echo "== layering (jobs/check-layers.py: no #include points up a layer or across)"
/usr/bin/python3 jobs/check-layers.py
echo "== documents (jobs/check-docs.py: every repository path a document names exists)"
/usr/bin/python3 jobs/check-docs.py

echo "== build (release)"
bash jobs/build.sh "$root/build"
echo "== build (AddressSanitizer + UBSan; CPU only: the release tree builds and links the CUDA backend)"
bash jobs/build.sh "$root/build-asan" -DRINGTRAIN_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRINGTRAIN_CUDA=OFF

status=0
echo "== tests (release, with the slurm tests)"
# -j3 on 2 cores: the slurm tests run one at a time, count one processor each and mostly wait for SLURM's
# clock, so the two-processor tests run beside them instead of after them
ctest --test-dir "$root/build" --output-on-failure -j3 || status=1
echo "== tests (sanitizers; the slurm tests run once, above)"
ctest --test-dir "$root/build-asan" --output-on-failure -j2 -LE slurm || status=1
echo "== fuzzers (libFuzzer + ASan + UBSan, 15 s per target)"
bash jobs/fuzz.sh 15 || status=1
exit $status
