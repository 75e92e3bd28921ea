#!/usr/bin/env bash
# Packed documents: step time of document-masked training against full causal attention on the same tokens, at
# T = 8192 and 32768 with log-normal document lengths (median 512 and 2048, sigma 1.1, capped at T), on 1 rank
# and on sp = 4 ranks (balanced layout, and the plain zigzag for its imbalance). A one-layer byte-level llama
# (d_model 64, 4 heads of 16), so attention is most of the step. Prints, per case, s/step of each, the packed
# over causal ratio, the share of causal pairs the documents mask, and the worst per-rank work imbalance.
# Usage: jobs/bench-packed.sh [STEPS] [T...]   (default 4 steps; T 8192 32768)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash jobs/build.sh build >/dev/null
steps=${1:-4}
shift || true
lengths=("$@")
[ ${#lengths[@]} -eq 0 ] && lengths=(8192 32768)
mpirun_flags=(--oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)
out=$(mktemp -d /tmp/rt_bench_packed.XXXXXX)
trap 'rm -rf "$out"' EXIT

# Byte-level text: documents of letters and spaces (no newline), one newline (id 10) after each.
make_data() { # median T file
  /usr/bin/python3 - "$1" "$2" "$3.txt" <<'PY'
import random, sys
median, T, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(median)
letters = "abcdefghijklmnopqrstuvwxyz     "
parts, total = [], 0
while total < 12 * T:
    n = min(T, max(1, int(round(rng.lognormvariate(0.0, 1.1) * median))))
    parts.append("".join(rng.choice(letters) for _ in range(n - 1)) + "\n")
    total += n
open(path, "w").write("".join(parts))
PY
  build/ringtrain prepare --input "$3.txt" --output "$3" >/dev/null
}

summary() { /usr/bin/python3 jobs/metrics_summary.py "$1" | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
print(d["step_s"], d.get("attn_masked_share", 0.0), d.get("attn_work_imbalance", 1.0))'; }

run() { # ranks T data separator layout dir
  local ranks=$1 T=$2 data=$3 sep=$4 layout=$5 dir=$6
  mpirun "${mpirun_flags[@]}" -np "$ranks" build/ringtrain train --set model.family=llama --set model.n_layers=1 \
    --set model.d_model=64 --set model.n_heads=4 --set model.n_kv_heads=4 --set model.d_ff=128 \
    --set model.vocab_size=256 --set model.max_seq_len="$T" --set train.seq_len="$T" --set train.batch_size=1 \
    --set train.steps="$steps" --set train.warmup_steps=1 --set activations.mode=recompute \
    --set parallel.sp="$ranks" --set data.train="$data" --set data.document_separator="$sep" \
    --set parallel.document_layout="$layout" --set checkpoint.every=0 --set run.dir="$dir" \
    --set train.log_every=1000 >/dev/null
}

printf "%-6s %-6s %-5s %-9s %-9s %-7s %-7s %-9s %-9s\n" T median ranks causal_s packed_s ratio masked imbalance \
  zigzag_imb
for T in "${lengths[@]}"; do
  for median in 512 2048; do
    data="$out/docs_${median}_$T.bin"
    make_data "$median" "$T" "$data"
    for ranks in 1 4; do
      base="$out/t${T}_m${median}_p${ranks}"
      run "$ranks" "$T" "$data" -1 balanced "$base.causal"
      run "$ranks" "$T" "$data" 10 balanced "$base.packed"
      read -r causal _ _ < <(summary "$base.causal")
      read -r packed masked imbalance < <(summary "$base.packed")
      zigzag="-"
      if [ "$ranks" -gt 1 ]; then
        run "$ranks" "$T" "$data" 10 zigzag "$base.zigzag"
        read -r _ _ zigzag < <(summary "$base.zigzag")
      fi
      printf "%-6s %-6s %-5s %-9.3f %-9.3f %-7.2f %-7.3f %-9.3f %-9s\n" "$T" "$median" "$ranks" "$causal" "$packed" \
        "$(/usr/bin/python3 -c "print($packed / $causal)")" "$masked" "$imbalance" "$zigzag"
    done
  done
done
