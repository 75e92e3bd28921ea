"""ckpt_store_h5py.py: a file written by rt_ckpt_store on 3 ranks, read by h5py (Debian's python3-h5py).

Runs test_ckpt_store under mpirun, which keeps its reference checkpoint at the path it is given, then checks
attributes, shapes, dtypes, every value against this file's own copy of the test's generator, and the
block checksums (io/block_sum.h) against this file's own numpy version of the sum. Usage: ckpt_store_h5py.py TEST_BINARY MPIRUN [MPIRUN ARGS...]
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
           ("/model/rep", (4, 3)), ("/optim/master/big", (3, 100, 500))]


def block_sums(values, block):
    """Per block of `block` elements: the sum mod 2^64 of f(index * golden ^ bits), f(z) = z * K ^ (z * K >> 33)."""
    with np.errstate(over="ignore"):
        z = np.arange(values.size, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z ^= values.view(np.uint32).astype(np.uint64)
        z *= np.uint64(0xFF51AFD7ED558CCD)
        z ^= z >> np.uint64(33)
        return np.array([int(z[b:b + block].sum(dtype=np.uint64)) for b in range(0, values.size, block)],
                        dtype=np.uint64)


def main():
    binary, mpirun = sys.argv[1], sys.argv[2:]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "kept.h5")
        subprocess.run(mpirun + ["-np", "3", binary, out], check=True, stdout=subprocess.DEVNULL)
        with h5py.File(out, "r") as f:
            assert f.attrs["format"].decode() == "ringtrain-checkpoint", f.attrs["format"]
            assert int(f.attrs["version"]) == 2 and int(f.attrs["step"]) == 42 and int(f.attrs["tokens"]) == -7
            assert f.attrs["config"].decode() == "[model]\npreset = tiny\n"
            for t, (name, shape) in enumerate(TENSORS):
                d = f[name]
                assert d.shape == shape and d.dtype == np.float32, (name, d.shape, d.dtype)
                want = np.array([value_at(t, i) for i in range(int(np.prod(shape)))], dtype=np.float32)
                assert np.array_equal(d[...].reshape(-1), want), name
                block = int(d.attrs["checksum_block"])
                assert block == 65536, (name, block)
                stored = d.attrs["block_checksums"]
                assert stored.dtype == np.uint64 and stored.shape == ((want.size + block - 1) // block,), name
                assert np.array_equal(stored, block_sums(want, block)), name
    print("h5py reads every tensor and attribute as written, and the block checksums match")


if __name__ == "__main__":
    main()
