"""checkpoint_run.py: checkpoints of whole `ringtrain train` runs under mpirun.

Usage: checkpoint_run.py CASE RINGTRAIN MPIRUN [MPIRUN ARGS...]
(the data: /usr/share/common-licenses, byte-level, as jobs/prepare-corpus.sh makes the default corpus)
Cases:
  files     checkpoint.every / keep / latest; a resume on another rank count and ZeRO stage says what
            changed in its first line, appends to metrics.jsonl (each step once) and continues the losses of
            an uninterrupted run; a finished run goes on with more train.steps.
  corrupt   resuming from a damaged or mismatched checkpoint (bytes flipped inside a dataset, a truncated
            file, a dataset deleted with h5py, a wrong format, not HDF5, a changed d_model): exit 1, one line
            naming the file (and the dataset), nothing in checkpoint.dir or run.dir changed.
  kill      a rank SIGKILLed in the middle of a save (held open by RINGTRAIN_TEST_CKPT_STALL): `latest`
            still names the previous checkpoint, which resumes to the uninterrupted run's losses; the .tmp
            is ignored and removed by the next save. Signals sent to the ranks: a second one during the save
            is ignored (exit 75, the new checkpoint complete); a third ends the process at once (the previous
            checkpoint stays latest).
  mpirun    steps of seconds: SIGUSR1 to mpirun stops within one layer plus the save (exit 75); SIGTERM to
            mpirun started with odls_base_sigkill_timeout = 20 saves too (Open MPI delivers it to the ranks
            after that timeout); both resume to the uninterrupted run's losses.
Losses are compared as metrics.jsonl writes them (9 significant digits): the same mesh gives the same bits.
The learning rate stays in its warmup (train.warmup_steps = 1000), so it does not depend on train.steps and a
run that stops and resumes with other train.steps can be compared with a straight run.
"""
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

EXIT_STOPPED = 75
RINGTRAIN = CORPUS = None
MPIRUN = []


def config(path, **overrides):
    keys = {
        "model.preset": "tiny", "train.steps": 6, "train.batch_size": 4, "train.seq_len": 64, "train.lr": "0.1",
        "train.warmup_steps": 1000, "train.val_every": 0, "train.log_every": 1, "model.dropout": "0.1",
        "data.train": CORPUS, "parallel.sp": 2, "zero.stage": 1, "checkpoint.every": 2, "checkpoint.keep": 2,
    }
    keys.update({k.replace("__", "."): v for k, v in overrides.items()})
    sections = {}
    for key, value in keys.items():
        section, name = key.split(".")
        sections.setdefault(section, []).append(f"{name} = {value}")
    with open(path, "w") as f:
        for section, lines in sections.items():
            f.write(f"[{section}]\n" + "\n".join(lines) + "\n")
    return path


def train_cmd(np_, ini, *extra, mpirun_args=()):
    return MPIRUN + list(mpirun_args) + ["-np", str(np_), RINGTRAIN, "train", "--config", ini] + list(extra)


def run(np_, ini, *extra, expect=0, env=None):
    p = subprocess.run(train_cmd(np_, ini, *extra), capture_output=True, text=True, env=env)
    if p.returncode != expect:
        sys.exit(f"FAIL: exit {p.returncode}, expected {expect}: {' '.join(extra)}\n{p.stdout}\n{p.stderr}")
    return p


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    return [(m["step"], m["loss"]) for m in lines]


def ringtrain_lines(stderr):
    """ringtrain's own lines (mpirun adds its report of the exit status)."""
    return [line for line in stderr.splitlines() if line.startswith("ringtrain:")]


def check(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}")
    print(f"ok   {what}")


def snapshot(*dirs):
    """Names, sizes and contents of every file under dirs."""
    state = {}
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "**"), recursive=True)):
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    state[path] = hashlib.sha256(f.read()).hexdigest()
    return state


def reference(tmp, np_=2, **overrides):
    """The losses of an uninterrupted run."""
    ref_dir = os.path.join(tmp, "ref")
    overrides.setdefault("checkpoint__every", 0)
    ini = config(os.path.join(tmp, "ref.ini"), run__dir=ref_dir, **overrides)
    run(np_, ini)
    return losses(ref_dir)


def case_files(tmp):
    ref = reference(tmp)
    run_dir = os.path.join(tmp, "run")
    ckpt = os.path.join(run_dir, "checkpoints")
    ini = config(os.path.join(tmp, "a.ini"), run__dir=run_dir, train__steps=4)
    run(2, ini)
    names = sorted(os.listdir(ckpt))
    check(names == ["latest", "step_00000002.h5", "step_00000004.h5"], f"every 2, keep 2: {names}")
    check(open(os.path.join(ckpt, "latest")).read() == "step_00000004.h5\n", "latest names the newest")
    with h5py.File(os.path.join(ckpt, "step_00000004.h5"), "r") as f:
        check(int(f.attrs["step"]) == 4 and int(f.attrs["tokens"]) == 4 * 4 * 64, "step and tokens attributes")
        check(int(f.attrs["world_size"]) == 2 and int(f.attrs["sp"]) == 2 and int(f.attrs["zero_stage"]) == 1,
              "saved layout attributes")
        for group in ("model", "optim/master", "optim/m", "optim/v"):
            check(set(f[group].keys()) == set(f["model"].keys()), f"/{group} holds every tensor")
    # Resume on 1 rank at ZeRO 0 with more steps: the first line says what changed.
    ini_b = config(os.path.join(tmp, "b.ini"), run__dir=run_dir, train__steps=6, parallel__sp=1, zero__stage=0,
                   checkpoint__keep=3)
    p = run(1, ini_b, "--resume")
    first = p.stdout.splitlines()[0]
    check(first.startswith(f"resuming from {ckpt}/step_00000004.h5: step 4") and "parallel.sp 2 -> 1" in first
          and "zero.stage 1 -> 0" in first and "train.steps 4 -> 6" in first, f"first line: {first}")
    got = losses(run_dir)
    check([s for s, _ in got] == list(range(6)), f"metrics.jsonl holds each step once: {[s for s, _ in got]}")
    worst = max(abs(a[1] - b[1]) / abs(b[1]) for a, b in zip(got[4:], ref[4:]))
    check(worst <= 1e-5, f"losses after resharding 2 -> 1 ranks continue the straight run (rel err {worst:.2g})")
    check(sorted(os.listdir(ckpt)) == ["latest", "step_00000002.h5", "step_00000004.h5", "step_00000006.h5"],
          f"keep 3: {sorted(os.listdir(ckpt))}")
    # The same mesh resumes bit for bit: back to 2 ranks from step 4 (a path), the losses of the straight run.
    run_c = os.path.join(tmp, "run_c")
    ini_c = config(os.path.join(tmp, "c.ini"), run__dir=run_c)
    run(2, ini_c, f"--resume={ckpt}/step_00000004.h5")
    check(losses(run_c) == ref[4:], "resume on the same mesh: the straight run's losses, bit for bit")
    p = run(2, ini_c, "--resume")
    check("nothing to train" in p.stdout, "resuming a finished run trains nothing")


def case_corrupt(tmp):
    run_dir = os.path.join(tmp, "run")
    ckpt = os.path.join(run_dir, "checkpoints")
    ini = config(os.path.join(tmp, "a.ini"), run__dir=run_dir, train__steps=2)
    run(2, ini)
    good = os.path.join(ckpt, "step_00000002.h5")
    bad_dir = os.path.join(tmp, "bad")
    os.makedirs(bad_dir)

    def damaged(name, damage):
        path = os.path.join(bad_dir, name)
        shutil.copyfile(good, path)
        damage(path)
        return path

    def flip(path):
        with h5py.File(path, "r") as f:
            offset = f["/optim/m/wte"].id.get_offset()
        with open(path, "r+b") as f:
            f.seek(offset + 100)
            byte = f.read(1)
            f.seek(offset + 100)
            f.write(bytes([byte[0] ^ 0xFF]))

    def truncate(path):
        os.truncate(path, os.path.getsize(path) // 2)

    def delete(path):
        with h5py.File(path, "r+") as f:
            del f["/optim/v/lm_head.weight"]

    def wrong_format(path):
        with h5py.File(path, "r+") as f:
            f.attrs["format"] = np.bytes_("something-else")

    def not_hdf5(path):
        with open(path, "wb") as f:
            f.write(b"not an HDF5 file at all\n" * 100)

    cases = [
        ("flipped bytes in a dataset", damaged("flip.h5", flip), r"/optim/m/wte: checksum mismatch"),
        ("a truncated file", damaged("trunc.h5", truncate), r"trunc\.h5"),
        ("a dataset deleted with h5py", damaged("del.h5", delete), r"/optim/v/lm_head.weight"),
        ("a wrong format", damaged("fmt.h5", wrong_format), r"format"),
        ("not an HDF5 file", damaged("junk.h5", not_hdf5), r"junk\.h5"),
    ]
    before = snapshot(run_dir, bad_dir)
    for what, path, names in cases:
        p = run(2, ini, f"--resume={path}", expect=1)
        lines = ringtrain_lines(p.stderr)
        ok = len(lines) == 1 and path in lines[0] and re.search(names, lines[0])
        check(ok, f"{what}: {lines}")
    ini_d = config(os.path.join(tmp, "d.ini"), run__dir=run_dir, train__steps=4, model__d_model=128)
    p = run(2, ini_d, "--resume", expect=1)
    lines = ringtrain_lines(p.stderr)
    check(len(lines) == 1 and good in lines[0] and "model.d_model" in lines[0], f"a changed d_model: {lines}")
    check(snapshot(run_dir, bad_dir) == before, "nothing in checkpoint.dir or run.dir changed")


def start(np_, ini, *extra, env=None, mpirun_args=()):
    log = open(ini + ".log", "w+")
    p = subprocess.Popen(train_cmd(np_, ini, *extra, mpirun_args=mpirun_args), stdout=log,
                         stderr=subprocess.STDOUT, text=True, env=env)
    return p, log


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.02)
    sys.exit(f"FAIL: timed out waiting for {what}")


def rank_pids(mpirun_pid):
    out = subprocess.run(["pgrep", "-P", str(mpirun_pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def case_kill(tmp):
    ref = reference(tmp)
    run_dir = os.path.join(tmp, "run")
    ckpt = os.path.join(run_dir, "checkpoints")
    ini = config(os.path.join(tmp, "a.ini"), run__dir=run_dir)
    stall = dict(os.environ, RINGTRAIN_TEST_CKPT_STALL="step_00000004.h5:60")
    p, log = start(2, ini, env=stall)
    tmp_file = os.path.join(ckpt, "step_00000004.h5.tmp")
    wait_for(lambda: os.path.exists(tmp_file), 120, "the save of step 4")
    time.sleep(1)
    os.kill(rank_pids(p.pid)[-1], signal.SIGKILL)
    p.wait(timeout=60)
    check(p.returncode != 0, f"the job ends when a rank is killed mid-save (exit {p.returncode})")
    check(open(os.path.join(ckpt, "latest")).read() == "step_00000002.h5\n", "latest still names step 2")
    check(not os.path.exists(os.path.join(ckpt, "step_00000004.h5")) and os.path.exists(tmp_file),
          "the killed save left only its .tmp")
    # every 3: the next save is step 3's, so the killed save's step_00000004.h5.tmp must be removed, not reused.
    out = run(2, ini, "--resume", "--set=checkpoint.every=3").stdout
    check(f"resuming from {ckpt}/step_00000002.h5" in out, "resume takes the previous checkpoint")
    check(losses(run_dir) == ref, "the resumed run's losses are the uninterrupted run's, bit for bit")
    check(not glob.glob(os.path.join(ckpt, "*.tmp")), "the next save removed the .tmp")

    # A second signal during the save is ignored: the stop completes, exit 75.
    run2 = os.path.join(tmp, "run2")
    ini2 = config(os.path.join(tmp, "b.ini"), run__dir=run2, train__steps=100000, checkpoint__every=0)
    p, log = start(2, ini2, env=dict(os.environ, RINGTRAIN_TEST_CKPT_STALL=".h5:4"))
    wait_for(lambda: os.path.exists(os.path.join(run2, "metrics.jsonl")) and
             os.path.getsize(os.path.join(run2, "metrics.jsonl")) > 0, 120, "the first step")
    ranks = rank_pids(p.pid)
    for pid in ranks:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: glob.glob(os.path.join(run2, "checkpoints", "*.tmp")), 60, "the stop's save")
    time.sleep(1)
    for pid in ranks:
        os.kill(pid, signal.SIGTERM)
    p.wait(timeout=60)
    log.seek(0)
    text = log.read()
    check(p.returncode == EXIT_STOPPED, f"a second signal during the save: exit {p.returncode} == 75")
    latest = open(os.path.join(run2, "checkpoints", "latest")).read().strip()
    check(os.path.exists(os.path.join(run2, "checkpoints", latest)) and
          "signals that came during the save were ignored" in text, f"the stop's checkpoint completed ({latest})")

    # A third signal ends the process at once: the previous checkpoint stays latest.
    run3 = os.path.join(tmp, "run3")
    run(2, config(os.path.join(tmp, "c.ini"), run__dir=run3, train__steps=2))
    ini3 = config(os.path.join(tmp, "d.ini"), run__dir=run3, train__steps=100000, checkpoint__every=0)
    p, log = start(2, ini3, "--resume", env=dict(os.environ, RINGTRAIN_TEST_CKPT_STALL=".h5:60"))
    wait_for(lambda: os.path.getsize(os.path.join(run3, "metrics.jsonl")) > 2 * 300, 120, "a resumed step")
    ranks = rank_pids(p.pid)
    for pid in ranks:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: glob.glob(os.path.join(run3, "checkpoints", "*.tmp")), 60, "the stop's save")
    t0 = time.time()
    for _ in range(2):
        os.kill(ranks[0], signal.SIGTERM)
        time.sleep(0.2)
    p.wait(timeout=30)
    elapsed = time.time() - t0
    check(elapsed < 20 and p.returncode not in (0, EXIT_STOPPED),
          f"a third signal ends the job at once (exit {p.returncode}, {elapsed:.1f} s)")
    latest = open(os.path.join(run3, "checkpoints", "latest")).read().strip()
    check(latest == "step_00000002.h5", f"the previous checkpoint stays latest ({latest})")


def case_mpirun(tmp):
    slow = dict(model__preset="small", train__seq_len=1024, train__batch_size=2, checkpoint__every=0,
                model__dropout="0")
    stopped_at = {}
    for sig, mpirun_args in ((signal.SIGUSR1, ()), (signal.SIGTERM, ("--mca", "odls_base_sigkill_timeout", "8"))):
        name = signal.Signals(sig).name
        run_dir = os.path.join(tmp, "run_" + name)
        ini = config(os.path.join(tmp, name + ".ini"), run__dir=run_dir, train__steps=1000, **slow)
        p, log = start(2, ini, mpirun_args=mpirun_args)
        metrics = os.path.join(run_dir, "metrics.jsonl")
        wait_for(lambda: os.path.exists(metrics) and os.path.getsize(metrics) > 0, 300, "the first step")
        # inside step 2, which started when step 1's line was written: a third of a step later (steps last
        # 0.5 s on one machine, 7 s on another, so a fixed sleep can land after step 2)
        time.sleep(json.loads(open(metrics).readline())["step_s"] / 3)
        t0 = time.time()
        p.send_signal(sig)
        p.wait(timeout=120)
        wall = time.time() - t0
        log.seek(0)
        text = log.read()
        m = re.search(r"checkpoint of step (\d+) complete ([0-9.]+) s after the signal", text)
        check(m is not None, f"{name} to mpirun: the ranks saved a checkpoint")
        step, after = int(m.group(1)), float(m.group(2))
        step_s = json.loads(open(metrics).readline())["step_s"]
        if sig == signal.SIGUSR1:
            check(p.returncode == EXIT_STOPPED, f"{name} to mpirun: exit {p.returncode} == {EXIT_STOPPED}")
            # The bound: one layer's forward or backward plus the save, not the rest of the step.
            save_s = float(re.search(r"checkpoint \S+ \(step \d+, [^,]+, ([0-9.]+) s\)", text).group(1))
            check(step == 1 and after - save_s < step_s / 2,
                  f"{name}: step 2 abandoned (checkpoint of step {step}); checkpoint complete {after:.1f} s after the signal, of which the save "
                  f"took {save_s:.1f} s (a step: {step_s:.1f} s)")
        else:
            check(p.returncode != 0 and wall < 2 * 8 + step_s, f"{name} to mpirun: saved, exit {p.returncode}, "
                  f"{wall:.1f} s after the signal (Open MPI delivers it after odls_base_sigkill_timeout)")
        run(2, ini, "--resume", f"--set=train.steps={step + 1}")
        stopped_at[name] = (run_dir, step + 1)
    ref = reference(tmp, train__steps=max(n for _, n in stopped_at.values()), **slow)
    for name, (run_dir, n) in stopped_at.items():
        check(losses(run_dir) == ref[:n], f"{name}: stopped, resumed: the uninterrupted run's {n} losses")


def main():
    global RINGTRAIN, CORPUS, MPIRUN
    case, RINGTRAIN = sys.argv[1:3]
    MPIRUN = sys.argv[3:] + ["-x", "RINGTRAIN_TEST_CKPT_STALL"]
    os.environ.setdefault("RINGTRAIN_TEST_CKPT_STALL", "")
    tmp = tempfile.mkdtemp(prefix="rt_checkpoint_run_")
    try:
        CORPUS = os.path.join(tmp, "train.bin")
        texts = sorted(glob.glob("/usr/share/common-licenses/*"))
        inputs = [arg for t in texts if os.path.isfile(t) for arg in ("--input", t)]
        subprocess.run([RINGTRAIN, "prepare"] + inputs + ["--output", CORPUS], check=True, stdout=subprocess.DEVNULL)
        {"files": case_files, "corrupt": case_corrupt, "kill": case_kill, "mpirun": case_mpirun}[case](tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"checkpoint_run {case}: all passed")


if __name__ == "__main__":
    main()
