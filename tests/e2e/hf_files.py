"""Files the Hugging Face tests write and read without PyTorch: ringtrain token files, ringtrain runs and
safetensors files taken apart byte by byte (so a bit-for-bit comparison does not go through any converter)."""
import json
import os
import struct
import subprocess

import numpy as np

from token_files import write_tokens


def run(args, check=True, env=None, timeout=120):
    """Runs a command with one BLAS/OpenMP thread; a hang ends as a failure naming the command."""
    e = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    e.update(env or {})
    try:
        result = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=e, timeout=timeout)
    except subprocess.TimeoutExpired as t:
        raise AssertionError(f"{' '.join(map(str, args))} still running after {timeout} s (hung?); stderr so far: "
                             f"{t.stderr if isinstance(t.stderr, str) else (t.stderr or b'').decode(errors='replace')}") from None
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}:\n"
                             f"{result.stdout.strip()[-2000:]}\n{result.stderr.strip()[-2000:]}")
    return result


def train(binary, run_dir, settings, mpirun=None, ranks=1):
    """A ringtrain run from --set keys alone; returns its metrics (one dict per step)."""
    args = (list(mpirun) + ["-np", str(ranks)] if ranks > 1 else []) + [binary, "train"]
    for s in settings + [f"run.dir={run_dir}", f"parallel.sp={ranks}"]:
        args += ["--set", s]
    run(args)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def first_step_settings(init_from, data, seq_len):
    """One step of batch 1 over a file of exactly seq_len + 1 tokens: its logged loss and grad_norm are the
    model's on that window, before any update (clipping off so grad_norm is the raw norm)."""
    return [f"model.init_from={init_from}", f"data.train={data}", f"train.seq_len={seq_len}", "train.steps=1",
            "train.batch_size=1", "train.warmup_steps=1", "train.grad_clip=0", "train.lr=1e-30", "train.min_lr=1e-30"]


def read_safetensors(path):
    """{name: (dtype, shape, raw bytes)} and the metadata, from the 8-byte length + JSON header layout."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", None)
    data = blob[8 + n:]
    return {k: (v["dtype"], tuple(v["shape"]), data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}, meta


def read_hf_dir(directory):
    """Every tensor of a model directory, single file or sharded (the index's weight_map)."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        part, _ = read_safetensors(os.path.join(directory, name))
        assert not set(part) & set(tensors), f"{directory}: a tensor appears in two shards"
        tensors.update(part)
    return tensors


def edit_header(path, edit):
    """Rewrites the JSON header of a safetensors file in place through edit(header_dict); the data stays."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + n:])


def bf16_to_f32(raw):
    """bf16 bytes widened exactly (the upper half of an fp32)."""
    u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return u.view(np.float32)
