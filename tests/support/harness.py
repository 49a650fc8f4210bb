"""Run pyproxy for tests: in-process (fast, seeded RNG, direct reloads) or as a real
``pyproxy run`` subprocess (signals, file reloads, RSS)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from pyproxy.access_log import AccessLog
from pyproxy.config.model import Config, Endpoint, Service
from pyproxy.engine.server import Listener
from pyproxy.metrics.exposition import render_metrics
from pyproxy.metrics.stats import Stats
from pyproxy.proxy import Proxy
from pyproxy.runtime import Runtime
from tests.support.backends import free_port
from tests.support.metrics import metric_value
from tests.support.processes import stop_process, wait_until


class HasPort(Protocol):
    port: int


def service(name: str, *backends: HasPort | tuple[HasPort, Mapping[str, str]],
            subsets: Mapping[str, Mapping[str, str]] | None = None,
            **policies: Any) -> Service:
    """A Service over running test backends; ``(backend, {labels})`` pairs set labels."""
    endpoints = []
    for item in backends:
        backend, labels = item if isinstance(item, tuple) else (item, {})
        endpoints.append(Endpoint("127.0.0.1", backend.port, labels))
    return Service(name, tuple(endpoints), subsets=subsets or {}, **policies)


class InProcessProxy:
    """The real pipeline and engine on a loopback port, in the test's event loop."""

    def __init__(self, config: Config, seed: int = 1):
        self.config = config
        self.runtime = Runtime()
        self.stats = Stats()
        self.rng = random.Random(seed)
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> InProcessProxy:
        self.runtime.swap(self.runtime.compile(self.config))
        self.stats.weights_provider = self.runtime.backend_weights
        self.stats.ejections_provider = self.runtime.ejections
        proxy = Proxy(self.runtime, self.stats, AccessLog("off"), rng=self.rng)
        self.listener = Listener(proxy.handle, timeouts=self.config.timeouts,
                                 limits=self.config.limits, serve_now=proxy.serve_now)
        self.listener.on_reject = self.stats.record_rejected
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.listener.protocol_factory, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats_value(self, metric: str, **labels: str) -> float:
        """Sum of the samples of ``metric`` whose labels include ``labels``, read from the
        rendered Prometheus text through prometheus_client's own parser."""
        return metric_value(render_metrics(self.stats)[0].decode(), metric, **labels)

    def reload(self, config: Config) -> None:
        self.config = config
        self.runtime.swap(self.runtime.compile(config))
        self.listener.timeouts = config.timeouts
        self.listener.limits = config.limits

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.listener.connections):
                conn.close()
        await self.runtime.aclose()


class ProxyProcess:
    """``python -m pyproxy run`` on free ports; waits for /readyz (with ``workers`` > 1, until
    the leader's /metrics counts every worker up)."""

    def __init__(self, *config_paths: str | Path, env: dict[str, str] | None = None,
                 stdout: Path | None = None, workers: int = 1,
                 extra_args: tuple[str | Path, ...] = ()):
        self.config_paths = [str(p) for p in config_paths]
        self.stdout = stdout  # where the access log goes (default: discarded)
        self.workers = workers
        self.extra_args = [str(a) for a in extra_args]  # e.g. ("--state-dir", path)
        self.port = free_port()
        self.admin_port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 15.0) -> ProxyProcess:
        args = [sys.executable, "-m", "pyproxy", "run"]
        for path in self.config_paths:
            args += ["-c", path]
        args += ["--listen", f"127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{self.admin_port}"]
        if self.workers != 1:
            args += ["--workers", str(self.workers)]
        args += self.extra_args
        out = open(self.stdout, "wb") if self.stdout else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.PIPE)
        try:
            wait_until(self._ready, "pyproxy became ready", timeout, self.proc)
        except AssertionError:
            # RuntimeError, with pyproxy's own words when it exited: callers retry on it
            # (a free port taken by another process in the meantime).
            if self.proc.poll() is not None:
                raise RuntimeError(f"pyproxy exited {self.proc.returncode}: "
                                   f"{self.stderr_text()}") from None
            self.stop()
            raise RuntimeError("pyproxy did not become ready") from None
        return self

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.admin_url}/readyz", timeout=0.5) as r:
            if r.status != 200:
                return False
        if self.workers == 1:
            return True
        with urllib.request.urlopen(f"{self.admin_url}/metrics", timeout=2) as r:
            text = r.read().decode()
        return metric_value(text, "pyproxy_workers", state="up") == self.workers

    def peak_rss_mib(self) -> float:
        return self._status_mib("VmHWM")

    def rss_mib(self) -> float:
        return self._status_mib("VmRSS")

    def _status_mib(self, field: str) -> float:
        """A memory line of /proc/PID/status (reported in KiB), in MiB."""
        assert self.proc is not None, "not started"
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """SIGINT (no drain delay) by default; pass SIGTERM to test the orchestrator drain."""
        return stop_process(self.proc, sig, timeout) if self.proc else 0

    def stderr_text(self) -> str:
        return self.proc.stderr.read().decode() if self.proc and self.proc.stderr else ""


async def fetch(session: aiohttp.ClientSession, url: str,
                **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with session.request(kwargs.pop("method", "GET"), url, **kwargs) as response:
        return response.status, dict(response.headers), await response.read()
