"""hf_tokenizer.py: ringtrain's byte-level BPE against the `tokenizers` library itself.

Trains two byte-level BPE tokenizers offline with `tokenizers` (GPT-2 style: the ByteLevel pre-tokenizer;
Llama 3 style: Split on Llama 3's pattern, then ByteLevel without its regex, ignore_merges) on the repository's
documents plus generated text, then on over 1 MB of varied text (accents, CJK, emoji, digit runs, contractions,
whitespace runs, CRLF, tabs, the special token embedded):
  - `ringtrain prepare --tokenizer` writes, between the end-of-document ids, exactly encode(text).ids of each
    input file, and the header records the tokenizer (path, FNV-1a hash, separator id + 1);
  - the C decoder gives every file's bytes back (test_bpe_tokenizer roundtrip);
  - a run on the GPT-2 style file samples text through the recorded tokenizer and exports it beside the
    weights; once the file changes, sample prints ids and export leaves it out, each saying so in one line;
  - a WordPiece and a Unigram tokenizer.json are refused in one line naming the file and model.type, exit 1,
    no output file.
usage: hf_tokenizer.py RINGTRAIN TEST_BPE_TOKENIZER
"""
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

RINGTRAIN, HELPER = sys.argv[1], sys.argv[2]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
EOT = "<|endoftext|>"


def repository_text():
    parts = []
    for root in ("README.md", "docs", "tests/README.md"):
        path = os.path.join(REPO, root)
        paths = [path] if os.path.isfile(path) else sorted(
            os.path.join(path, f) for f in os.listdir(path) if f.endswith(".md"))
        for p in paths:
            with open(p, encoding="utf-8") as f:
                parts.append(f.read())
    return "\n".join(parts)


def generated_text(rng, n_chars):
    words = ["caf\u00e9", "na\u00efve", "\u00fcber", "se\u00f1or", "\u0141\u00f3d\u017a", "\u6771\u4eac",
             "\u65e5\u672c\u8a9e\u306e\u6587", "\ud55c\uad6d\uc5b4", "\u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439",
             "\u03b1\u03b2\u03b3", "\U0001F600", "\U0001F468\u200d\U0001F469\u200d\U0001F467", "\u2603\ufe0f",
             "don't", "I'M", "we'VE", "they'll", "it's", "He'd", "x" * 40, "12345678", "3.14159", "2026-12-06",
             "\u0661\u0662\u0663", "\u00bd", "foo_bar", "a+b=c", "<|endof", "text|>", "ﬁ", "\u00a0", "\u3000"]
    seps = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\n\n", " \n ", "   \t", ", ", ". ", "!? ", "\u2028", "\u0085"]
    out, size = [], 0
    while size < n_chars:
        piece = rng.choice(words) + rng.choice(seps)
        if rng.random() < 0.002:
            piece += EOT
        out.append(piece)
        size += len(piece)
    return "".join(out)


def train(kind, corpus):
    tok = Tokenizer(models.BPE(ignore_merges=(kind == "llama3")))
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus.split("\n"), trainer)
    return tok


def run(*args):
    """Runs ringtrain; its output must be valid UTF-8 (decoding is strict)."""
    r = subprocess.run(list(args), capture_output=True)
    r.stdout, r.stderr = r.stdout.decode("utf-8"), r.stderr.decode("utf-8")
    return r


def byte_level_alphabet():
    """The characters GPT-2's byte-level mapping gives the bytes 0..255, in byte order."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def read_tokens(path):
    with open(path, "rb") as f:
        data = f.read()
    header = struct.unpack("<256i", data[:1024])
    width = header[3]
    fmt = "<%d%s" % ((len(data) - 1024) // width, "H" if width == 2 else "I")
    return header, data, list(struct.unpack(fmt, data[1024:]))


def fnv1a(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def check_tokenizer(kind, tok, tmp, inputs, texts):
    path = os.path.join(tmp, kind + ".json")
    tok.save(path)
    out = os.path.join(tmp, kind + ".bin")
    r = run(RINGTRAIN, "prepare", "--tokenizer", path, *sum((["--input", p] for p in inputs), []), "--output", out)
    assert r.returncode == 0, r.stderr
    header, data, ids = read_tokens(out)
    eot = tok.token_to_id(EOT)
    with open(path, "rb") as f:
        json_bytes = f.read()
    assert header[6] == 1 and header[7] == eot + 1, header[:10]
    assert (header[8] & 0xFFFFFFFF | (header[9] & 0xFFFFFFFF) << 32) == fnv1a(json_bytes)
    assert data[512:1024].split(b"\0")[0].decode() == os.path.abspath(path)
    at = 0
    for i, text in enumerate(texts):
        want = tok.encode(text, add_special_tokens=False).ids
        got = ids[at:at + len(want)]
        if got != want:
            first = next((k for k in range(len(want)) if k >= len(got) or got[k] != want[k]), len(want))
            sys.exit("%s, %s: ids differ from tokenizers' at %d: ours %s, tokenizers %s (text %r)" % (
                kind, inputs[i], first, got[first:first + 8], want[first:first + 8],
                tok.decode(want[max(0, first - 3):first + 5], skip_special_tokens=False)))
        at += len(want)
        if i + 1 < len(texts):
            assert ids[at] == eot, "%s: no end-of-document id after %s" % (kind, inputs[i])
            at += 1
        ids_path = os.path.join(tmp, "ids")
        r = run(HELPER, "roundtrip", path, inputs[i], ids_path)
        assert r.returncode == 0, "%s, %s: %s" % (kind, inputs[i], r.stderr)
    assert at == len(ids)
    print("%s: %d ids over %d files equal tokenizers' and decode back" % (kind, len(ids), len(texts)))


def check_refused(tmp):
    corpus = ["hello world", "hello there world"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=50, special_tokens=["[UNK]"],
                                                                    show_progress=False))
    unigram = Tokenizer(models.Unigram())
    unigram.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=20, show_progress=False))
    text = os.path.join(tmp, "small.txt")
    with open(text, "w") as f:
        f.write("hello")
    for name, tok in (("WordPiece", wordpiece), ("Unigram", unigram)):
        path = os.path.join(tmp, name + ".json")
        tok.save(path)
        out = os.path.join(tmp, name + ".bin")
        r = run(RINGTRAIN, "prepare", "--tokenizer", path, "--input", text, "--output", out)
        want = "ringtrain: %s: model.type '%s': ringtrain implements byte-level BPE only\n" % (path, name)
        assert r.returncode == 1 and r.stderr == want, (r.returncode, r.stderr)
        assert not os.path.exists(out) and not os.path.exists(out + ".tmp")
    print("WordPiece and Unigram refused in one line")


def check_run_carries_tokenizer(tmp):
    """A run trained on a file prepared with a tokenizer: `sample` prints text through it, `export --hf` puts
    the same tokenizer.json beside the weights; once the file changes, both say so in one line and go on
    without it (ids; no tokenizer.json)."""
    tok_path, data = os.path.join(tmp, "gpt2.json"), os.path.join(tmp, "gpt2.bin")
    header, _, _ = read_tokens(data)
    run_dir = os.path.join(tmp, "run")
    r = run(RINGTRAIN, "train", "--set", "model.preset=tiny", "--set", "model.vocab_size=%d" % header[2], "--set",
            "data.train=" + data, "--set", "train.steps=2", "--set", "train.seq_len=64", "--set", "run.dir=" + run_dir)
    assert r.returncode == 0, r.stderr
    model = os.path.join(run_dir, "model.h5")
    r = run(RINGTRAIN, "sample", "--model", model, "--prompt", "The license", "--tokens", "3", "--temperature", "0")
    assert r.returncode == 0 and r.stdout.startswith("The license") and r.stderr == "", (r.stdout, r.stderr)
    # Bytes that form no character print as U+FFFD, as the tokenizers library decodes them: lone lead bytes
    # of a 3- and a 4-byte character, a stray continuation byte, and a 3-byte character cut short by ASCII.
    tok = Tokenizer.from_file(tok_path)
    byte = {b: tok.token_to_id(c) for b, c in zip(range(256), byte_level_alphabet())}
    ids = [byte[0xE2], byte[0x41], byte[0xF0], byte[0x80], byte[0xE2], byte[0x82], byte[0x42], byte[0xE2],
           byte[0x82], byte[0xAC]]
    r = run(RINGTRAIN, "sample", "--model", model, "--prompt-ids", ",".join(map(str, ids)), "--tokens", "1",
            "--temperature", "0")
    want = tok.decode(ids)
    assert want == "\ufffdA\ufffd\ufffd\ufffdB\u20ac", want
    assert r.returncode == 0 and r.stdout.startswith(want), (r.stdout, r.stderr)
    r = run(RINGTRAIN, "export", "--checkpoint", model, "--hf", os.path.join(tmp, "hf"))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    with open(tok_path, "rb") as a, open(os.path.join(tmp, "hf", "tokenizer.json"), "rb") as b:
        assert a.read() == b.read(), "export's tokenizer.json differs from the one prepare recorded"
    with open(tok_path, "a") as f:
        f.write(" ")
    r = run(RINGTRAIN, "sample", "--model", model, "--prompt-ids", "1,2", "--tokens", "2", "--temperature", "0")
    assert r.returncode == 0 and r.stderr.count("\n") == 1 and "has changed since" in r.stderr, r.stderr
    assert r.stdout.split()[:2] == ["1", "2"], r.stdout
    r = run(RINGTRAIN, "export", "--checkpoint", model, "--hf", os.path.join(tmp, "hf2"))
    assert r.returncode == 0 and r.stderr.count("\n") == 1 and "without tokenizer.json" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(tmp, "hf2", "tokenizer.json"))
    print("sample decodes through the recorded tokenizer; export copies it; a changed one is named and left out")


def main():
    rng = random.Random(1234)
    docs = repository_text()
    corpus = docs + "\n" + generated_text(rng, 200_000)
    with tempfile.TemporaryDirectory() as tmp:
        texts = [docs, generated_text(rng, 700_000), generated_text(rng, 300_000) + EOT + "tail",
                 "\r\n\t  \n" + EOT + EOT + " x"]
        inputs = []
        for i, t in enumerate(texts):
            inputs.append(os.path.join(tmp, "in%d.txt" % i))
            with open(inputs[-1], "w", encoding="utf-8", newline="") as f:
                f.write(t)
        assert sum(len(t.encode()) for t in texts) > 1_000_000
        for kind in ("gpt2", "llama3"):
            check_tokenizer(kind, train(kind, corpus), tmp, inputs, texts)
        check_refused(tmp)
        check_run_carries_tokenizer(tmp)


main()
