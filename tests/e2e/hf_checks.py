"""Damaged Hugging Face inputs: each made by editing files transformers wrote, each refused by both readers
(train's model.init_from and export --checkpoint) with one stderr line naming the file and the field, exit
status 1, and nothing written."""
import json
import os
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

import hf_files
import hf_torch

TENSOR = "model.layers.0.mlp.down_proj.weight"  # (hidden, FFN)
NAN_AT = (3, 5)


def header_past_end(d):
    path = os.path.join(d, "model.safetensors")
    with open(path, "r+b") as f:
        f.write(np.uint64(os.path.getsize(path)).tobytes())


def overlapping_offsets(d):
    def edit(h):
        second = sorted((v["data_offsets"][0], k) for k, v in h.items() if k != "__metadata__")[1][1]
        h[second]["data_offsets"] = [o - 4 for o in h[second]["data_offsets"]]  # same size, 4 bytes into the first
    hf_files.edit_header(os.path.join(d, "model.safetensors"), edit)


def unknown_dtype(d):
    def edit(h):
        h[TENSOR]["dtype"] = "I32"  # 4 bytes like F32: only the dtype is wrong
    hf_files.edit_header(os.path.join(d, "model.safetensors"), edit)


def wrong_shape(d):
    def edit(h):
        h[TENSOR]["shape"] = h[TENSOR]["shape"][::-1]  # same element count, transposed
    hf_files.edit_header(os.path.join(d, "model.safetensors"), edit)


def resave(d, change):
    path = os.path.join(d, "model.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def missing_tensor(d):
    resave(d, lambda t: t.pop(TENSOR))


def nan_weight(d):
    def change(t):
        t[TENSOR][NAN_AT] = np.nan
    resave(d, change)


def missing_shard(d):
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        shard = sorted(set(json.load(f)["weight_map"].values()))[1]
    os.remove(os.path.join(d, shard))
    return shard


def config_edit(**changes):
    def apply(d):
        path = os.path.join(d, "config.json")
        with open(path) as f:
            config = json.load(f)
        config.update(changes)
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
    return apply


# (name, directory to start from, edit, the file stderr must name (None: the one edit returns), words stderr
# must hold besides: each a tuple of alternatives)
ST, CFG = "model.safetensors", "config.json"
CASES = [
    ("header length past the end of the file", "base", header_past_end, ST, [("header",)]),
    ("overlapping data_offsets", "base", overlapping_offsets, ST, [("data_offsets", "overlap")]),
    ("unknown dtype I32", "base", unknown_dtype, ST, [("dtype", "I32")]),
    ("shape disagrees with config.json", "base", wrong_shape, ST, [(TENSOR,)]),
    ("missing tensor", "base", missing_tensor, ST, [(TENSOR,)]),
    ("NaN weight", "base", nan_weight, ST, [(TENSOR,), (str(NAN_AT[0] * hf_torch.FFN + NAN_AT[1]),)]),
    ("index names a missing shard", "sharded", missing_shard, None, []),
    ("model_type mistral", "base", config_edit(model_type="mistral"), CFG, [("model_type",)]),
    ("hidden_act gelu", "base", config_edit(hidden_act="gelu"), CFG, [("hidden_act",)]),
    ("rope_scaling linear", "base", config_edit(rope_scaling={"rope_type": "linear", "factor": 2.0}), CFG,
     [("rope_scaling",)]),
    ("rope_parameters linear", "base",
     config_edit(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0}), CFG,
     [("rope_type", "rope_parameters")]),
    ("attention_bias true", "base", config_edit(attention_bias=True), CFG, [("attention_bias",)]),
]


def expect_refusal(args, what, words, must_not_exist):
    try:
        result = hf_files.run(args, check=False, timeout=30)
    except AssertionError as hung:
        print(f"FAIL {what}: {hung}")
        return False
    lines = result.stderr.strip().splitlines()
    problems = []
    if result.returncode != 1:
        problems.append(f"exit status {result.returncode}, expected 1")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, expected 1")
    for alternatives in words:
        if not any(w in result.stderr for w in alternatives):
            problems.append(f"stderr names none of {alternatives}")
    for path in must_not_exist:
        if os.path.exists(path):
            problems.append(f"{path} was written")
    status = "ok  " if not problems else "FAIL"
    print(f"{status} {what}: {' '.join(map(str, args[1:3]))}: {result.stderr.strip()[:300]}")
    for p in problems:
        print(f"     {p}")
    return not problems


def bad_inputs(binary, work):
    base, sharded = os.path.join(work, "base"), os.path.join(work, "sharded")
    model = hf_torch.make_model(hf_torch.llama_config(), seed=21)
    hf_torch.save(model, base)
    hf_torch.save(model, sharded, max_shard_size="100KB")
    T = 16
    data = os.path.join(work, "window.bin")
    hf_files.write_tokens(data, np.random.default_rng(22).integers(0, hf_torch.VOCAB, T + 1), hf_torch.VOCAB)

    # the undamaged directories are accepted by both, so every refusal below is the edit's doing
    for src in (base, sharded):
        hf_files.train(binary, os.path.join(work, "control_" + os.path.basename(src)),
                       hf_files.first_step_settings(src, data, T))
        out = os.path.join(work, "export_" + os.path.basename(src))
        hf_files.run([binary, "export", "--checkpoint", src, "--hf", out])

    failed = 0
    for i, (what, start, edit, file_name, words) in enumerate(CASES):
        d = os.path.join(work, f"bad{i}")
        shutil.copytree(base if start == "base" else sharded, d)
        named = edit(d)
        file_word = (file_name or named,)
        run_dir, out = os.path.join(work, f"run{i}"), os.path.join(work, f"out{i}")
        train_args = [binary, "train"]
        for s in hf_files.first_step_settings(d, data, T) + [f"run.dir={run_dir}"]:
            train_args += ["--set", s]
        failed += not expect_refusal(train_args, what + " (train)", words + [file_word], [run_dir])
        failed += not expect_refusal([binary, "export", "--checkpoint", d, "--hf", out], what + " (export)",
                                     words + [file_word], [out, out + ".tmp"])

    existing = os.path.join(work, "existing")
    os.mkdir(existing)
    with open(os.path.join(existing, "keep.txt"), "w") as f:
        f.write("already here\n")
    failed += not expect_refusal([binary, "export", "--checkpoint", base, "--hf", existing],
                                 "export to an existing DIR",
                                 [(existing,)], [existing + ".tmp"])
    if os.listdir(existing) != ["keep.txt"] or open(os.path.join(existing, "keep.txt")).read() != "already here\n":
        print(f"FAIL export to an existing DIR: {existing} was changed")
        failed += 1
    assert failed == 0, f"{failed} damaged inputs were not refused as they should be"
