"""docs/tutorials and the deploy/loadtests READMEs stay true to the repository: links
resolve, the configs they run are valid, the commands they show exist.

The outputs in the tutorials were captured from real runs; these checks keep the commands
around them from drifting (a renamed config, user class or subcommand fails here).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.support import REPO

TUTORIALS = REPO / "docs" / "tutorials"
DOCS = sorted(TUTORIALS.glob("*.md")) + [REPO / "loadtests" / "README.md",
                                         REPO / "deploy" / "README.md",
                                         REPO / "deploy" / "compose" / "README.md",
                                         REPO / "deploy" / "kubernetes" / "README.md"]


def commands(doc: Path) -> list[str]:
    """Shell commands in the doc's code blocks (``$ cmd`` lines, and lines of sh blocks)."""
    found = []
    for block in re.findall(r"```(\w*)\n(.*?)```", doc.read_text(), re.S):
        language, body = block
        for line in body.splitlines():
            if line.startswith("$ "):
                found.append(line[2:])
            elif language == "sh" and line and not line.startswith(("#", " ")):
                found.append(line)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
        if "://" in target:
            continue
        assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_every_tutorial_is_indexed():
    index = (TUTORIALS / "README.md").read_text()
    for doc in TUTORIALS.glob("*.md"):
        if doc.name != "README.md":
            assert f"({doc.name})" in index, doc.name


def test_configs_the_tutorials_run_are_valid():
    paths = set()
    for doc in DOCS:
        for command in commands(doc):
            paths.update(re.findall(r"(?:^|\s)-c\s+(\S+\.ya?ml)", command))
            paths.update(re.findall(r"pyproxy validate\s+(\S+\.ya?ml)", command))
    paths = {p for p in paths if not p.startswith("/")}  # /tmp copies are made in the doc
    paths |= {str(p.relative_to(REPO)) for p in (TUTORIALS / "configs").glob("*.yaml")}
    assert "config/canary-90-10.yaml" in paths
    for path in sorted(paths):
        result = subprocess.run([sys.executable, "-m", "pyproxy", "validate", "--json",
                                 str(REPO / path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{path}: {result.stdout}{result.stderr}"
        assert json.loads(result.stdout)["warnings"] == [], f"{path}: {result.stdout}"


def test_locust_commands_name_real_user_classes_and_files():
    tree = ast.parse((REPO / "loadtests" / "locustfile.py").read_text())
    users = {node.name for node in tree.body if isinstance(node, ast.ClassDef)
             and not any(isinstance(s, ast.Assign) and any(getattr(t, "id", "") == "abstract"
                                                           for t in s.targets)
                         for s in node.body)}
    assert {"CanaryUser", "TesterUser", "StickyUser", "StorefrontUser"} <= users
    seen = 0
    for doc in DOCS:
        for command in commands(doc):
            if not command.startswith("locust "):
                continue
            seen += 1
            words = command.split()
            locustfile = words[words.index("-f") + 1]
            assert (REPO / locustfile).is_file(), command
            named = [w for w in words if re.fullmatch(r"[A-Z]\w+User", w)]
            assert named and set(named) <= users, command
    assert seen >= 5


def test_pyproxy_subcommands_in_the_docs_exist():
    help_text = subprocess.run([sys.executable, "-m", "pyproxy", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    available = set(re.findall(r"^    ([a-z][\w-]*)", help_text, re.M))
    assert {"run", "validate", "status", "set-weight", "fault"} <= available
    for doc in DOCS:
        for command in commands(doc):
            for sub in re.findall(r"(?:^|[;&|(]\s*)pyproxy ([a-z][\w-]*)", command):
                assert sub in available, f"{doc.name}: pyproxy {sub} ({command})"
