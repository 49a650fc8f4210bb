"""The repository stands alone: nothing it tracks points at files outside it.

A reader who clones pyproxy gets every document a comment, a doc or a test refers to. So no
tracked text file may name a path above the repository root, cite a contract or design
document kept elsewhere, or hard-code the absolute path of a particular machine's checkout;
and every relative link in the README and ``docs/`` must lead to a file that exists.

The patterns are assembled from pieces so that this file does not match itself.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# `../x` starting a path (not the middle of one such as `/public/../admin`, which tests send
# as request targets); it counts only if it leaves the repository from the file's directory.
PARENT_PATH = re.compile(r"(?<![\w./%\\-])((?:\.\./)+[^\s()\[\]{}<>'\"`,;*|]*)")
# Named outright, wherever they appear: documents that live outside this repository.
FORBIDDEN = [
    (re.compile(re.escape("../" + "shared")), "names a directory outside the repository"),
    (re.compile("SPEC" + r"\s*§"), "cites an outside contract: link the docs/ page instead"),
    (re.compile(re.escape("ARCHITECTURE" + ".md")),
     "names an outside design note: the repository's own is docs/architecture.md"),
    (re.compile(r"(?<![\w.~-])/" + "work" + r"/"),
     "an absolute path on one machine: use a path relative to the repository"),
]
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
MARKDOWN_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.IGNORECASE)


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [ROOT / name for name in out.decode().split("\0") if name]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary (or missing) file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _inside(path: Path) -> bool:
    resolved = Path(os.path.normpath(path))
    return resolved == ROOT or ROOT in resolved.parents


def _outside_pointers(path: Path, text: str) -> list[str]:
    rel = path.relative_to(ROOT)
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        reasons = [f"{match.group(1)!r} leads outside the repository"
                   for match in PARENT_PATH.finditer(line)
                   if not _inside(path.parent / match.group(1))]
        reasons += [why for pattern, why in FORBIDDEN if pattern.search(line)]
        if reasons:
            found.append(f"{rel}:{number}: {'; '.join(dict.fromkeys(reasons))}: "
                         f"{line.strip()[:100]}")
    return found


def _markdown_documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _without_code_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks: a link inside one is an example."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, re.sub(r"`[^`]*`", "", line)))
    return lines


def test_no_tracked_file_points_outside_the_repository():
    offenders = []
    for path in _tracked_files():
        text = _text(path)
        if text is not None:
            offenders += _outside_pointers(path, text)
    if offenders:
        pytest.fail("files that point outside the repository (file:line):\n  "
                    + "\n  ".join(offenders), pytrace=False)


def test_relative_links_in_the_docs_resolve():
    broken = []
    for doc in _markdown_documents():
        text = _text(doc)
        if text is None:
            continue
        for number, line in _without_code_blocks(text):
            for match in MARKDOWN_LINK.finditer(line):
                target = match.group(1)
                if EXTERNAL.match(target):
                    continue
                file_part = target.split("#", 1)[0].split("?", 1)[0]
                if not file_part:
                    continue
                resolved = doc.parent / file_part
                if not _inside(resolved) or not resolved.exists():
                    broken.append(f"{doc.relative_to(ROOT)}:{number}: {target}")
    if broken:
        pytest.fail("relative links that lead nowhere (file:line):\n  " + "\n  ".join(broken),
                    pytrace=False)


@pytest.mark.parametrize(("line", "points_outside"), [
    ("see [the spec](" + "../" * 3 + "outside.md)", True),
    ("see [the docs](../../docs/cli.md)", False),
    ("GET /public/../admin HTTP/1.1", False),
    ("x = '../pyproxy/cli.py'", False),  # from tests/unit: still inside the repository
    ("the " + "SPEC" + " §3 table", True),
    ("see " + "ARCHITECTURE" + ".md", True),
    ("see docs/architecture.md", False),
    ("written to " + "/work" + "/main/x", True),
    ("a framework/ directory", False),
])
def test_the_checks_catch_what_they_should(line, points_outside):
    here = ROOT / "tests" / "unit" / "example.md"
    assert bool(_outside_pointers(here, line)) is points_outside
