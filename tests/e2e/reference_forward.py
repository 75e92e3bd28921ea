#!/usr/bin/env python3
"""Independent NumPy forward passes checked against ringtrain's logged loss.

gpt2: the test writes an llm.c model file (gpt2_124M.bin layout) with random
weights, ringtrain trains one step from it (model.init_from); the step-0 loss
in metrics.jsonl is the loss BEFORE any update, so it must equal GPT-2's loss
on that window as llm.c defines it (LayerNorm eps 1e-5, learned positions,
tanh GELU, LM head tied to wte, padded vocab ignored), computed here in float64.

llama: ringtrain trains one step with lr 1e-30 from its own random init and
saves model.h5; this script reads the weights with h5py and recomputes the
step-0 loss with RMSNorm, interleaved-pair RoPE on global positions, GQA and
SwiGLU as runtime/backend/backend.h and runtime/model/param_layout.h define them.

Tolerance: 1e-5 relative (ringtrain computes in fp32).
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import h5py
import numpy as np

from token_files import write_tokens

TOL = 1e-5


def layernorm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def causal_attention(q, k, v):
    """q (T,H,D), k/v (T,Hkv,D) -> (T,H*D); query head h uses kv head h // (H/Hkv)."""
    T, H, D = q.shape
    group = H // k.shape[1]
    out = np.zeros((T, H, D))
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    for h in range(H):
        s = q[:, h] @ k[:, h // group].T / np.sqrt(D)
        s[mask] = -np.inf
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, h] = p @ v[:, h // group]
    return out.reshape(T, H * D)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def cross_entropy(logits, targets):
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    return float(np.mean(lse - logits[np.arange(len(targets)), targets]))


def run_ringtrain(binary, workdir, name, settings):
    run_dir = os.path.join(workdir, name)
    args = [binary, "train"]
    for s in settings + [f"run.dir={run_dir}", "train.steps=1", "train.batch_size=1", "train.warmup_steps=1"]:
        args += ["--set", s]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"ringtrain failed: {result.stderr.strip()}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return json.loads(f.readline())["loss"], run_dir


def check_gpt2(binary, workdir, rng):
    L, C, H, V, Vp, maxT, T = 2, 32, 4, 100, 112, 64, 48  # Vp: any padding llm.c allows, not only 128s
    shapes = [(Vp, C), (maxT, C), (L, C), (L, C), (L, 3 * C, C), (L, 3 * C), (L, C, C), (L, C),
              (L, C), (L, C), (L, 4 * C, C), (L, 4 * C), (L, C, 4 * C), (L, C), (C,), (C,)]
    p = [rng.normal(0, 0.3, s).astype(np.float32) for s in shapes]
    for i in (2, 8, 14):  # norm gains near 1
        p[i] += 1.0
    p[0][V:] = 0.0  # padded vocab rows, as llm.c stores them
    model_path = os.path.join(workdir, "gpt2.bin")
    with open(model_path, "wb") as f:
        header = np.zeros(256, dtype="<i4")
        header[:8] = [20240326, 3, maxT, V, L, H, C, Vp]
        f.write(header.tobytes())
        for t in p:
            f.write(t.astype("<f4").tobytes())
    tokens = rng.integers(0, V, T + 1)
    data_path = os.path.join(workdir, "gpt2_tokens.bin")
    write_tokens(data_path, tokens, V)
    loss, _ = run_ringtrain(binary, workdir, "gpt2", [f"model.init_from={model_path}", f"data.train={data_path}",
                                                      f"train.seq_len={T}"])
    wte, wpe, ln1w, ln1b, qkvw, qkvb, projw, projb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb, lnfw, lnfb = \
        [t.astype(np.float64) for t in p]
    x = wte[tokens[:T]] + wpe[:T]
    D = C // H
    for l in range(L):
        qkv = layernorm(x, ln1w[l], ln1b[l]) @ qkvw[l].T + qkvb[l]
        q, k, v = (qkv[:, i * C:(i + 1) * C].reshape(T, H, D) for i in range(3))
        x = x + causal_attention(q, k, v) @ projw[l].T + projb[l]
        x = x + gelu_tanh(layernorm(x, ln2w[l], ln2b[l]) @ fcw[l].T + fcb[l]) @ fcprojw[l].T + fcprojb[l]
    logits = layernorm(x, lnfw, lnfb) @ wte[:V].T
    return loss, cross_entropy(logits, tokens[1:T + 1])


def rope(x, pos, theta):
    """Interleaved pairs (2i, 2i+1) rotate by pos * theta^(-2i/D)."""
    D = x.shape[-1]
    freqs = theta ** (-np.arange(0, D, 2) / D)
    ang = pos[:, None] * freqs[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def check_llama(binary, workdir, rng):
    L, C, H, Hkv, F, V, T, theta, eps = 2, 32, 4, 2, 48, 256, 40, 10000.0, 1e-5
    tokens = rng.integers(0, V, T + 1)
    data_path = os.path.join(workdir, "llama_tokens.bin")
    write_tokens(data_path, tokens, V)
    loss, run_dir = run_ringtrain(binary, workdir, "llama", [
        "model.preset=tiny", f"model.n_layers={L}", f"model.d_model={C}", f"model.n_heads={H}",
        f"model.n_kv_heads={Hkv}", f"model.d_ff={F}", f"data.train={data_path}", f"train.seq_len={T}",
        "train.lr=1e-30", "train.min_lr=1e-30"])
    with h5py.File(os.path.join(run_dir, "model.h5"), "r") as f:
        w = {name: f["model"][name][...].astype(np.float64) for name in f["model"]}
    D = C // H
    pos = np.arange(T, dtype=np.float64)
    x = w["wte"][tokens[:T]]
    for l in range(L):
        g = lambda n: w[f"layers.{l}.{n}"]
        qkv = rmsnorm(x, g("norm1.weight"), eps) @ g("attn.qkv.weight").T
        q = rope(qkv[:, :H * D].reshape(T, H, D), pos, theta)
        k = rope(qkv[:, H * D:(H + Hkv) * D].reshape(T, Hkv, D), pos, theta)
        v = qkv[:, (H + Hkv) * D:].reshape(T, Hkv, D)
        x = x + causal_attention(q, k, v) @ g("attn.proj.weight").T
        gu = rmsnorm(x, g("norm2.weight"), eps) @ g("mlp.fc.weight").T
        gate, up = gu[:, :F], gu[:, F:]
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ g("mlp.proj.weight").T
    logits = rmsnorm(x, w["norm_f.weight"], eps) @ w["lm_head.weight"][:V].T
    return loss, cross_entropy(logits, tokens[1:T + 1])


def main():
    binary = sys.argv[1]
    rng = np.random.default_rng(20261122)
    passed = failed = 0
    with tempfile.TemporaryDirectory() as workdir:
        for name, check in (("gpt2 (llm.c file)", check_gpt2), ("llama (model.h5)", check_llama)):
            got, want = check(binary, workdir, rng)
            rel = abs(got - want) / abs(want)
            ok = rel <= TOL
            print(f"{'ok  ' if ok else 'FAIL'} {name}: ringtrain loss {got:.9f}, numpy {want:.9f}, rel error {rel:.2e} (tol {TOL:g})")
            passed, failed = passed + ok, failed + (not ok)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
