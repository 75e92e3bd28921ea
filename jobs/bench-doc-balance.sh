#!/usr/bin/env bash
# Attention work per rank of sequence-parallel layouts on windows packed with documents (causal within a
# document): log-normal document lengths (medians 1024 and 2048, sigma 1.1) cut into windows of T = 32768,
# P = 4 and 8. Counts, not timings (the same on any machine). Not a test: no thresholds.
# Usage: jobs/bench-doc-balance.sh [WINDOWS] [SEED]   (RT_BUILD: the build tree, default build/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${RT_BUILD:-$root/build}
windows=${1:-2000}
seed=${2:-1}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target bench_doc_balance -j"$(nproc)" >/dev/null
header=header
for median in 1024 2048; do
  for p in 4 8; do
    "$build/bench_doc_balance" 32768 $p $median 1.1 "$windows" "$seed" $header
    header=
  done
done
