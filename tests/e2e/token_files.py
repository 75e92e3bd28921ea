"""token_files.py: ringtrain's token file (io/tokens.h) written from Python, for the end-to-end drivers."""
import numpy as np


def write_tokens(path, tokens, vocab):
    """A 1024-byte header (magic, version, vocabulary, 2 bytes a token, the count in two halves), then uint16
    tokens."""
    header = np.zeros(256, dtype="<i4")
    header[:6] = [20261122, 1, vocab, 2, len(tokens) & 0xFFFFFFFF, len(tokens) >> 32]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())
