#!/usr/bin/env python3
"""Summarizes run directories' metrics.jsonl for the benchmarks: medians over the steps after the first
(step 0 pays first-touch page faults), one JSON object per run on stdout."""
import json
import statistics
import sys

for run_dir in sys.argv[1:]:
    with open(f"{run_dir}/metrics.jsonl") as f:
        steps = [json.loads(line) for line in f][1:]
    summary = {"run": run_dir}
    for key in ("step_s", "tokens_per_s", "comm_exposed_s", "prefetch_wait_s"):
        summary[key] = statistics.median(s[key] for s in steps)
    for key in ("peak_device_bytes", "optimizer_bytes", "offloaded_bytes", "offload_host_bytes"):
        summary[key] = max(s[key] for s in steps)
    if "documents" in steps[0]:  # packed documents: the masked share's median, the worst imbalance
        summary["attn_masked_share"] = statistics.median(s["attn_masked_share"] for s in steps)
        summary["attn_work_imbalance"] = max(s["attn_work_imbalance"] for s in steps)
    print(json.dumps(summary))
