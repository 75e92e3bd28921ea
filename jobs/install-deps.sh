#!/usr/bin/env bash
# Installs the Debian packages ringtrain builds and runs with. Idempotent: when
# everything is there it touches nothing (and needs no network).
set -euo pipefail
packages=(build-essential cmake pkg-config git python3 python3-numpy python3-h5py clang-format
          openmpi-bin libopenmpi-dev libhdf5-openmpi-dev hdf5-tools
          libopenblas-openmp-dev libcunit1-dev libinih-dev
          libcjson-dev libpcre2-dev python3-venv  # Hugging Face files: JSON, the tokenizer's split pattern
          clang libclang-rt-14-dev libomp-dev  # the fuzzers (jobs/fuzz.sh): clang, libFuzzer, clang's OpenMP
          slurmctld slurmd slurm-client munge iproute2)  # the slurm tests (jobs/slurm-local.sh; ss: its port)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
