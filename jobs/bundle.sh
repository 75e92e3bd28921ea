#!/usr/bin/env bash
# Builds a release tree with the CUDA backend here and packs what the GPU machine needs to run the GPU tests and
# benchmarks into one folder (jobs/gpu-check.sh unpacks and runs it there):
#   jobs/bundle.sh [BUNDLE_DIR (default gpu-bundle)] [BUILD_DIR (default build-gpu)]
#
# The GPU machine has CUDA 13 (cudart, cuBLAS, cuBLASLt, NCCL: from the toolkit or PyTorch's wheels), glibc,
# libstdc++ and a Python with PyTorch, but none of the Debian packages this project builds on (Open MPI, HDF5,
# OpenBLAS, libinih, CUnit) and no network. So the bundle holds:
#   bin/   the programs (GPU tests, benchmarks, ringtrain, test_ring_attention as a CPU check of mpirun) and
#          Open MPI's mpirun and orted;
#   lib/   every shared library they load (ldd) except glibc's (libc, libm, libpthread, libdl, librt, libresolv,
#          libutil, ld-linux), libstdc++ and libgcc_s (the machine's are newer, and its CUDA libraries need them),
#          libcuda (the driver's) and the CUDA toolkit's libcudart, libcublas, libcublasLt and libnccl;
#   ompi/  Open MPI's components (those whose libraries are all here: not UCX, libfabric, verbs, PSM), help files
#          and an MCA parameter file; pmix/ the PMIx plugins and help files;
#   env.sh and run: LD_LIBRARY_PATH, PATH, Open MPI's and PMIx's install dirs pointed into the bundle, the CUDA
#          libraries looked up on the machine. `./run NAME ARGS` runs bin/NAME, `./run mpirun ...` the bundled
#          mpirun (local launch, no ssh), `./run --check` lists what does not resolve.
# Single-rank runs need no mpirun: with ess_singleton_isolated, MPI_Init as a singleton starts no orted (Open
# MPI 4.1's singleton otherwise forks one). Two ranks (the staged plane on one GPU) use the bundled mpirun.
# Uncompressed this is ~110 MiB (OpenBLAS alone is 36 MiB), so the folder holds it as one xz tarball,
# ringtrain-gpu.tar.xz, which must stay within 60 MiB (the tree that travels to the GPU machine is at most 64).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$root/gpu-bundle}")
build=$(realpath -m "${2:-$root/build-gpu}")
max_mib=60
programs=(tests/test_cuda_ops tests/test_cuda_train tests/test_ring_attention bench_gpu bench_attention ringtrain)

echo "== build ($build, CUDA on)"
bash "$root/jobs/build.sh" "$build" -DRINGTRAIN_CUDA=ON
for p in "${programs[@]}"; do
  [ -x "$build/$p" ] || { echo "bundle: $build/$p was not built (are the GPU targets in CMakeLists.txt?)"; exit 1; }
done

stage=$(mktemp -d /tmp/rt_bundle.XXXXXX)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,lib,ompi/lib/openmpi3,ompi/share/openmpi,ompi/etc,pmix/lib/pmix,pmix/share/pmix}

# Open MPI and PMIx as Debian installs them (ompi_info --path all)
ompi_pkglib=/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3
ompi_help=/usr/share/openmpi
pmix_root=/usr/lib/x86_64-linux-gnu/pmix2
for p in "${programs[@]}"; do cp "$build/$p" "$stage/bin/"; done
cp "$(command -v orterun)" "$stage/bin/mpirun"
cp "$(command -v orted)" "$stage/bin/orted"

# libraries the GPU machine has: glibc's, the C++ runtime, the driver, the CUDA toolkit's
system_lib='^(linux-vdso\.so|ld-linux-x86-64\.so|libc\.so|libm\.so|libpthread\.so|libdl\.so|librt\.so|libresolv\.so|libutil\.so|libstdc\+\+\.so|libgcc_s\.so|libcuda\.so|libcudart\.so|libcublas\.so|libcublasLt\.so|libnccl\.so)'
# components that need a network stack this bundle leaves out
network_lib='^(libucp|libucs|libuct|libucm|libfabric|libibverbs|librdmacm|libefa|libpsm|libinfinipath|libnl-|liboshmem|libmca_common_ucx|libmca_common_ofi|libmca_common_verbs)'

deps_of() { ldd "$1" | awk '/=>/ { print $1, $3 }'; }

skipped=()
for so in "$ompi_pkglib"/*.so; do
  if deps_of "$so" | awk '{print $1}' | grep -Eq "$network_lib" || ldd "$so" | grep -q "not found"; then
    skipped+=("$(basename "$so")")
  else
    cp "$so" "$stage/ompi/lib/openmpi3/"
  fi
done
cp "$pmix_root"/lib/pmix/*.so "$stage/pmix/lib/pmix/"
cp -r "$ompi_help"/. "$stage/ompi/share/openmpi/"
cp -r "$pmix_root"/share/pmix/. "$stage/pmix/share/pmix/"
cat /etc/openmpi/openmpi-mca-params.conf - >"$stage/ompi/etc/openmpi-mca-params.conf" <<'EOF'
# ringtrain bundle: one node, shared memory and loopback only; no ssh (plm isolated, set in env.sh)
btl = self,vader,tcp
pml = ob1
# CMA (process_vm_readv) needs ptrace rights that containers and VMs may withhold: copy through the FIFO
btl_vader_single_copy_mechanism = none
EOF
cp /etc/openmpi/openmpi-default-hostfile "$stage/ompi/etc/" 2>/dev/null || : >"$stage/ompi/etc/openmpi-default-hostfile"

# every library any of those loads (ldd gives the whole closure), copied by its soname
for elf in "$stage"/bin/* "$stage"/ompi/lib/openmpi3/*.so "$stage"/pmix/lib/pmix/*.so; do
  deps_of "$elf"
done | sort -u | while read -r name path; do
  if echo "$name" | grep -Eq "$system_lib"; then continue; fi
  if [ "$path" = "not" ] || [ ! -e "$path" ]; then echo "bundle: $name of some program is not found here"; exit 1; fi
  [ -e "$stage/lib/$name" ] || cp -L "$path" "$stage/lib/$name"
done

cat >"$stage/env.sh" <<'EOF'
# env.sh: the environment of the bundle's programs (sourced by ./run). Libraries: the bundle's first, then the
# CUDA libraries wherever this machine keeps them (the dynamic linker's cache, the toolkit, PyTorch's wheels).
B=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ "${RT_BUNDLE_ENV:-}" = "$B" ]; then return 0; fi # set up already (a program started by another one)
export RT_BUNDLE_ENV="$B"
# the search (a find through PyTorch's wheels, seconds) runs once; its answer is kept in $B/cuda_dirs
if [ -f "$B/cuda_dirs" ]; then
  cuda_dirs=$(cat "$B/cuda_dirs")
else
  cuda_dirs=""
  ld_dirs=${LD_LIBRARY_PATH:-}
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
    if ldconfig -p 2>/dev/null | grep -q "$lib "; then continue; fi
    for dir in ${ld_dirs//:/ } /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
               /usr/local/lib /usr/lib/x86_64-linux-gnu; do
      if [ -e "$dir/$lib" ]; then continue 2; fi
    done
    found=$(find /usr/local/cuda*/ /opt /usr/lib/python3*/ /usr/local/lib/python3*/ -name "$lib" 2>/dev/null | head -n 1)
    [ -n "$found" ] || continue
    case "$cuda_dirs:" in *":$(dirname "$found"):"*) ;; *) cuda_dirs="$cuda_dirs:$(dirname "$found")" ;; esac
  done
  echo "$cuda_dirs" >"$B/cuda_dirs" 2>/dev/null || true
fi
export LD_LIBRARY_PATH="$B/lib$cuda_dirs:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$B/bin:$PATH"
# Open MPI (Debian's build, relocated): install dirs, components, help files, parameter file
export OPAL_PREFIX="$B/ompi" OPAL_EXEC_PREFIX="$B/ompi" OPAL_BINDIR="$B/bin" OPAL_LIBDIR="$B/lib"
export OPAL_PKGLIBDIR="$B/ompi/lib/openmpi3" OPAL_DATAROOTDIR="$B/ompi/share" OPAL_DATADIR="$B/ompi/share"
export OPAL_PKGDATADIR="$B/ompi/share/openmpi" OPAL_SYSCONFDIR="$B/ompi/etc"
export OMPI_MCA_mca_base_component_path="$B/ompi/lib/openmpi3"
export OMPI_MCA_mca_base_param_files="$B/ompi/etc/openmpi-mca-params.conf"
export PMIX_PREFIX="$B/pmix" PMIX_PKGLIBDIR="$B/pmix/lib/pmix" PMIX_PKGDATADIR="$B/pmix/share/pmix"
export PMIX_MCA_mca_base_component_path="$B/pmix/lib/pmix"
# a program started without mpirun initializes MPI as an isolated singleton (no orted); mpirun launches locally
export OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_plm=isolated
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
EOF

cat >"$stage/run" <<'EOF'
#!/usr/bin/env bash
# run: ./run NAME [ARGS...] runs bin/NAME with the bundle's libraries; ./run mpirun ARGS... the bundled mpirun
# (programs named by their bin/ name); ./run --check lists every library that resolves neither in the bundle
# nor among the ones the machine provides (exit 1 if any).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/env.sh"
case "${1:-}" in
  --check)
    system_lib='SYSTEM_LIB'
    bad=0
    checked=0
    for elf in "$here"/bin/* "$here"/ompi/lib/openmpi3/*.so "$here"/pmix/lib/pmix/*.so; do
      # a failing ldd (no loader, no /dev/fd, ...) must not read as "nothing missing"
      if ! deps=$(ldd "$elf" 2>&1); then echo "ldd failed on $(basename "$elf"): $deps"; bad=1; continue; fi
      checked=$((checked + 1))
      while read -r name arrow path rest; do
        [ "$arrow" = "=>" ] || continue
        if [ "$path" = "not" ]; then echo "missing: $name (needed by $(basename "$elf"))"; bad=1; continue; fi
        case "$path" in "$here"/lib/*) continue ;; esac
        if ! echo "$name" | grep -Eq "$system_lib"; then
          echo "from the system, not the bundle: $name => $path (needed by $(basename "$elf"))"; bad=1
        fi
      done <<<"$deps"
    done
    for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
      echo "$lib => $(for elf in "$here"/bin/*; do ldd "$elf"; done | awk -v l="$lib" '$1 == l { print $3; exit }')"
    done
    [ $bad = 0 ] && echo "every library of the $checked programs and components resolves"
    exit $bad ;;
  mpirun)
    shift
    exec "$here/bin/mpirun" --oversubscribe -x LD_LIBRARY_PATH -x PATH "$@" ;;
  "" ) echo "usage: run NAME [ARGS...] | run mpirun ARGS... | run --check"; exit 2 ;;
  *)
    name=$1
    shift
    exec "$here/bin/$name" "$@" ;;
esac
EOF
sed -i "s/SYSTEM_LIB/${system_lib//\\/\\\\}/" "$stage/run"
chmod +x "$stage/run"
{
  echo "ringtrain GPU bundle, built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git -C "$root" describe --always --dirty 2>/dev/null || echo '?')"
  echo "Open MPI components left out (they need UCX, libfabric, verbs or PSM): ${skipped[*]:-none}"
  (cd "$stage" && find . -type f -printf '%s %p\n' | sort -k2)
} >"$stage/MANIFEST"

echo "== check: every library resolves from the bundle or the machine's own set"
"$stage/run" --check
rm -f "$stage/cuda_dirs" # this machine's answer to env.sh's search, not the GPU machine's

mkdir -p "$out"
rm -f "$out/ringtrain-gpu.tar.xz" "$out/MANIFEST"
tar -C "$stage" -cf - . | xz -T0 -6 >"$out/ringtrain-gpu.tar.xz"
cp "$stage/MANIFEST" "$out/MANIFEST"
unpacked=$(du -sm "$stage" | cut -f1)
size=$(du -sm "$out" | cut -f1)
bytes=$(du -sb "$out" | cut -f1)
echo "bundle: $out: ${size} MiB ($bytes bytes; ${unpacked} MiB unpacked), limit ${max_mib} MiB"
if [ "$bytes" -gt $((max_mib * 1024 * 1024)) ]; then
  echo "bundle: $out is larger than ${max_mib} MiB"
  exit 1
fi
