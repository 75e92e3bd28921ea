#!/usr/bin/env bash
# A fixed set of short training runs whose every number is printed: each step's loss, gradient norm and device
# memory (peak and offloaded bytes), and a SHA-256 of the final checkpoint's tensors (/model and the optimizer's
# /optim state, read with h5py). Two builds that compute the same thing print the same text, byte for byte: run
# it around a change that must not move a number (a refactor, a build change):
#
#   bash jobs/bitwise-runs.sh [RINGTRAIN_BINARY] > before.txt   (on the old commit)
#   bash jobs/bitwise-runs.sh [RINGTRAIN_BINARY] > after.txt    (on the new one)
#   cmp before.txt after.txt && sha256sum before.txt after.txt
#
# The runs cover both families; 1, 2 and 4 ranks; dp x sp meshes; ZeRO 0-3; keep, recompute and offload;
# the tiled MLP; dropout; gradient accumulation. About half a minute on a 2-core machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/build/ringtrain}
[ -x "$bin" ] || { echo "bitwise-runs: no ringtrain binary at $bin (build first: bash jobs/build.sh)" >&2; exit 1; }
mpirun_flags=(--oversubscribe -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1)
[ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

inputs=()
while IFS= read -r text; do inputs+=(--input "$text"); done < <(find /usr/share/common-licenses -maxdepth 1 -type f | sort)
"$bin" prepare "${inputs[@]}" --output "$work/train.bin" --val-output "$work/val.bin" --val-fraction 0.05 >/dev/null

gpt2=(model.family=gpt2 model.n_kv_heads=4)
long=(model.max_seq_len=1024 train.seq_len=1024 train.batch_size=2)
# name | ranks | overrides (space-separated key=value)
runs=(
  "llama-np1-z0-keep|1|zero.stage=0 activations.mode=keep"
  "llama-np1-z0-recompute-accum|1|zero.stage=0 activations.mode=recompute train.grad_accum=2"
  "llama-np2-sp2-z1-offload|2|parallel.sp=2 zero.stage=1 activations.mode=offload"
  "llama-np2-dp2-z2-recompute-dropout|2|parallel.dp=2 zero.stage=2 activations.mode=recompute model.dropout=0.1"
  "llama-np4-dp2sp2-z3-offload|4|parallel.dp=2 parallel.sp=2 zero.stage=3 activations.mode=offload"
  "llama-np4-sp4-z2-keep-tiled|4|parallel.sp=4 zero.stage=2 activations.mode=keep ${long[*]} activations.mlp_tile_mib=1"
  "gpt2-np1-z0-recompute-dropout|1|${gpt2[*]} zero.stage=0 activations.mode=recompute model.dropout=0.1"
  "gpt2-np1-z0-keep-tiled|1|${gpt2[*]} zero.stage=0 activations.mode=keep ${long[*]} activations.mlp_tile_mib=1"
  "gpt2-np2-sp2-z3-keep|2|${gpt2[*]} parallel.sp=2 zero.stage=3 activations.mode=keep"
  "gpt2-np4-dp2sp2-z1-offload-dropout|4|${gpt2[*]} parallel.dp=2 parallel.sp=2 zero.stage=1 activations.mode=offload model.dropout=0.1"
  "gpt2-np4-sp4-z3-recompute-accum|4|${gpt2[*]} parallel.sp=4 zero.stage=3 activations.mode=recompute train.grad_accum=2"
)

for run in "${runs[@]}"; do
  IFS='|' read -r name np overrides <<<"$run"
  sets=()
  for kv in model.preset=tiny train.steps=4 train.batch_size=4 train.seq_len=64 train.lr=3e-3 train.warmup_steps=1 \
            train.val_every=0 train.log_every=1000 checkpoint.every=4 "data.train=$work/train.bin" \
            "data.val=$work/val.bin" "run.dir=$work/$name" $overrides; do
    sets+=(--set "$kv")
  done
  printf '[model]\n' >"$work/empty.ini"
  if ! mpirun "${mpirun_flags[@]}" -np "$np" "$bin" train --config "$work/empty.ini" "${sets[@]}" \
      </dev/null >"$work/$name.log" 2>&1; then
    echo "bitwise-runs: run $name failed:" >&2
    tail -20 "$work/$name.log" >&2
    exit 1
  fi
  echo "== $name (np $np: $overrides)"
  /usr/bin/python3 - "$work/$name" <<'PY'
import glob, hashlib, json, os, sys
import h5py, numpy as np
run = sys.argv[1]
for line in open(os.path.join(run, "metrics.jsonl")):
    m = json.loads(line)
    print(f"step {m['step']} loss {m['loss']} grad_norm {m['grad_norm']} lr {m['lr']} "
          f"peak_device_bytes {m['peak_device_bytes']} offloaded_bytes {m['offloaded_bytes']}")
ckpts = sorted(glob.glob(os.path.join(run, "checkpoints", "step_*.h5")))
if not ckpts:
    sys.exit(f"bitwise-runs: {run} wrote no checkpoint")
digest = hashlib.sha256()
names = []
with h5py.File(ckpts[-1], "r") as f:
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    for name in sorted(n for n in names if n.startswith(("model/", "optim/"))):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(f[name][()]).tobytes())
print(f"{os.path.basename(ckpts[-1])} tensors {len(names)} sha256 {digest.hexdigest()}")
PY
done
