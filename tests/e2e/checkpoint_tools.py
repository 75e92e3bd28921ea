"""checkpoint_tools.py: inspect, export, model.init_from and sample --checkpoint on a real checkpoint.

Trains a tiny gpt2 on 2 ranks (sp 2, ZeRO 1) for 3 steps, then, with h5py and NumPy as the references:
 (a) `ringtrain inspect` lists every dataset of the checkpoint with h5py's shape and float64 norm (1e-6),
     and the step, tokens, optimizer steps, layout and config of its attributes; a model.h5 likewise;
 (b) `ringtrain export --llmc` writes llm.c's layout (parsed here with NumPy: header, then wte, wpe, ln1w ...
     lnfb, layer-stacked) holding the checkpoint's /model bit for bit; one step of `train` with
     model.init_from = the export and with model.init_from = the checkpoint logs the same first loss (1e-6),
     not the loss of a fresh init, and takes the architecture from the file over the config's;
 (c) inspect of a checkpoint with bytes flipped inside a dataset's chunk (in /model and in /optim/v), of a
     truncated file and of a non-HDF5 file: exit 1, one line naming the file (and the dataset);
 (d) `sample --checkpoint` prints the prompt and the tokens asked for, the same text as from model.h5 and
     from the llm.c export;
 (e) export onto a full disk (tests/support/fault_inject.c: ENOSPC part way, or a failing fsync/close) over an
     earlier export: exit 1, one line naming the file, no .tmp, the earlier file byte for byte intact.
The corpus is prepared from /usr/share/common-licenses (what data/corpus is made of; data/ is not in a
fresh clone). Usage: checkpoint_tools.py RINGTRAIN FAULT_SHIM MPIRUN [MPIRUN ARGS...]
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np

CONFIG = """[model]
preset = tiny
family = gpt2
dropout = 0
[train]
steps = 3
batch_size = 4
seq_len = 64
lr = 1e-2
warmup_steps = 1
val_every = 0
log_every = 100
seed = 7
[data]
train = {train}
[parallel]
sp = 2
[zero]
stage = 1
[run]
dir = {run}
"""

LLMC_ORDER = [("wte", "wte", 0), ("wpe", "wpe", 0), ("ln1w", "norm1.weight", 1), ("ln1b", "norm1.bias", 1),
              ("qkvw", "attn.qkv.weight", 1), ("qkvb", "attn.qkv.bias", 1), ("attprojw", "attn.proj.weight", 1),
              ("attprojb", "attn.proj.bias", 1), ("ln2w", "norm2.weight", 1), ("ln2b", "norm2.bias", 1),
              ("fcw", "mlp.fc.weight", 1), ("fcb", "mlp.fc.bias", 1), ("fcprojw", "mlp.proj.weight", 1),
              ("fcprojb", "mlp.proj.bias", 1), ("lnfw", "norm_f.weight", 0), ("lnfb", "norm_f.bias", 0)]

TENSOR_LINE = re.compile(r"^  (/\S+) +\((\d+(?:, \d+)*)\) +norm (\S+)$")

failures = []


def check(ok, what):
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)
    return ok


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def parse_inspect(text):
    """Fields and tensors {name: (shape, norm)} of inspect's output."""
    fields, tensors, config = {}, {}, []
    in_config = False
    for line in text.splitlines():
        m = TENSOR_LINE.match(line)
        if in_config and (line.startswith("    ") or line == ""):
            config.append(line[4:])
            continue
        in_config = line == "config:"
        if m:
            tensors[m.group(1)] = (tuple(int(d) for d in m.group(2).split(", ")), float(m.group(3)))
        elif ": " in line:
            key, value = line.split(": ", 1)
            fields[key] = value
    fields["config"] = "\n".join(config)
    return fields, tensors


def h5_datasets(path):
    found = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                found["/" + name] = (obj.shape, float(np.linalg.norm(obj[...].astype(np.float64).ravel())))
        f.visititems(visit)
        attrs = {k: f.attrs[k] for k in f.attrs}
    return found, attrs


def check_inspect(ringtrain, path, want_checkpoint):
    p = run([ringtrain, "inspect", path])
    name = os.path.basename(path)
    if not check(p.returncode == 0, f"inspect {name}: exit 0 ({p.stderr.decode().strip()})"):
        return {}
    fields, tensors = parse_inspect(p.stdout.decode())
    datasets, attrs = h5_datasets(path)
    check(set(tensors) == set(datasets) and len(datasets) > 0,
          f"inspect {name}: one line per dataset ({len(tensors)} listed, h5py finds {len(datasets)})")
    worst = max((rel(tensors[k][1], datasets[k][1]) for k in datasets if k in tensors), default=1.0)
    check(all(tensors.get(k, (None,))[0] == datasets[k][0] for k in datasets),
          f"inspect {name}: every shape is h5py's")
    check(worst <= 1e-6, f"inspect {name}: every norm is h5py's float64 norm (worst rel {worst:.1e}, tol 1e-6)")
    check(fields.get("step") == str(int(attrs["step"])), f"inspect {name}: step {fields.get('step')}")
    check(fields["config"].strip() == attrs["config"].decode().strip(), f"inspect {name}: the stored config")
    check(p.stdout.decode().rstrip().endswith(f"checksums: all {len(datasets)} datasets verified"),
          f"inspect {name}: all {len(datasets)} checksums verified")
    groups = {k.rsplit("/", 1)[0] for k in datasets}
    if want_checkpoint:
        check(groups == {"/model", "/optim/master", "/optim/m", "/optim/v"}, f"inspect {name}: groups {groups}")
        check(fields.get("tokens") == str(int(attrs["tokens"])), f"inspect {name}: tokens {fields.get('tokens')}")
        check(fields.get("optimizer steps") == str(int(attrs["optimizer_steps"])), f"inspect {name}: optimizer steps")
        layout = (f"world size {int(attrs['world_size'])} (dp {int(attrs['dp'])} x sp {int(attrs['sp'])}), "
                  f"zero stage {int(attrs['zero_stage'])}")
        check(fields.get("saved layout") == layout and layout == "world size 2 (dp 1 x sp 2), zero stage 1",
              f"inspect {name}: saved layout '{fields.get('saved layout')}'")
    else:
        check(groups == {"/model"} and "weights only" in p.stdout.decode().splitlines()[0],
              f"inspect {name}: weights only, /model")
    return tensors


def read_llmc(path):
    """llm.c's gpt2 file, parsed independently: header fields and {view name: array}."""
    raw = open(path, "rb").read()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[0] == 20240326 and header[1] == 3, header[:2]
    maxT, V, L, NH, C, Vp = (int(x) for x in header[2:8])
    sizes = {"wte": (Vp, C), "wpe": (maxT, C), "ln1w": (C,), "ln1b": (C,), "qkvw": (3 * C, C), "qkvb": (3 * C,),
             "attprojw": (C, C), "attprojb": (C,), "ln2w": (C,), "ln2b": (C,), "fcw": (4 * C, C), "fcb": (4 * C,),
             "fcprojw": (C, 4 * C), "fcprojb": (C,), "lnfw": (C,), "lnfb": (C,)}
    values = np.frombuffer(raw[1024:], dtype="<f4")
    tensors, at = {}, 0
    for llmc, view, per_layer in LLMC_ORDER:
        shape = sizes[llmc]
        n = int(np.prod(shape))
        for layer in range(L if per_layer else 1):
            name = f"layers.{layer}.{view}" if per_layer else view
            tensors[name] = values[at:at + n].reshape(shape)
            at += n
    return (maxT, V, L, NH, C, Vp), tensors, at == values.size


def first_loss(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return json.loads(f.readline())["loss"]


def corrupt_middle(src, dst, dataset):
    """Flips 4 bytes in the middle of a contiguous dataset's data."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r") as f:
        middle = f[dataset].id.get_offset() + f[dataset].id.get_storage_size() // 2
    with open(dst, "r+b") as f:
        f.seek(middle)
        b = f.read(4)
        f.seek(middle)
        f.write(bytes(x ^ 0x5A for x in b))


def expect_failure(ringtrain, args, words, what):
    p = run([ringtrain] + args)
    lines = p.stderr.decode().strip().splitlines()
    ok = p.returncode == 1 and len(lines) == 1 and all(w in lines[0] for w in words)
    check(ok, f"{what}: exit 1, one line naming {', '.join(words)} (exit {p.returncode}: {lines})")


def main():
    ringtrain, shim, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
    work = tempfile.mkdtemp(prefix="rt_checkpoint_tools.")
    try:
        train_bin = os.path.join(work, "train.bin")
        subprocess.run([ringtrain, "prepare", "--input", "/usr/share/common-licenses/GPL-3", "--output", train_bin],
                       check=True, stdout=subprocess.DEVNULL)
        run_dir = os.path.join(work, "run")
        config = os.path.join(work, "gpt2.ini")
        with open(config, "w") as f:
            f.write(CONFIG.format(train=train_bin, run=run_dir))
        p = run(mpirun + ["-np", "2", ringtrain, "train", "--config", config])
        assert p.returncode == 0, p.stderr.decode()
        ckpt = os.path.join(run_dir, "checkpoints", "step_00000003.h5")
        model_h5 = os.path.join(run_dir, "model.h5")

        # (a) inspect vs h5py, a checkpoint and a model.h5
        tensors = check_inspect(ringtrain, ckpt, True)
        model_tensors = check_inspect(ringtrain, model_h5, False)
        check(all(model_tensors.get(k) == v for k, v in tensors.items() if k.startswith("/model/")),
              "inspect: model.h5's /model lines are the checkpoint's (the same final weights)")

        # (b) export, read back by NumPy in llm.c's layout; init_from of the export and of the checkpoint
        exported = os.path.join(work, "gpt2.bin")
        p = run([ringtrain, "export", "--checkpoint", ckpt, "--llmc", exported])
        check(p.returncode == 0 and not os.path.exists(exported + ".tmp"), f"export: exit 0 ({p.stderr.decode()})")
        (maxT, V, L, NH, C, Vp), llmc, whole = read_llmc(exported)
        check((maxT, V, L, NH, C, Vp) == (256, 256, 2, 4, 64, 256) and whole,
              f"export: header maxT V L NH C Vp = {(maxT, V, L, NH, C, Vp)}, nothing after lnfb")
        with h5py.File(ckpt, "r") as f:
            model = {k: f["model"][k][...] for k in f["model"]}
        check(set(llmc) == set(model) and all(np.array_equal(llmc[k], model[k]) for k in model),
              "export: every llm.c tensor is the checkpoint's /model tensor, bit for bit, in llm.c's order")
        losses = {}
        for label, source in (("llm.c export", exported), ("checkpoint", ckpt)):
            out = os.path.join(work, "init_" + label.replace(" ", "_").replace(".", ""))
            # The config asks for llama with 1 layer: the architecture must come from the file.
            p = run(mpirun + ["-np", "1", ringtrain, "train", "--config", config, "--set", "train.steps=1",
                              "--set", "parallel.sp=1", "--set", "model.family=llama", "--set", "model.n_layers=1",
                              "--set", f"model.init_from={source}", "--set", f"run.dir={out}"])
            if not check(p.returncode == 0, f"train with model.init_from = {label}: exit 0 ({p.stderr.decode()})"):
                return 1
            losses[label] = first_loss(out)
            resolved = open(os.path.join(out, "config.ini")).read()
            check("family = gpt2" in resolved and "n_layers = 2" in resolved,
                  f"init_from = {label}: family and n_layers from the file")
        fresh = first_loss(run_dir)
        a, b = losses["llm.c export"], losses["checkpoint"]
        check(rel(a, b) <= 1e-6, f"init_from: first loss {a:.8f} (llm.c export) == {b:.8f} (checkpoint), tol 1e-6")
        check(abs(b - fresh) > 1e-3, f"init_from: first loss {b:.6f} is not the fresh init's {fresh:.6f}")

        # (c) damaged files
        for dataset in ("/model/layers.1.mlp.fc.weight", "/optim/v/wte"):
            bad = os.path.join(work, "flipped.h5")
            corrupt_middle(ckpt, bad, dataset)
            expect_failure(ringtrain, ["inspect", bad], [bad, dataset, "checksum mismatch"],
                           f"inspect, flipped {dataset}")
        truncated = os.path.join(work, "truncated.h5")
        with open(ckpt, "rb") as f, open(truncated, "wb") as g:
            g.write(f.read(os.path.getsize(ckpt) // 2))
        expect_failure(ringtrain, ["inspect", truncated], [truncated], "inspect, truncated file")
        expect_failure(ringtrain, ["inspect", config], [config, "not an HDF5 file"], "inspect, an INI file")

        # (d) sample --checkpoint: the prompt and 24 tokens, as from model.h5 and from the llm.c export
        args = ["--prompt", "This License", "--tokens", "24", "--seed", "5", "--temperature", "0.8"]
        texts = {}
        for option, source in (("--checkpoint", ckpt), ("--model", model_h5), ("--model", exported)):
            p = run([ringtrain, "sample", option, source] + args)
            check(p.returncode == 0, f"sample {option} {os.path.basename(source)}: exit 0 ({p.stderr.decode()})")
            texts[source] = p.stdout
        out = texts[ckpt]
        # 24 byte tokens print as UTF-8: a byte that forms no character as U+FFFD, so 24 or fewer characters
        try:
            text = out.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        check(text.startswith("This License") and text.endswith("\n") and
              1 <= len(text) - len("This License") - 1 <= 24,
              f"sample --checkpoint: the prompt and 24 tokens as valid UTF-8 ({len(out)} bytes)")
        check(texts[model_h5] == out and texts[exported] == out,
              "sample: the same text from the checkpoint, model.h5 and the llm.c export")

        # (e) a failing disk under export: the earlier export stays whole
        before = open(exported, "rb").read()
        for mode, after in (("enospc", 100000), ("enospc", 0), ("close", 0)):
            env = dict(os.environ, LD_PRELOAD=shim, RT_FAULT_PATH=exported + ".tmp", RT_FAULT_MODE=mode,
                       RT_FAULT_AFTER=str(after),
                       ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0")
            p = run([ringtrain, "export", "--checkpoint", ckpt, "--llmc", exported], env=env)
            lines = p.stderr.decode().strip().splitlines()
            named = len(lines) == 1 and f"{exported}: " in lines[0]  # the user's file, not its .tmp
            check(p.returncode == 1 and named and not os.path.exists(exported + ".tmp") and
                  open(exported, "rb").read() == before,
                  f"export, {mode} after {after} bytes: exit 1, one line, no .tmp, the old file intact "
                  f"(exit {p.returncode}: {lines})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
