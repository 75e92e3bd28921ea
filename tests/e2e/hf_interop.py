#!/usr/bin/env python3
"""ringtrain's Hugging Face import (model.init_from = DIR) and export (ringtrain export --hf) against transformers.

usage: hf_interop.py CASE[,CASE...] RINGTRAIN [MPIRUN ...]   (CASES below, run in order in one process; MPIRUN:
the mpirun command, for 2-rank cases)

export_*: ringtrain trains a few steps, exports; transformers loads the directory and its loss, greedy tokens
  and logits must equal ringtrain's (its first-step loss from the exported directory, `sample --temperature 0
  --logits`) within 1e-4 relative.
import_*: transformers makes and saves a random model (GQA, bf16, sharded, tied, head_dim != hidden/heads,
  gpt2); ringtrain's first-step loss and grad_norm from it must equal a PyTorch step (fp32, eager) on the
  same window within 1e-5 relative.
roundtrip_*: import then export of an untouched model gives back every tensor bit for bit and the same
  architecture in config.json (sharded: transformers' shards in, --shard-mib shards out).
export_bf16_rounding: fp32 in, --dtype bf16 out equals PyTorch's conversion bit for bit.
bad_input: damaged directories and files are refused with one stderr line naming the file and the field,
  exit status 1, nothing written.
"""
import glob
import os
import sys
import tempfile

import numpy as np

import hf_checks
import hf_files
import hf_torch

EXPORT_TOL, IMPORT_TOL = 1e-4, 1e-5
T_IMPORT = 48


def rel(got, want):
    return abs(got - want) / abs(want)


def logits_rel(got, want):
    """Worst |difference| over the largest |reference logit|: a relative error that a near-zero logit does
    not blow up."""
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def ringtrain_shape(family):
    common = ["model.preset=tiny", f"model.family={family}", "model.n_layers=2", "model.d_model=64", "model.n_heads=4",
              "model.vocab_size=300", "model.max_seq_len=64"]
    if family == "llama":
        return common + ["model.n_kv_heads=2", "model.d_ff=96"]
    return common + ["model.n_kv_heads=4", "model.d_ff=256"]


def sample(binary, flag, source, prompt, n, work):
    out = os.path.join(work, "logits.f32")
    result = hf_files.run([binary, "sample", flag, source, "--prompt-ids", ",".join(map(str, prompt)), "--tokens", n,
                           "--temperature", "0", "--logits", out])
    ids = [int(t) for t in result.stdout.split()]
    assert ids[:len(prompt)] == prompt, f"sample echoed {ids[:len(prompt)]}, not the prompt {prompt}"
    logits = np.fromfile(out, dtype="<f4")
    assert logits.size == n * hf_torch.VOCAB, f"--logits wrote {logits.size} floats, expected {n} x {hf_torch.VOCAB}"
    return ids[len(prompt):], logits.reshape(n, hf_torch.VOCAB)


def case_export(binary, mpirun, family, ranks, work):
    rng = np.random.default_rng(7 if family == "llama" else 8)
    T = 32
    data = os.path.join(work, "train.bin")
    hf_files.write_tokens(data, rng.integers(0, hf_torch.VOCAB, 16 * T + 1), hf_torch.VOCAB)
    run_dir = os.path.join(work, "run")
    hf_files.train(binary, run_dir, ringtrain_shape(family) + [
        f"data.train={data}", f"train.seq_len={T}", "train.batch_size=2", "train.steps=20", "train.lr=2e-2",
        "train.warmup_steps=1"], mpirun, ranks)
    ckpt = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "*.h5")))[-1]
    out = os.path.join(work, "hf")
    hf_files.run([binary, "export", "--checkpoint", ckpt, "--hf", out])
    model = hf_torch.load(out)
    assert model.config.model_type == family, f"exported model_type {model.config.model_type}, expected {family}"
    tied = family == "gpt2"
    assert model.config.tie_word_embeddings == tied, f"exported tie_word_embeddings should be {tied}"
    worst = []

    window = rng.integers(0, hf_torch.VOCAB, T + 1)
    wdata = os.path.join(work, "window.bin")
    hf_files.write_tokens(wdata, window, hf_torch.VOCAB)
    got = hf_files.train(binary, os.path.join(work, "check"), hf_files.first_step_settings(out, wdata, T), mpirun,
                         ranks)[0]["loss"]
    want = hf_torch.window_loss(model, window)
    e = rel(got, want)
    print(f"loss on the exported model: ringtrain {got:.8f}, transformers {want:.8f}, rel error {e:.2e}")
    assert e <= EXPORT_TOL, f"loss rel error {e:.2e} > {EXPORT_TOL:g}"
    worst.append(e)

    prompt, n = [int(t) for t in rng.integers(0, hf_torch.VOCAB, 5)], 12
    want_ids, want_logits = hf_torch.greedy(model, prompt, n)
    for flag, source in (("--checkpoint", ckpt), ("--model", out)):
        ids, logits = sample(binary, flag, source, prompt, n, work)
        assert ids == want_ids, f"sample {flag} {source}: greedy tokens {ids}, transformers generate {want_ids}"
        e = logits_rel(logits, want_logits)
        print(f"greedy logits, sample {flag}: {n} tokens equal, worst rel error {e:.2e} (max|diff|/max|logit|)")
        assert e <= EXPORT_TOL, f"sample {flag}: logits rel error {e:.2e} > {EXPORT_TOL:g}"
        worst.append(e)
    print(f"worst rel error: {max(worst):.2e} (tol {EXPORT_TOL:g})")


def case_import(binary, work, config, dtype="float32", shard=None, min_files=1):
    import torch
    model = hf_torch.make_model(config, seed=11)
    src = os.path.join(work, "src")
    hf_torch.save(model, src, getattr(torch, dtype), shard)
    n_files = len(glob.glob(os.path.join(src, "*.safetensors")))
    assert n_files >= min_files, f"save_pretrained wrote {n_files} safetensors files, the case needs {min_files}"
    reference = hf_torch.load(src)  # from the files: bf16 weights widened exactly, as ringtrain must
    tokens = np.random.default_rng(12).integers(0, hf_torch.VOCAB, T_IMPORT + 1)
    data = os.path.join(work, "window.bin")
    hf_files.write_tokens(data, tokens, hf_torch.VOCAB)
    m = hf_files.train(binary, os.path.join(work, "run"), hf_files.first_step_settings(src, data, T_IMPORT))[0]
    want_loss, want_norm = hf_torch.reference_step(reference, tokens)
    e_loss, e_norm = rel(m["loss"], want_loss), rel(m["grad_norm"], want_norm)
    print(f"loss: ringtrain {m['loss']:.8f}, PyTorch {want_loss:.8f}, rel error {e_loss:.2e}")
    print(f"grad_norm: ringtrain {m['grad_norm']:.8f}, PyTorch {want_norm:.8f}, rel error {e_norm:.2e}")
    print(f"worst rel error: {max(e_loss, e_norm):.2e} (tol {IMPORT_TOL:g})")
    assert e_loss <= IMPORT_TOL, f"first-step loss rel error {e_loss:.2e} > {IMPORT_TOL:g}"
    assert e_norm <= IMPORT_TOL, f"first-step grad_norm rel error {e_norm:.2e} > {IMPORT_TOL:g}"


ARCH_KEYS = ["model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
             "rope_parameters", "tie_word_embeddings", "hidden_act", "n_embd", "n_layer", "n_head", "n_inner",
             "n_positions", "layer_norm_epsilon", "activation_function"]


def same_config(src, out):
    """The architecture transformers reads from both config.json files (its own parsing, defaults filled in)."""
    import transformers
    a, b = (transformers.AutoConfig.from_pretrained(d).to_dict() for d in (src, out))
    for c in (a, b):
        if c["model_type"] == "gpt2" and c.get("n_inner") is None:
            c["n_inner"] = 4 * c["n_embd"]  # GPT2MLP's meaning of None
    differ = {k: (a.get(k), b.get(k)) for k in ARCH_KEYS if a.get(k) != b.get(k)}
    assert not differ, f"config.json differs (in, out): {differ}"


def case_roundtrip(binary, work, config, dtype="float32", shard_in=None, shard_mib=None):
    import torch
    src, out = os.path.join(work, "src"), os.path.join(work, "out")
    hf_torch.save(hf_torch.make_model(config, seed=13), src, getattr(torch, dtype), shard_in)
    args = [binary, "export", "--checkpoint", src, "--hf", out]
    args += ["--dtype", "bf16"] if dtype == "bfloat16" else []
    hf_files.run(args + (["--shard-mib", shard_mib] if shard_mib else []))
    if shard_mib:
        shards = glob.glob(os.path.join(out, "*.safetensors"))
        assert len(shards) >= 2 and os.path.exists(os.path.join(out, "model.safetensors.index.json")), \
            f"--shard-mib {shard_mib} wrote {len(shards)} safetensors files (and an index?), expected >= 2 and one"
        loaded = hf_torch.load(out).state_dict()  # transformers follows the index
        original = hf_torch.load(src).state_dict()
        assert all(torch.equal(loaded[k], original[k]) for k in original), "transformers reads other values back"
        print(f"{len(glob.glob(os.path.join(src, '*.safetensors')))} shards in, {len(shards)} out with an index; "
              "transformers reads the same values from both")
    a, b = hf_files.read_hf_dir(src), hf_files.read_hf_dir(out)
    assert sorted(a) == sorted(b), f"tensor names differ: only in the input {sorted(set(a) - set(b))}, " \
                                   f"only in the export {sorted(set(b) - set(a))}"
    same_config(src, out)
    differ = [k for k in a if a[k] != b[k]]
    for k in differ[:5]:
        print(f"  {k}: {a[k][:2]} in, {b[k][:2]} out, {sum(x != y for x, y in zip(a[k][2], b[k][2]))} bytes differ")
    assert not differ, f"{len(differ)} of {len(a)} tensors differ (dtype, shape or bits): {differ[:5]}"
    print(f"{len(a)} tensors ({a[next(iter(a))][0]}) identical bit for bit")


def case_bf16_rounding(binary, work):
    """fp32 in, --dtype bf16 out: every value must be PyTorch's own fp32 -> bf16 conversion (round to nearest,
    ties to even), ties planted on purpose since random weights almost never hold one."""
    import torch
    model = hf_torch.make_model(hf_torch.llama_config(), seed=14)
    with torch.no_grad():
        for p in model.parameters():
            bits = p.view(-1).view(torch.int32)
            bits[0::7] = (bits[0::7] & ~0xFFFF) | 0x8000  # exactly halfway, kept part even or odd
    src, out = os.path.join(work, "src"), os.path.join(work, "out")
    hf_torch.save(model, src)
    hf_files.run([binary, "export", "--checkpoint", src, "--hf", out, "--dtype", "bf16"])
    got = hf_files.read_hf_dir(out)
    want = {k: ("BF16", tuple(v.shape), v.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
            for k, v in model.state_dict().items()}
    assert sorted(got) == sorted(want), f"tensor names differ: {sorted(set(got) ^ set(want))}"
    differ = {k: int(np.count_nonzero(np.frombuffer(got[k][2], "<u2") != np.frombuffer(want[k][2], "<u2")))
              for k in want if got[k] != want[k]}
    assert not differ, f"bf16 values that are not PyTorch's rounding, per tensor: {differ}"
    print(f"{len(want)} tensors: every bf16 value is PyTorch's round-to-nearest-even of the fp32 input")


def main():
    case, binary, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
    cases = {
        "export_llama": lambda w: case_export(binary, mpirun, "llama", 2, w),
        "export_gpt2": lambda w: case_export(binary, mpirun, "gpt2", 1, w),
        "import_llama": lambda w: case_import(binary, w, hf_torch.llama_config()),
        "import_llama_bf16": lambda w: case_import(binary, w, hf_torch.llama_config(), "bfloat16"),
        "import_llama_sharded": lambda w: case_import(binary, w, hf_torch.llama_config(), shard="100KB", min_files=3),
        "import_llama_tied": lambda w: case_import(binary, w, hf_torch.llama_config(tied=True)),
        "import_llama_head_dim": lambda w: case_import(binary, w, hf_torch.llama_config(head_dim=24)),
        "import_gpt2": lambda w: case_import(binary, w, hf_torch.gpt2_config()),
        "roundtrip_llama": lambda w: case_roundtrip(binary, w, hf_torch.llama_config()),
        "roundtrip_gpt2": lambda w: case_roundtrip(binary, w, hf_torch.gpt2_config()),
        "roundtrip_llama_tied": lambda w: case_roundtrip(binary, w, hf_torch.llama_config(tied=True)),
        "roundtrip_bf16": lambda w: case_roundtrip(binary, w, hf_torch.llama_config(), "bfloat16"),
        # 4096 x 64 embeddings and head: 2 MiB, so --shard-mib 1 must split
        "roundtrip_sharded": lambda w: case_roundtrip(binary, w, hf_torch.llama_config(vocab=4096), shard_in="300KB",
                                                      shard_mib=1),
        "export_bf16_rounding": lambda w: case_bf16_rounding(binary, w),
        "bad_input": lambda w: hf_checks.bad_inputs(binary, w),
    }
    # several cases, comma-separated, run in one process: PyTorch and transformers load once
    names = case.split(",")
    for name in names:
        if name not in cases:
            raise SystemExit(f"unknown case {name}; expected one of {', '.join(cases)}")
    for name in names:
        with tempfile.TemporaryDirectory() as work:
            cases[name](work)
        print(f"ok {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
