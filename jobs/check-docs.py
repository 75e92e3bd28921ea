#!/usr/bin/env python3
"""Fails when a document names a repository path that does not exist.

Usage: jobs/check-docs.py [--plant DOC=PATH ...]

Every *.md file of the repository (tracked, or new and not ignored) is read. The candidates are the targets of
markdown links, [text](target) and [text]: target, and the words of `code spans` and fenced code blocks.
A link target resolves beside the document (as a markdown viewer resolves it); a word in code resolves from the
repository root, or beside the document. A target must be a file or a folder of the repository; an anchor
(docs/operations.md#resume, or #resume alone) must name a heading of that markdown file.

Not checked: URLs; absolute paths (/usr/..., /tmp/..., HDF5 paths such as /model/wte); paths git ignores
(build*/, runs/, data/, gpu-bundle/, *.tmp: generated outputs); the files a run writes (metrics.jsonl,
config.ini, model.h5, checkpoints/..., step_N.h5, latest); words with shell or template syntax (* ? $ < > { }
%, ...); and words that do not look like paths: a word without a slash counts only when it ends in a source
extension (.c, .h, .cu, .py, .sh, .md, ...), and then it must be the name of some file of the repository.

--plant DOC=PATH adds a link to PATH at the end of DOC for this check only, so the check can be shown to fail.
Prints one line per dangling reference (document:line: path) and exits 1 when there is any.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# A word without a slash is a path only with one of these endings; a word with a slash needs none.
SOURCE_EXT = re.compile(r"^[\w+-][\w.+-]*\.(c|h|cu|cuh|py|sh|md|sbatch|cmake|supp|ini|txt)$")
# Bare names with a source ending that are not this repository's: a user's own files in examples, and other
# projects' names (llm.c and its train_gpt2.c).
BARE_NOT_REPO = {"my.ini", "a.txt", "b.txt", "hosts.txt", "before.txt", "after.txt", "llm.c", "train_gpt2.c"}
# In prose, outside code and links, a word naming a markdown file is checked too (README.md, docs/x.md).
PROSE_MD = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-][\w.-]*\.md)(#[\w-]+)?(?![\w/])")
# What runs write (ignored wherever it appears in a path).
GENERATED = re.compile(r"(^|/)(metrics\.jsonl|config\.ini|model\.h5|latest|checkpoints(/.*)?|step_\d+\.h5(\.tmp)?)$")
NOT_A_PATH = re.compile(r"[*?$<>{}%|\\`\[\]()@\"',;]|\.\.\.|^-|^~|^\.\./|//")
URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(\s|$)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
FENCE = re.compile(r"^\s{0,3}(```+|~~~+)")


def git_files():
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    files = {f for f in listed if f and os.path.lexists(os.path.join(ROOT, f))}
    folders = set()
    for f in files:
        parts = f.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folders.add("/".join(parts[:i]))
    return files, folders


def ignored(path):
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text):
    found, seen, fenced = set(), {}, None
    for line in text.split("\n"):
        fence = FENCE.match(line)
        if fence:
            fenced = None if fenced and fence.group(1)[0] == fenced else (fenced or fence.group(1)[0])
            continue
        if fenced:
            continue
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def candidates(text):
    """(line number, word, kind): kind 'link' resolves beside the document, 'code' from the root first."""
    fenced = None
    for number, line in enumerate(text.split("\n"), 1):
        fence = FENCE.match(line)
        if fence:
            fenced = None if fenced and fence.group(1)[0] == fenced else (fenced or fence.group(1)[0])
            continue
        if fenced:
            # a comment after `#` in a code block is prose
            for word in re.split(r"\s+", re.sub(r"(^|\s)#.*$", "", line)):
                yield number, word, "code"
            continue
        for m in LINK.finditer(line):
            yield number, m.group(1), "link"
        for m in IMAGE.finditer(line):
            yield number, m.group(1), "link"
        m = REF_DEF.match(line)
        if m:
            yield number, m.group(1), "link"
        for m in CODE_SPAN.finditer(line):
            for word in m.group(2).split():
                yield number, word, "code"
        prose = CODE_SPAN.sub(" ", LINK.sub(lambda m: " " + m.group(0)[1:m.group(0).index("](")] + " ", line))
        for m in PROSE_MD.finditer(prose):
            yield number, m.group(1), "code"


def clean(word):
    """The path inside a word of code: --opt=PATH and KEY=PATH give PATH; quotes and closing punctuation go."""
    word = word.strip()
    if "=" in word:
        word = word.rsplit("=", 1)[1]
    word = word.strip("\"'")
    word = re.sub(r"[.,;:)]+$", "", word)
    word = re.sub(r":\d+$", "", word)  # path:line
    return word


def check(doc, text, files, folders, docs_anchors):
    problems = []
    top = {f.split("/")[0] for f in files}
    doc_dir = os.path.dirname(doc)
    for number, word, kind in candidates(text):
        target = word if kind == "link" else clean(word)
        if not target or URL.match(target):
            continue
        path, _, anchor = target.partition("#")
        if kind == "code" and anchor:
            continue  # `#` in code is a comment or a number, not an anchor
        if not path:  # [x](#anchor) in the same document
            if anchor and anchor not in docs_anchors(doc):
                problems.append(f"{doc}:{number}: #{anchor} (no such heading)")
            continue
        if path.startswith("/") or NOT_A_PATH.search(path):
            continue
        if kind == "code" and "/" not in path.rstrip("/"):
            if not SOURCE_EXT.search(path) or path in BARE_NOT_REPO or GENERATED.search(path):
                continue
            if not any(f == path or f.endswith("/" + path) for f in files):
                problems.append(f"{doc}:{number}: {path} (no file of that name)")
            continue
        if kind == "code" and not re.match(r"^[\w.+-]+(/[\w.+-]*)*$", path):
            continue  # not path-shaped: an expression, an option
        looks_like_path = path.split("/")[0] in top or path.endswith("/") or SOURCE_EXT.search(os.path.basename(path))
        if kind == "code" and not looks_like_path:
            continue  # tok/s, forward/backward, proctrack/linuxproc: a word with a slash, not a path
        if GENERATED.search(path.rstrip("/")):
            continue
        roots = [os.path.normpath(os.path.join(doc_dir, path))]
        if kind == "code":
            roots.insert(0, os.path.normpath(path))
        found = next((p for p in roots if p in files or p in folders), None)
        if found is None:
            slash = "/" if path.endswith("/") else ""
            if any(ignored(p + slash) for p in roots):
                continue
            problems.append(f"{doc}:{number}: {path} (no such file or folder)")
            continue
        if anchor and found.endswith(".md") and anchor not in docs_anchors(found):
            problems.append(f"{doc}:{number}: {path}#{anchor} (no such heading in {found})")
    return problems


def main(argv):
    planted = {}
    args = argv[1:]
    while args:
        if args[0] == "--plant" and len(args) > 1 and "=" in args[1]:
            doc, path = args[1].split("=", 1)
            planted.setdefault(doc, []).append(path)
            args = args[2:]
        else:
            print(__doc__, file=sys.stderr)
            return 2
    files, folders = git_files()
    docs = sorted(f for f in files if f.endswith(".md"))
    for doc in planted:
        if doc not in docs:
            print(f"check-docs: --plant {doc}: no such document", file=sys.stderr)
            return 2
    texts = {}

    def text_of(doc):
        if doc not in texts:
            with open(os.path.join(ROOT, doc), encoding="utf-8", errors="replace") as f:
                texts[doc] = f.read()
            for path in planted.get(doc, []):
                texts[doc] += f"\n[planted]({path})\n"
        return texts[doc]

    cached_anchors = {}

    def docs_anchors(doc):
        if doc not in cached_anchors:
            cached_anchors[doc] = anchors(text_of(doc))
        return cached_anchors[doc]

    problems = []
    for doc in docs:
        problems += check(doc, text_of(doc), files, folders, docs_anchors)
    problems = list(dict.fromkeys(problems))
    for p in problems:
        print(p)
    print(f"check-docs: {len(docs)} documents, {len(problems)} dangling reference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
