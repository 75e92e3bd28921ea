#!/usr/bin/env python3
"""The PyTorch side of jobs/bench-vs-torch.sh (run with the venv of jobs/install-pyenv.sh).

  bench_vs_torch.py tokens FILE VOCAB COUNT SEED    write COUNT uniform random tokens in ringtrain's token format
  bench_vs_torch.py train RUN_DIR STEPS THREADS     time STEPS training steps of the model ringtrain's run RUN_DIR
                                                    trained, on the same tokens; one JSON line on stdout
  bench_vs_torch.py compare RUN_DIR PARAMS TORCH_JSON ROWS
                                                    check both sides ran the same model (parameter counts, first
                                                    losses against ln(vocab)), print that line, append the table
                                                    row to ROWS; PARAMS: the count ringtrain's first line printed
  bench_vs_torch.py versions                        one line: torch's version and its math libraries

`train` builds the model from the run's resolved config.ini (shape, norm eps, RoPE base, max_seq_len, dropout,
activation mode) with transformers (GPT2LMHeadModel with the tanh GELU, or LlamaForCausalLM), fp32, attention
through torch's scaled_dot_product_attention (sdpa), and trains it with the run's AdamW settings (lr schedule,
betas, eps, weight decay on matrices only, gradient clipping) on the run's data.train file. That file holds
exactly B windows of T+1 tokens (jobs/bench-vs-torch.sh writes it so), so ringtrain's batch at every step is
those B windows in some order and the two sides train on the same tokens. recompute = activation checkpointing
of every decoder layer (model.activation_checkpointing_enable), as ringtrain recomputes each layer's forward.
"""
import configparser
import json
import math
import statistics
import sys
import time

TOKEN_MAGIC, TOKEN_VERSION, HEADER_BYTES = 20261122, 1, 1024


def write_tokens(path, vocab, count, seed):
    """ringtrain's token file (docs/operations.md, "Token files"): 1024-byte header of int32, then uint16 tokens."""
    import numpy as np

    header = np.zeros(HEADER_BYTES // 4, dtype="<i4")
    header[:6] = [TOKEN_MAGIC, TOKEN_VERSION, vocab, 2, count & 0xFFFFFFFF, count >> 32]
    tokens = np.random.default_rng(seed).integers(0, vocab, size=count, dtype=np.int64).astype("<u2")
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())


def read_windows(path, vocab, B, T):
    """The B windows of T+1 tokens (consecutive windows share one token) the file holds, as ringtrain cuts them."""
    import numpy as np

    raw = open(path, "rb").read()
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    count = int(header[4]) | (int(header[5]) << 32)
    if header[0] != TOKEN_MAGIC or header[3] != 2 or header[2] != vocab or count != B * T + 1:
        sys.exit(f"bench_vs_torch: {path}: expected a uint16 token file of vocabulary {vocab} with {B * T + 1} tokens")
    tokens = np.frombuffer(raw[HEADER_BYTES:], dtype="<u2").astype(np.int64)
    return np.stack([tokens[w * T : w * T + T + 1] for w in range(B)])


def lr_at(step, steps, warmup, lr, min_lr):
    """rt_lr_schedule (shard/optimizer.c): linear warmup, then cosine to min_lr at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    decay_steps = steps - warmup
    if decay_steps <= 1:
        return lr
    progress = min(1.0, (step - warmup) / (decay_steps - 1))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_model(m):
    """The transformers model of ringtrain's resolved [model] section."""
    import transformers

    n_heads, d_model = int(m["n_heads"]), int(m["d_model"])
    head_dim = int(m["head_dim"]) or d_model // n_heads
    common = dict(vocab_size=int(m["vocab_size"]), use_cache=False, attn_implementation="sdpa")
    if m["family"] == "gpt2":
        if head_dim != d_model // n_heads or int(m["n_kv_heads"]) != n_heads:
            sys.exit("bench_vs_torch: gpt2 with head_dim or n_kv_heads of its own has no GPT2Config equivalent")
        config = transformers.GPT2Config(
            n_positions=int(m["max_seq_len"]), n_embd=d_model, n_layer=int(m["n_layers"]), n_head=n_heads,
            n_inner=int(m["d_ff"]), activation_function="gelu_new", layer_norm_epsilon=float(m["norm_eps"]),
            resid_pdrop=float(m["dropout"]), embd_pdrop=float(m["dropout"]), attn_pdrop=float(m["dropout"]),
            tie_word_embeddings=True, **common)
        return transformers.GPT2LMHeadModel(config)
    config = transformers.LlamaConfig(
        hidden_size=d_model, intermediate_size=int(m["d_ff"]), num_hidden_layers=int(m["n_layers"]),
        num_attention_heads=n_heads, num_key_value_heads=int(m["n_kv_heads"]), head_dim=head_dim,
        max_position_embeddings=int(m["max_seq_len"]), rms_norm_eps=float(m["norm_eps"]),
        rope_theta=float(m["rope_theta"]), hidden_act="silu", attention_bias=False, mlp_bias=False,
        attention_dropout=float(m["dropout"]), tie_word_embeddings=m["tie_embeddings"] == "true", **common)
    return transformers.LlamaForCausalLM(config)


def train(run_dir, steps, threads):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    cfg = configparser.ConfigParser()
    cfg.read(f"{run_dir}/config.ini")
    m, t = cfg["model"], cfg["train"]
    B, T, vocab = int(t["batch_size"]), int(t["seq_len"]), int(m["vocab_size"])
    windows = torch.from_numpy(read_windows(cfg["data"]["train"], vocab, B, T))
    inputs, targets = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    torch.manual_seed(int(t["seed"]))
    model = build_model(m)
    assert model.config._attn_implementation == "sdpa"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    if cfg["activations"]["mode"] == "recompute":
        # transformers 5's name for gradient_checkpointing_enable (deprecated there): every decoder layer's forward
        # runs again before its backward, from the layer input it kept.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = list(model.parameters())  # a tied head is one parameter, counted once
    # ringtrain decays matrices (embeddings and head included), not norms or biases.
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": float(t["weight_decay"])},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=float(t["lr"]), betas=(float(t["adam_beta1"]), float(t["adam_beta2"])),
                                  eps=float(t["adam_eps"]))
    clip = float(t["grad_clip"])

    losses, times = [], []
    for step in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, int(t["steps"]), int(t["warmup_steps"]), float(t["lr"]), float(t["min_lr"]))
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
        del logits, loss
    print(json.dumps({
        "params": sum(p.numel() for p in params),
        "first_loss": losses[0],
        "step_s": statistics.median(times[1:]),  # the first step warms up, as jobs/metrics_summary.py skips it
        "step_times": [round(s, 4) for s in times],
        "threads": torch.get_num_threads(),
    }))


def compare(run_dir, ringtrain_params, torch_json, rows_path):
    cfg = configparser.ConfigParser()
    cfg.read(f"{run_dir}/config.ini")
    m, t = cfg["model"], cfg["train"]
    with open(f"{run_dir}/metrics.jsonl") as f:
        metrics = [json.loads(line) for line in f]
    with open(torch_json) as f:
        torch_run = json.load(f)
    # ringtrain's step time as jobs/metrics_summary.py takes it: the median of the steps after the first.
    ringtrain_s = statistics.median(s["step_s"] for s in metrics[1:])
    # ringtrain pads the embedding (and an untied head) to a multiple of 128 rows the loss never sees.
    vocab, d_model = int(m["vocab_size"]), int(m["d_model"])
    padded = int(m["padded_vocab"]) or -(-vocab // 128) * 128
    heads = 1 if m["family"] == "gpt2" or m["tie_embeddings"] == "true" else 2
    unpadded = ringtrain_params - (padded - vocab) * d_model * heads
    case = f"{m['family']} {t['batch_size']}x{t['seq_len']} {cfg['activations']['mode']}"
    ringtrain_times = " ".join(f"{s['step_s']:.3f}" for s in metrics)
    torch_times = " ".join(f"{s:.3f}" for s in torch_run["step_times"])
    print(f"{case}: parameters ringtrain {ringtrain_params:,} ({unpadded:,} without its {padded - vocab} padding "
          f"rows), PyTorch {torch_run['params']:,}; first loss ringtrain {metrics[0]['loss']:.4f}, PyTorch "
          f"{torch_run['first_loss']:.4f}, ln({vocab}) = {math.log(vocab):.4f}; step s ringtrain {ringtrain_times}, "
          f"PyTorch {torch_times}", flush=True)
    if unpadded != torch_run["params"]:
        sys.exit(f"bench_vs_torch: {case}: the two models differ: {unpadded:,} parameters in ringtrain (unpadded), "
                 f"{torch_run['params']:,} in PyTorch")
    with open(rows_path, "a") as f:
        f.write(f"{case} {torch_run['step_s']:.3f} {ringtrain_s:.3f} {torch_run['step_s'] / ringtrain_s:.2f}\n")


def versions():
    """torch's version and, in one line, the math libraries torch.__config__.show() reports."""
    import re

    import torch
    import transformers

    show = torch.__config__.show()
    found = []
    for label, pattern in (("MKL", r"Math Kernel Library Version (\S+)"), ("oneDNN", r"MKL-DNN (v\S+)"),
                           ("OpenMP", r"OpenMP (\d+)"), ("CPU capability", r"CPU capability usage: (\S+)"),
                           ("BLAS_INFO", r"BLAS_INFO=(\w+)")):
        match = re.search(pattern, show)
        found.append(f"{label} {match.group(1) if match else 'none'}")
    print(f"torch {torch.__version__} (transformers {transformers.__version__}): " + ", ".join(found)
          + f", mkldnn enabled {torch.backends.mkldnn.is_available()}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "tokens":
        write_tokens(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif command == "train":
        train(args[0], int(args[1]), int(args[2]))
    elif command == "compare":
        compare(args[0], int(args[1]), args[2], args[3])
    elif command == "versions":
        versions()
    else:
        sys.exit(f"bench_vs_torch: unknown command {command}")
