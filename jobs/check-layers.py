#!/usr/bin/env python3
"""Fails when an #include points up a layer or across into a sibling it must not know.

Usage: jobs/check-layers.py [--plant FILE=HEADER ...]

Every C, CUDA and header file under runtime/, seqpar/, offload/, shard/ and
io/ must belong to a layer of the table below. Each #include "..." is
resolved (beside the including file first, then from the repository root;
one that resolves nowhere is a violation), each #include <...> from the
repository root, and where it lands in the tree it must land in the file's
own layer or in one it may use. Some system headers are kept out of layers too (no MPI, NCCL or CUDA in
the model; no HDF5 in the parallelism layers). tests/ and jobs/ sit above
everything and are not checked.

--plant FILE=HEADER adds `#include "HEADER"` to FILE for this check only,
so the check can be shown to fail (tests/CMakeLists.txt does that).
Prints one line per violation and exits 1 when there is any.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# layer: (path prefixes, layers it may include). Longest prefix wins. Lower layers come first.
LAYERS = {
    "core": (["runtime/core/"], []),
    "backend": (["runtime/backend/"], ["core"]),
    "backend/cpu": (["runtime/backend/cpu/"], ["core", "backend"]),
    "backend/cuda": (["runtime/backend/cuda/"], ["core", "backend"]),
    "backend/registry": (["runtime/backend/registry."], ["core", "backend", "backend/cpu", "backend/cuda"]),
    # the NCCL plane orders its collectives on the CUDA backend's streams
    "comm": (["runtime/comm/"], ["core", "backend", "backend/cuda"]),
    "config": (["runtime/config/"], ["core"]),
    "seqpar": (["seqpar/"], ["core", "backend", "comm", "config"]),
    "offload": (["offload/"], ["core", "backend", "comm", "config"]),
    "shard": (["shard/"], ["core", "backend", "comm", "config"]),
    "io": (["io/"], ["core", "backend", "comm", "config"]),
    "model": (["runtime/model/"], ["core", "backend", "config", "seqpar", "offload", "io"]),
    "train": (["runtime/train/"], ["core", "backend", "backend/cpu", "backend/registry", "comm", "config", "seqpar",
                                   "offload", "shard", "io", "model"]),
    "app": (["runtime/app/"], ["core", "backend", "backend/cpu", "backend/registry", "comm", "config", "seqpar",
                               "offload", "shard", "io", "model", "train"]),
}
# system headers a layer must not include: (layer, regex, why)
FORBIDDEN_SYSTEM = [
    ("model", r"^(mpi|nccl|cuda.*|cublas.*)\.h$", "the model never sees MPI, NCCL or CUDA"),
    ("core", r"^(nccl|cuda.*|cublas.*|hdf5.*)\.h$", "the core has no device or file-format code"),
    ("config", r"^(mpi|nccl|cuda.*|cublas.*|hdf5.*)\.h$", "the config layer is plain C"),
    ("seqpar", r"^hdf5.*\.h$", "sequence parallelism knows nothing of HDF5"),
    ("offload", r"^hdf5.*\.h$", "activation policies know nothing of HDF5"),
    ("shard", r"^hdf5.*\.h$", "ZeRO knows nothing of HDF5"),
]
SOURCE = re.compile(r"\.(c|h|cu|cuh)$")
# Folders whose every source file must belong to a layer (a new folder or file under them gets a row above).
LAYERED_ROOTS = ("runtime/", "seqpar/", "offload/", "shard/", "io/")
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]', re.M)


def layer_of(path):
    best, best_len = None, -1
    for name, (prefixes, _) in LAYERS.items():
        for prefix in prefixes:
            if path.startswith(prefix) and len(prefix) > best_len:
                best, best_len = name, len(prefix)
    return best


def resolve(including, header, files):
    beside = os.path.normpath(os.path.join(os.path.dirname(including), header))
    if beside in files:
        return beside
    rooted = os.path.normpath(header)
    return rooted if rooted in files else None


def resolve_rooted(header, files):
    rooted = os.path.normpath(header)
    return rooted if rooted in files else None


def main(argv):
    planted = {}
    args = argv[1:]
    while args:
        if args[0] == "--plant" and len(args) > 1 and "=" in args[1]:
            path, header = args[1].split("=", 1)
            planted.setdefault(path, []).append(header)
            args = args[2:]
        else:
            print(__doc__, file=sys.stderr)
            return 2
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    files = {f for f in listed if SOURCE.search(f) and os.path.exists(os.path.join(ROOT, f))}
    for path in planted:
        if path not in files:
            print(f"check-layers: --plant {path}: no such source file", file=sys.stderr)
            return 2
    violations, checked = [], 0
    for path in sorted(files):
        layer = layer_of(path)
        if layer is None:
            if path.startswith(LAYERED_ROOTS):
                violations.append(f"{path}: belongs to no layer (give it a row in LAYERS, jobs/check-layers.py)")
            continue
        checked += 1
        with open(os.path.join(ROOT, path), encoding="utf-8", errors="replace") as f:
            text = f.read()
        includes = [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in INCLUDE.finditer(text)]
        includes += [('"', header, 0) for header in planted.get(path, [])]
        allowed = set(LAYERS[layer][1]) | {layer}
        for kind, header, line in includes:
            where = f"{path}:{line}" if line else f"{path} (planted)"
            # <...> is resolved too: the repository root is on the include path, so <runtime/...> reaches it
            target = resolve(path, header, files) if kind == '"' else resolve_rooted(header, files)
            if target is None and kind == '"':
                violations.append(f'{where}: #include "{header}" matches no file beside it or under the root')
                continue
            if target is not None:
                target_layer = layer_of(target)
                if target_layer is not None and target_layer not in allowed:
                    violations.append(f"{where}: layer {layer} includes {target} (layer {target_layer}); "
                                      f"{layer} may include only {', '.join(sorted(allowed))}")
                continue
            for banned_layer, pattern, why in FORBIDDEN_SYSTEM:
                if banned_layer == layer and re.match(pattern, os.path.basename(header)):
                    violations.append(f"{where}: layer {layer} includes <{header}>: {why}")
    for v in violations:
        print(v)
    print(f"check-layers: {checked} files, {len(violations)} violation(s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
