"""ckpt_store_h5py.py: a file written by rt_ckpt_store on 3 ranks, read by h5py (Debian's python3-h5py).

Runs test_ckpt_store under mpirun, which keeps its reference checkpoint at the path it is given, then checks
attributes, shapes, dtypes, the Fletcher32 filter and every value against this file's own copy of the
test's generator. Usage: ckpt_store_h5py.py TEST_BINARY MPIRUN [MPIRUN ARGS...]
"""
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np

MASK = (1 << 64) - 1


def rand_u64(state):
    x = state
    x ^= x >> 12
    x ^= (x << 25) & MASK
    x ^= x >> 27
    return x, (x * 0x2545F4914F6CDD1D) & MASK


def value_at(tensor, i):
    state = ((tensor + 1) * 0x9E3779B97F4A7C15 + i * 0xBF58476D1CE4E5B9 + 1) & MASK
    state, _ = rand_u64(state)
    _, x = rand_u64(state)
    return np.float32((x >> 40) * 2.0**-24) - np.float32(0.5)


TENSORS = [("/model/a", (7, 5)), ("/model/b", (3, 13)), ("/optim/m/c", (11,)), ("/optim/v/d", (3, 2, 5)),
           ("/model/rep", (4, 3))]


def main():
    binary, mpirun = sys.argv[1], sys.argv[2:]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "kept.h5")
        subprocess.run(mpirun + ["-np", "3", binary, out], check=True, stdout=subprocess.DEVNULL)
        with h5py.File(out, "r") as f:
            assert f.attrs["format"].decode() == "ringtrain-checkpoint", f.attrs["format"]
            assert int(f.attrs["version"]) == 1 and int(f.attrs["step"]) == 42 and int(f.attrs["tokens"]) == -7
            assert f.attrs["config"].decode() == "[model]\npreset = tiny\n"
            for t, (name, shape) in enumerate(TENSORS):
                d = f[name]
                assert d.shape == shape and d.dtype == np.float32 and d.fletcher32, (name, d.shape, d.dtype)
                want = np.array([value_at(t, i) for i in range(int(np.prod(shape)))], dtype=np.float32)
                assert np.array_equal(d[...].reshape(-1), want), name
    print("h5py reads every tensor and attribute as written")


if __name__ == "__main__":
    main()
