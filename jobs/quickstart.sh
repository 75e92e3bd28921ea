#!/usr/bin/env bash
# From a fresh Debian 12 machine to a trained model: installs the packages,
# builds, prepares the default corpus, trains the `small` preset and samples
# text from it. Extra arguments go to `ringtrain train` (e.g. --set train.steps=50).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash jobs/install-deps.sh
bash jobs/build.sh "$root/build"

# The default corpus: the license texts every Debian system ships in
# /usr/share/common-licenses (base-files), about 260 KB of English.
if [ ! -f data/corpus/train.bin ]; then
  mkdir -p data/corpus
  mapfile -t texts < <(find /usr/share/common-licenses -maxdepth 1 -type f | sort)
  inputs=()
  for t in "${texts[@]}"; do inputs+=(--input "$t"); done
  build/ringtrain prepare "${inputs[@]}" --output data/corpus/train.bin --val-output data/corpus/val.bin --val-fraction 0.05
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
build/ringtrain train --config jobs/configs/quickstart.ini "$@"

echo
echo "== sample from runs/quickstart/model.h5"
build/ringtrain sample --model runs/quickstart/model.h5 --prompt "This License" --tokens 300 --temperature 0.7
