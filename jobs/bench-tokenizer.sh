#!/usr/bin/env bash
# Encoding speed of ringtrain's byte-level BPE against the `tokenizers` library, one thread each, on the same
# English text with the same tokenizer.json (a GPT-2 style byte-level BPE of vocabulary 5000 trained here, offline,
# on the repository's documents; the text is those documents repeated to MB megabytes).
#   ringtrain: the wall time of `ringtrain prepare --tokenizer` (reading the file, encoding, writing the tokens)
#   tokenizers: encode_batch over the text cut at line ends into ~1 KB chunks (its fastest cut here: ~64 KB
#               chunks run at half the rate), 1024 chunks a batch, with
#               RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false (one thread); the encoding time only
# usage: jobs/bench-tokenizer.sh [BUILD_DIR (default build)] [MB (default 20)]; PYTHON names a python with tokenizers
# (default ~/.cache/ringtrain/pyenv/bin/python).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
mb=${2:-20}
py=${PYTHON:-$HOME/.cache/ringtrain/pyenv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1

"$py" - "$root" "$work" "$mb" <<'PY'
import os, sys, time
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
root, work, mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
docs = []
for d in ("README.md", "tests/README.md"):
    docs.append(open(os.path.join(root, d), encoding="utf-8").read())
for f in sorted(os.listdir(os.path.join(root, "docs"))):
    if f.endswith(".md"):
        docs.append(open(os.path.join(root, "docs", f), encoding="utf-8").read())
corpus = "\n".join(docs)
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(corpus.split("\n"), trainers.BpeTrainer(
    vocab_size=5000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False))
tok.save(os.path.join(work, "tokenizer.json"))
text = (corpus * (mb * 1_000_000 // len(corpus.encode()) + 1))
text = text[:len(text) * mb * 1_000_000 // len(text.encode())]
with open(os.path.join(work, "text.txt"), "w", encoding="utf-8", newline="") as f:
    f.write(text)
chunks, at = [], 0
while at < len(text):
    end = text.find("\n", at + 1024)
    end = len(text) if end < 0 else end + 1
    chunks.append(text[at:end])
    at = end
start = time.perf_counter()
n_ids = 0
for i in range(0, len(chunks), 1024):
    n_ids += sum(len(e.ids) for e in tok.encode_batch(chunks[i:i + 1024], add_special_tokens=False))
seconds = time.perf_counter() - start
size = len(text.encode())
print("tokenizers: %.1f MB, %d ids in %.2f s: %.2f MB/s" % (size / 1e6, n_ids, seconds, size / 1e6 / seconds))
with open(os.path.join(work, "hf_mbps"), "w") as f:
    f.write("%f" % (size / 1e6 / seconds))
PY

size=$(stat -c %s "$work/text.txt")
start=$(date +%s.%N)
"$build/ringtrain" prepare --tokenizer "$work/tokenizer.json" --input "$work/text.txt" --output "$work/out.bin" \
    >"$work/prepare.log"
end=$(date +%s.%N)
awk -v s="$size" -v a="$start" -v b="$end" -v hf="$(cat "$work/hf_mbps")" -v msg="$(cat "$work/prepare.log")" 'BEGIN {
    mbps = s / 1e6 / (b - a)
    printf "ringtrain: %.1f MB in %.2f s: %.2f MB/s (%s)\n", s / 1e6, b - a, mbps, msg
    printf "ratio ringtrain / tokenizers: %.2f\n", mbps / hf
}'
