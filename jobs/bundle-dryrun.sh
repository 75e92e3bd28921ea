#!/usr/bin/env bash
# A rehearsal of jobs/gpu-check.sh on this machine, without a GPU: it runs the check in a chroot that holds only
# what the GPU machine is known to have, so a bundle that leans on a Debian package of this machine (a library,
# Open MPI's or PMIx's install dirs, components or help files) fails here, not in the GPU session's few minutes.
#   sudo bash jobs/bundle-dryrun.sh [BUNDLE_DIR (default gpu-bundle, from jobs/bundle.sh)]
# The root: glibc, libstdc++ and libgcc_s; the shell tools gpu-check.sh, env.sh and run call, with the libraries
# they load (base-system ones on any distribution); the CUDA toolkit at /usr/local/cuda (bound read-only; the
# GPU machine has CUDA 13 there); /etc/passwd, group and hosts; /proc, /sys, /dev/null, a tmpfs /dev/shm. No
# libcuda (no driver): CUDA programs load, find no device and skip. No Python, no nvidia-smi.
# Expected, and checked from gpu-check.sh's summary: "libraries" and "mpirun (CPU)" pass; each GPU test reports
# skipped (exit 77: it loaded every library and ran as far as the device query; a missing library is 127).
# nvidia-smi and bench-gpu fail there (no GPU, no Python), which says nothing of the bundle and is not checked.
# Needs root (chroot, mounts in a private mount namespace, gone when it ends), and runs the check as root, as
# the GPU machine's runs have been so far. About 10 s.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=$(realpath -m "${1:-$root/gpu-bundle}")
[ -f "$bundle/ringtrain-gpu.tar.xz" ] || { echo "bundle-dryrun: no $bundle/ringtrain-gpu.tar.xz (run jobs/bundle.sh)"; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bundle-dryrun: needs root (chroot and mounts)"; exit 2; }
cuda=$(realpath -e /usr/local/cuda 2>/dev/null) || { echo "bundle-dryrun: no CUDA toolkit at /usr/local/cuda"; exit 2; }

jail=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$jail" "$log"' EXIT
mkdir -p "$jail"/{usr/bin,usr/lib/x86_64-linux-gnu,usr/local,etc,proc,sys,dev/shm,tmp,repo,bundle}
ln -s usr/bin "$jail/bin"
ln -s usr/lib "$jail/lib"
ln -s usr/lib "$jail/lib64"

tools=(bash sh env cat dirname basename date timeout tar xz head tail rm mkdir nproc find grep sed awk mawk sort
  cut tr wc ls readlink realpath mktemp id uname sleep tee ldd ldconfig cp mv touch)
copy_lib() { [ -e "$jail/usr/lib/x86_64-linux-gnu/$(basename "$1")" ] || cp -L "$1" "$jail/usr/lib/x86_64-linux-gnu/"; }
for t in "${tools[@]}"; do
  path=$(command -v "$t") || { echo "bundle-dryrun: $t is not on this machine"; exit 2; }
  cp -L "$path" "$jail/usr/bin/$t"
  # ldd's own script names the loader by its absolute path
  { ldd "$path" 2>/dev/null || true; } | awk '/=>/ && $3 ~ /^\// { print $3 } /^\t\/lib/ { print $1 }' | while read -r lib; do
    copy_lib "$lib"
  done
done
loader=$(ldd /bin/bash | awk '/ld-linux/ { print $1 }')
copy_lib "$loader"
ln -sf "x86_64-linux-gnu/$(basename "$loader")" "$jail/usr/lib/$(basename "$loader")"
# glibc whole and the C++ runtime: the GPU machine has them (bundle.sh leaves them to the machine)
for lib in libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2 libutil.so.1 libstdc++.so.6 \
  libgcc_s.so.1; do
  path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ { print $NF; exit }')
  [ -n "$path" ] || { echo "bundle-dryrun: $lib is not in this machine's linker cache (ldconfig -p)"; exit 2; }
  copy_lib "$path"
done
cp /etc/passwd /etc/group /etc/hosts "$jail/etc/"
mkdir -p "$jail$cuda"
ln -s "$cuda" "$jail/usr/local/cuda"
mkdir -p "$jail/repo/jobs"
cp "$root"/jobs/gpu-check.sh "$root"/jobs/bench-gpu.sh "$root"/jobs/bench_attention_torch.py "$jail/repo/jobs/"
cp "$bundle/ringtrain-gpu.tar.xz" "$jail/bundle/"

echo "== gpu-check.sh in a chroot without the Debian packages ($jail)"
unshare --mount --propagation private bash -c '
  set -e
  jail=$1 cuda=$2
  mount --bind "$cuda" "$jail$cuda" && mount -o remount,bind,ro "$jail$cuda"
  mount -t proc proc "$jail/proc"
  mount --rbind /sys "$jail/sys"
  touch "$jail/dev/null" "$jail/dev/zero" "$jail/dev/urandom"
  for d in null zero urandom; do mount --bind "/dev/$d" "$jail/dev/$d"; done
  mount -t tmpfs -o size=1g tmpfs "$jail/dev/shm"
  ln -s /proc/self/fd "$jail/dev/fd" # bash process substitution
  exec chroot "$jail" /usr/bin/env -i PATH=/usr/bin HOME=/tmp RT_CHECK_BUDGET_S=300 \
    /usr/bin/bash /repo/jobs/gpu-check.sh /bundle
' _ "$jail" "$cuda" 2>&1 | tee "$log" || true

echo
echo "== against what a machine without a GPU should give"
status=0
expect() { # expect NAME PATTERN: the summary line of check NAME matches PATTERN
  local line
  line=$(awk '/^== summary/ { s = 1 } s' "$log" | grep -F "  $1" | head -n 1)
  if [ -n "$line" ] && echo "$line" | grep -Eq "$2"; then
    echo "ok    $1: $(echo "$line" | sed -E 's/^ +//; s/ {2,}/ /')"
  else
    echo "WRONG $1: expected /$2/, got: ${line:-no summary line}"
    status=1
  fi
}
expect "libraries" "pass"
expect "mpirun (CPU)" "pass"
expect "test_cuda_ops" "skipped"
expect "test_cuda_train np1" "skipped"
expect "test_cuda_train np2" "skipped"
exit $status
