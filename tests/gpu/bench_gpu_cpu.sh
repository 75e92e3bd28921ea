#!/usr/bin/env bash
# bench_gpu_cpu.sh BENCH_GPU BENCH_ATTENTION: the GPU benchmarks' programs on the CPU backend
# (RT_BENCH_BACKEND=cpu), so what the GPU session runs first does not fail on something a CPU could have shown:
# bench_gpu on the tiny preset prints a line per mode, the three modes report the same loss (keep, recompute
# and offload train the same model), and the offload-storage lines are there; bench_attention prints the
# line that jobs/bench_attention_torch.py parses, with every field it reads.
set -uo pipefail
bench_gpu=$1 bench_attention=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
fail() { echo "FAIL: $*"; status=1; }

# 3 timed steps at a large learning rate: a mode whose gradients are off shows in the 6th digit of its loss
RT_BENCH_BACKEND=cpu OMP_NUM_THREADS=1 "$bench_gpu" 2 128 3 1 model.preset=tiny train.lr=0.01 train.warmup_steps=0 \
  >"$out/train.txt" 2>&1 ||
  fail "bench_gpu exited $?"
cat "$out/train.txt"
for mode in recompute keep offload; do
  grep -Eq "^$mode +\| +[0-9]+ tok/s" "$out/train.txt" || fail "no $mode line"
done
losses=$(awk '$2 == "|" { for (i = 1; i <= NF; i++) if ($i == "loss") print $(i + 1) }' "$out/train.txt" | sort -u)
[ "$(echo "$losses" | wc -l)" = 1 ] && [ -n "$losses" ] || fail "the modes' losses differ: $(echo $losses)"
rate=$(sed -n 's/^copy engine: \([0-9.]*\) GB\/s.*/\1/p' "$out/train.txt")
awk -v r="${rate:-0}" 'BEGIN { exit !(r > 0) }' || fail "no copy engine line with a rate above 0: '${rate}'"
# what the offload step moved: (L-1) layer inputs of B x T x C floats (the last layer's input stays), tiny: L = 2
bytes=$(sed -n 's/^offload storage: [0-9.]* MB (\([0-9]*\) bytes) each way per step; copies are .* of the recompute step in fp32.*/\1/p' "$out/train.txt")
want=$(((2 - 1) * 2 * 128 * 64 * 4))
[ "$bytes" = "$want" ] || fail "offload storage says ${bytes:-nothing} bytes each way; (L-1) x B x T x C x 4 is $want"

RT_BENCH_BACKEND=cpu OMP_NUM_THREADS=1 "$bench_attention" 256 4 2 16 2 >"$out/attn.txt" 2>&1 ||
  fail "bench_attention exited $?"
cat "$out/attn.txt"
# the line parsed by jobs/bench_attention_torch.py's own reader (imported: the script's torch part is not needed)
python3 -B -c '
import sys
sys.path.insert(0, sys.argv[1])
from bench_attention_torch import read_ours
ours = read_ours(sys.argv[2])
assert len(ours) == 1, ours
o = ours[0]
need = {"T": 256, "H": 4, "Hkv": 2, "D": 16}
assert all(o[k] == v for k, v in need.items()), o
assert all(o[k] > 0 for k in ("fwd_ms", "bwd_ms")) and all(k in o for k in ("fwd_tflops", "bwd_tflops")), o
' "$root/jobs" "$out/attn.txt" || fail "bench_attention's line does not parse as jobs/bench_attention_torch.py reads it"
[ $status = 0 ] && echo "bench_gpu_cpu: ok"
exit $status
