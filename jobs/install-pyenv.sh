#!/usr/bin/env bash
# The Python virtual environment of the reference clients the Hugging Face tests compare against (PyTorch,
# transformers, tokenizers, safetensors), outside the clone: $RINGTRAIN_PYENV, default
# ~/.cache/ringtrain/pyenv. Idempotent: when the environment holds the pinned versions it touches nothing
# (and needs no network). Prints the environment's python on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
env_dir=${RINGTRAIN_PYENV:-$HOME/.cache/ringtrain/pyenv}
requirements="$here/pyenv-requirements.txt"
stamp="$env_dir/.ringtrain-requirements"
if [ -x "$env_dir/bin/python" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$requirements"; then
  echo "$env_dir/bin/python"; exit 0
fi
start=$(date +%s)
echo "install-pyenv: creating $env_dir (PyTorch, transformers, tokenizers, safetensors from PyPI)" >&2
rm -rf "$env_dir"
mkdir -p "$(dirname "$env_dir")"
/usr/bin/python3 -m venv "$env_dir"
"$env_dir/bin/pip" install -q --no-input -r "$requirements" >&2
cp "$requirements" "$stamp"
echo "install-pyenv: done in $(( $(date +%s) - start )) s" >&2
echo "$env_dir/bin/python"
