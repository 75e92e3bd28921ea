#!/usr/bin/env bash
# ringtrain against PyTorch on the CPU: the same models (gpt2-124m, llama-336m), the same fp32 AdamW step (the
# run's lr schedule, betas, eps, weight decay, clipping at 1.0), the same threads and the same random tokens,
# one after the other in one job. Prints per case both sides' parameter counts and first losses (the check that
# they train the same model), then a table of median s/step (steps after the first) and ringtrain's speed over
# PyTorch's (torch s / ringtrain s), with the machine and the libraries each side uses. The PyTorch side
# (jobs/bench_vs_torch.py) builds the model with transformers from the ringtrain run's resolved config.ini,
# attention through scaled_dot_product_attention; recompute mode = activation checkpointing per layer there.
#
# Usage: jobs/bench-vs-torch.sh [--steps N] [--threads N] [CASE...]
#   CASE: [FAMILY:]BxT[:MODE], FAMILY gpt2 or llama (default both), MODE keep (default) or recompute.
#   Default cases: 4x64 1x1024 1x4096 1x16384:recompute for both families. Quick run: jobs/bench-vs-torch.sh 4x64
#   --steps: steps per side, the first a warm-up (default 4); --threads: OMP_NUM_THREADS and torch.set_num_threads
#   (default nproc). RINGTRAIN_PYENV: the venv of jobs/install-pyenv.sh (default ~/.cache/ringtrain/pyenv);
#   RT_BUILD_DIR: the build tree (default build/). Each case's files live in a temporary directory removed
#   after it: a llama-336m run ends by saving its checkpoint and model.h5 (about 7 GB, outside the timed steps).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${RINGTRAIN_PYENV:-$HOME/.cache/ringtrain/pyenv}/bin/python
if ! [ -x "$python" ] || ! "$python" -c "import torch, transformers, numpy" 2>/dev/null; then
  echo "bench-vs-torch: no Python environment with torch and transformers at $(dirname "$(dirname "$python")");" \
    "make it with: bash jobs/install-pyenv.sh" >&2
  exit 1
fi

steps=4
threads=$(nproc)
cases=()
while [ $# -gt 0 ]; do
  case $1 in
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) cases+=("$1"); shift ;;
  esac
done
[ ${#cases[@]} -eq 0 ] && cases=(4x64 1x1024 1x4096 1x16384:recompute)
if ! [[ $steps =~ ^[0-9]+$ && $steps -ge 2 && $threads =~ ^[0-9]+$ && $threads -ge 1 ]]; then
  echo "bench-vs-torch: --steps must be at least 2 (a warm-up and a timed step) and --threads at least 1" >&2
  exit 2
fi

# The presets (runtime/config/config.c): ringtrain's name, the vocabulary the token file needs, max positions.
declare -A preset=([gpt2]=gpt2-124m [llama]=llama-336m) vocab=([gpt2]=50257 [llama]=32000)
declare -A positions=([gpt2]=1024 [llama]=32768)

# Expand each CASE into "family B T mode" lines, refusing a malformed one before anything runs.
plan=()
for spec in "${cases[@]}"; do
  if ! [[ $spec =~ ^((gpt2|llama):)?([0-9]+)x([0-9]+)(:(keep|recompute))?$ ]] || [ "${BASH_REMATCH[3]}" -lt 1 ] ||
    [ "${BASH_REMATCH[4]}" -lt 2 ]; then
    echo "bench-vs-torch: case '$spec': expected [gpt2:|llama:]BxT[:keep|:recompute], e.g. 4x64 or llama:1x16384:recompute" >&2
    exit 2
  fi
  for family in ${BASH_REMATCH[2]:-gpt2 llama}; do
    plan+=("$family ${BASH_REMATCH[3]} ${BASH_REMATCH[4]} ${BASH_REMATCH[6]:-keep}")
  done
done

build=${RT_BUILD_DIR:-$root/build}
bash jobs/build.sh "$build" >/dev/null
out=$(mktemp -d "${TMPDIR:-/tmp}/rt_bench_vs_torch.XXXXXX")
trap 'rm -rf "$out"' EXIT

openblas=$(ldd "$build/ringtrain" | awk '/libopenblas/ {print $3}')
openblas_config=$("$python" -c 'import ctypes, sys
lib = ctypes.CDLL(sys.argv[1]); lib.openblas_get_config.restype = ctypes.c_char_p
print(lib.openblas_get_config().decode())' "$openblas")
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; $threads threads per side," \
  "$steps steps per case (the first a warm-up)"
echo "ringtrain: $openblas_config ($(readlink -f "$openblas"))"
echo "pytorch: $("$python" jobs/bench_vs_torch.py versions)"

export OMP_NUM_THREADS=$threads
for line in "${plan[@]}"; do
  read -r family B T mode <<<"$line"
  max_seq_len=$(( T > positions[$family] ? T : positions[$family] ))
  case_dir="$out/$family-${B}x$T-$mode"
  mkdir "$case_dir"
  # B windows of T+1 tokens, exactly one batch: every step of both sides trains on these tokens.
  "$python" jobs/bench_vs_torch.py tokens "$case_dir/tokens.bin" "${vocab[$family]}" $((B * T + 1)) 1337
  "$build/ringtrain" train --set model.preset="${preset[$family]}" --set model.max_seq_len="$max_seq_len" \
    --set train.batch_size="$B" --set train.seq_len="$T" --set train.steps="$steps" \
    --set activations.mode="$mode" --set data.train="$case_dir/tokens.bin" --set checkpoint.every=0 \
    --set train.log_every=1000 --set run.dir="$case_dir/run" >"$case_dir/ringtrain.log"
  params=$(sed -n 's/^ringtrain: .* model, \([0-9]*\) parameters.*/\1/p' "$case_dir/ringtrain.log")
  [ -n "$params" ] || { echo "bench-vs-torch: $line: no parameter count in ringtrain's first line" >&2; exit 1; }
  "$python" jobs/bench_vs_torch.py train "$case_dir/run" "$steps" "$threads" >"$case_dir/torch.json"
  "$python" jobs/bench_vs_torch.py compare "$case_dir/run" "$params" "$case_dir/torch.json" "$out/rows"
  rm -rf "$case_dir"
done

echo
printf "%-7s %-3s %-6s %-10s %-15s %-17s %s\n" family B T mode "PyTorch s/step" "ringtrain s/step" \
  "ringtrain/PyTorch speed"
while read -r family BxT mode torch_s ringtrain_s speed; do
  printf "%-7s %-3s %-6s %-10s %-15s %-17s %s\n" "$family" "${BxT%x*}" "${BxT#*x}" "$mode" "$torch_s" \
    "$ringtrain_s" "$speed"
done <"$out/rows"
