#!/usr/bin/env bash
# The quickstart config (2 ranks: sequence parallel, ZeRO-1, offload) logs the same loss curve as
# one rank (sp = 1), to 1e-5 relative, over its first 20 steps.
set -euo pipefail
bin=$1 config=$2 python=$3
shift 3
mpirun_flags=("$@")
work=$(mktemp -d /tmp/rt_quickstart_parity.XXXXXX)
trap 'rm -rf "$work"' EXIT
inputs=()
while IFS= read -r text; do inputs+=(--input "$text"); done < <(find /usr/share/common-licenses -maxdepth 1 -type f | sort)
"$bin" prepare "${inputs[@]}" --output "$work/train.bin" --val-output "$work/val.bin" --val-fraction 0.05 >/dev/null
common=(--config "$config" --set train.steps=20 --set "data.train=$work/train.bin" --set "data.val=$work/val.bin"
        --set train.val_every=10 --set train.log_every=1000)
mpirun "${mpirun_flags[@]}" -np 1 "$bin" train "${common[@]}" --set parallel.sp=1 --set "run.dir=$work/np1" >/dev/null
mpirun "${mpirun_flags[@]}" -np 2 "$bin" train "${common[@]}" --set "run.dir=$work/np2" >/dev/null
"$python" - "$work/np1/metrics.jsonl" "$work/np2/metrics.jsonl" <<'PY'
import json, sys
one, two = ([json.loads(line) for line in open(path)] for path in sys.argv[1:3])
assert len(one) == len(two) == 20, (len(one), len(two))
worst = 0.0
for a, b in zip(one, two):
    for key in ("loss", "val_loss"):
        if key in a:
            worst = max(worst, abs(a[key] - b[key]) / abs(a[key]))
assert all(b["offloaded_bytes"] > 0 for b in two), "offload mode offloaded nothing"
ok = worst <= 1e-5
print(f"{'ok  ' if ok else 'FAIL'} np=2 vs np=1 losses: worst relative difference {worst:.2e} (tol 1e-5)")
print(f"{int(ok)} passed, {int(not ok)} failed")
sys.exit(0 if ok else 1)
PY
