"""docs/tutorials and the deploy/loadtests READMEs stay true to the repository: links
resolve, the configs they run are valid, the commands they show exist, and the tutorials
keep the habits that spare a newcomer's first hour: one proxy per tutorial, never
restarted; edits go to a copy, never to a tracked file; every loop ends; locust's separate
install is said before it is used.

The outputs in the tutorials were captured from real runs (``tests/deploy/replay.py``);
these checks keep the commands around them from drifting (a renamed config, user class or
subcommand fails here). ``PYPROXY_REPLAY_TUTORIALS=1`` also replays every tutorial (a few
minutes; needs 127.0.0.1:8080, 9901, 8081, 8082 and 9411 free).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyproxy.config.load import load_config
from tests.deploy import replay
from tests.deploy.support import REPO

TUTORIALS = REPO / "docs" / "tutorials"
DOCS = [*sorted(TUTORIALS.glob("*.md")), REPO / "loadtests" / "README.md",
        REPO / "deploy" / "README.md", REPO / "deploy" / "compose" / "README.md",
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


TUTORIALS_RUN = sorted(doc for doc in TUTORIALS.glob("*.md") if doc.name != "README.md")
TRACKED = ("config/", "docs/", "loadtests/", "deploy/", "pyproxy/", "tests/")


def copied_configs(command: str) -> list[tuple[str, str]]:
    """(source, destination) of each ``cp`` in a command line."""
    return re.findall(r"(?:^|&&|;)\s*cp\s+([^\s;&|]+)\s+([^\s;&|]+)", command)


def test_configs_the_tutorials_run_are_valid():
    paths = set()
    for doc in DOCS:
        for command in commands(doc):
            paths.update(re.findall(r"(?:^|\s)-c\s+(\S+\.ya?ml)", command))
            paths.update(re.findall(r"pyproxy validate\s+(\S+\.ya?ml)", command))
            paths.update(source for source, _ in copied_configs(command)
                         if source.endswith((".yaml", ".yml")))
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


@pytest.mark.parametrize("doc", TUTORIALS_RUN, ids=lambda p: p.name)
def test_a_tutorial_starts_one_proxy_on_a_copy_and_never_restarts_it(doc):
    ran = commands(doc)
    runs = [c for c in ran if re.search(r"(?:^|[;&|]\s*)pyproxy run\b", c)]
    assert len(runs) == 1, f"{doc.name}: one `pyproxy run` per tutorial, not {runs}"
    config = re.search(r"-c\s+(\S+)", runs[0]).group(1)
    assert config.startswith("lab/"), f"{doc.name}: run on a copy in lab/, not {config}"
    assert "--access-log" in runs[0], f"{doc.name}: keep the access log off the terminal"
    kills = [i for i, c in enumerate(ran) if re.match(r"kill\b", c)]
    assert kills in ([], [len(ran) - 1]), f"{doc.name}: stop the proxy only at the end"


@pytest.mark.parametrize("doc", TUTORIALS_RUN, ids=lambda p: p.name)
def test_a_tutorial_edits_only_its_copies(doc):
    for command in commands(doc):
        targets = [dest for _, dest in copied_configs(command)]
        targets += re.findall(r"sed -i .* (\S+)$", command)
        targets += re.findall(r">\s*(\S+)", command.replace("2>&1", "").replace(">/dev/null", ""))
        for target in targets:
            assert not target.startswith(TRACKED), f"{doc.name}: edits {target}: {command}"


LOOP_DOCS = [*DOCS, REPO / "README.md", REPO / "docs" / "canary.md"]


@pytest.mark.parametrize("doc", LOOP_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_loop_ends(doc):
    for command in commands(doc):
        if re.search(r"while\s+(:|true)", command):
            assert re.search(r"\btimeout\s+\d+", command), f"{doc.name}: endless: {command}"


@pytest.mark.parametrize("doc", [*DOCS, REPO / "README.md"], ids=lambda p: str(p.relative_to(REPO)))
def test_locust_install_is_said_before_it_is_used(doc):
    text = doc.read_text()
    used = [text.find(c) for c in commands(doc) if c.startswith("locust ")]
    if not used:
        return
    assert "pip install -e '.[load]'" in text[:min(used)], \
        f"{doc.name}: say `pip install -e '.[load]'` before the first locust command"


@pytest.mark.parametrize("doc", TUTORIALS_RUN, ids=lambda p: p.name)
def test_set_weight_names_backends_of_the_config_the_proxy_runs(doc):
    """``pyproxy set-weight ROUTE BACKEND=W``: the backend is in the route of the config
    last copied into the proxy's directory, at any weight (0 included)."""
    running = None
    for command in commands(doc):
        for source, _ in copied_configs(command):
            running = load_config([str(REPO / source)]).config
        words = command.split()
        if words[:2] != ["pyproxy", "set-weight"] or "--clear" in words:
            continue
        assert running is not None, command
        route = next(r for r in running.routes if r.name == words[2])
        backends = {f"{b.service}/{b.subset}" if b.subset else b.service for b in route.backends}
        named = {w.split("=")[0] for w in words[3:] if "=" in w}
        assert named <= backends, f"{doc.name}: {command}: the route has {sorted(backends)}"


@pytest.mark.skipif(os.environ.get("PYPROXY_REPLAY_TUTORIALS") != "1",
                    reason="replays take minutes and the fixed ports; PYPROXY_REPLAY_TUTORIALS=1")
@pytest.mark.parametrize("doc", TUTORIALS_RUN, ids=lambda p: p.name)
def test_the_tutorial_replays_as_written(doc):
    assert not replay.ports_in_use(), "the tutorials' ports are taken"
    ran = replay.replay(doc)
    failed = [(step.command, step.status, step.output) for step in ran
              if step.status != 0 and not replay.expected_failure(step)]
    assert not failed, failed
