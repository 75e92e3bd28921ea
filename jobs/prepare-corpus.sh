#!/usr/bin/env bash
# Prepares the default corpus once: the license texts every Debian system ships in
# /usr/share/common-licenses (base-files), byte-level, 5% held out for validation.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/data/corpus
[ -f "$out/train.bin" ] && [ -f "$out/val.bin" ] && exit 0
mkdir -p "$out"
inputs=()
while IFS= read -r text; do inputs+=(--input "$text"); done < <(find /usr/share/common-licenses -maxdepth 1 -type f | sort)
"$root/build/ringtrain" prepare "${inputs[@]}" --output "$out/train.bin" --val-output "$out/val.bin" --val-fraction 0.05
