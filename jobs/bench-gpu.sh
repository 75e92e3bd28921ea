#!/usr/bin/env bash
# GPU benchmarks, on the GPU machine (jobs/gpu-check.sh runs this from the unpacked bundle, jobs/bundle.sh):
#  1. training steps (bench_gpu, one rank, ZeRO 0): gpt2-124m and a 336M llama (24 x 1024, 16 heads, 4 kv heads,
#     d_ff 2816, vocab 32000) at T = 4096 (B = 8) and T = 32768 (B = 1), 32768 tokens a step either way, in
#     recompute, keep and offload: tokens/s, model TFLOP/s, MFU, and each mode against recompute;
#  2. our attention kernels alone (bench_attention: forward, backward, causal, fp32 buffers, bf16 tensor cores)
#     next to PyTorch's scaled_dot_product_attention (bf16, causal) on the same GPU in the same job
#     (jobs/bench_attention_torch.py): TFLOP/s and ours / PyTorch.
# MFU is against the H200's dense bf16 tensor-core peak, 989 TFLOP/s: NVIDIA's H200 (SXM) datasheet gives
# 1,979 TFLOP/s of bf16 tensor-core work with 2:4 sparsity, twice the dense rate. A bf16 8192^3 torch.matmul
# in the same job says what the chip reaches in practice.
# Usage: jobs/bench-gpu.sh [RUN]   RUN: a command that runs a bundled program by name (default: $RT_BUNDLE/run)
# Environment: RT_PEAK_TFLOPS (989), RT_BENCH_STEPS (timed steps, 2), RT_BENCH_TIMEOUT (s per model and shape,
# 100), RT_ATTN_TIMEOUT (s per attention shape, 40), PYTHON (python3).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
run=${1:-${RT_BUNDLE:?set RT_BUNDLE to the unpacked bundle or pass RUN}/run}
peak=${RT_PEAK_TFLOPS:-989}
steps=${RT_BENCH_STEPS:-2}
per_model=${RT_BENCH_TIMEOUT:-100}
per_attn=${RT_ATTN_TIMEOUT:-40}
python=${PYTHON:-python3}
out=$(mktemp -d /tmp/rt_bench_gpu.XXXXXX)
trap 'rm -rf "$out"' EXIT
status=0

gpt2=(model.preset=gpt2-124m model.max_seq_len=32768)
llama=(model.family=llama model.n_layers=24 model.d_model=1024 model.n_heads=16 model.n_kv_heads=4 model.d_ff=2816
  model.vocab_size=32000 model.max_seq_len=32768)

echo "== training steps: tokens/s, MFU against $peak TFLOP/s (bf16 dense), each mode against recompute"
for model in gpt2 llama; do
  if [ $model = gpt2 ]; then args=("${gpt2[@]}"); else args=("${llama[@]}"); fi
  for shape in "8 4096" "1 32768"; do
    read -r B T <<<"$shape"
    echo "-- $model B=$B T=$T"
    timeout -k 5 "$per_model" "$run" bench_gpu "$B" "$T" "$steps" "$peak" "${args[@]}" | tee "$out/train_${model}_$T.txt"
    rc=${PIPESTATUS[0]}
    if [ "$rc" != 0 ]; then
      echo "bench_gpu $model T=$T: exit $rc$([ "$rc" = 124 ] && echo " (timed out after $per_model s)")"
      status=1
    fi
  done
done

echo
echo "== attention alone (causal, one block of T x T): ours vs PyTorch scaled_dot_product_attention"
# gpt2-124m's and the llama's heads at both lengths, and D = 128
for shape in "4096 12 12 64" "4096 16 4 64" "32768 12 12 64" "32768 16 4 64" "16384 8 8 128"; do
  timeout -k 5 "$per_attn" "$run" bench_attention $shape 5 | tee -a "$out/attn_ours.txt"
  rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ]; then
    echo "bench_attention $shape: exit $rc"
    status=1
  fi
done
timeout -k 5 120 "$python" "$here/bench_attention_torch.py" "$out/attn_ours.txt" 10 || {
  echo "bench_attention_torch.py: exit $?"
  status=1
}

echo
echo "== summary: offload / recompute and MFU"
for f in "$out"/train_*.txt; do
  [ -e "$f" ] || continue
  name=$(basename "$f" .txt)
  awk -v name="${name#train_}" '$2 == "|" && ($1 == "recompute" || $1 == "keep" || $1 == "offload") {
      for (i = 1; i <= NF; i++) { if ($i == "MFU") mfu = $(i + 1); if ($i == "recompute" && i > 1) vs = $(i + 1) }
      printf "%-14s %-10s MFU %s  vs recompute %s\n", name, $1, mfu, vs }' "$f"
  sed -n "s/^offload storage: /$(printf '%-14s' "${name#train_}") activations in fp32 vs bf16: /p" "$f"
done
exit $status
