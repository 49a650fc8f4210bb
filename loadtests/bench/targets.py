"""What each target is, its config and how it starts; the origin behind all of them, and the
scenarios (load shapes) run against each.

The origin (nginx, one process, on the load core) answers `ok\\n` at `/` and serves static
4 KiB and 1 MiB files, on two ports (the second is the canary "service" of pyproxy's split).
Each target runs alone on the proxy core, started only for its own run and stopped after it.
Configs are the templates in configs/, filled with this run's ports (string.Template).
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from common import CONFIG_TEMPLATES, LOAD_CPU, PROXY_CPU, VENV_PY, require
from processes import Procs


@dataclass(frozen=True)
class Target:
    label: str
    template: str | None  # the config template in configs/; None: no config (direct)
    tool: str | None  # the tool ensure_tools must have found; None: nothing to install


# In report order; rounds visit them forward in odd rounds and backward in even ones.
TARGETS: dict[str, Target] = {
    "direct": Target("direct (wrk → origin)", None, None),
    "nginx": Target("nginx, 1 worker", "proxy-nginx.conf.tmpl", "nginx"),
    "haproxy": Target("HAProxy, nbthread 1", "haproxy.cfg.tmpl", "haproxy"),
    "envoy": Target("Envoy, concurrency 1", "envoy.yaml.tmpl", "envoy"),
    "pyproxy_a": Target("pyproxy (a) plain route", "pyproxy-a.yaml.tmpl", None),
    "pyproxy_b": Target("pyproxy (b) split+match+fault", "pyproxy-b.yaml.tmpl", None),
    "pyproxy_c": Target("pyproxy (c) = (b)+sticky+retries+outlier", "pyproxy-c.yaml.tmpl", None),
}
ORIGIN_TEMPLATE = "origin-nginx.conf.tmpl"
# What the origin serves: path -> body bytes; every target must pass each through unchanged.
BODIES = {"/": 3, "/4k": 4096, "/1m": 1 << 20}
# The load of a run, by name: (wrk connections, path, expected body bytes, description)
SCENARIOS: dict[str, tuple[int, str, int, str]] = {
    "c50_3b": (50, "/", 3, "c=50, 3 B body"),
    "c50_4k": (50, "/4k", 4096, "c=50, 4 KiB body"),
    "c1_3b": (1, "/", 3, "c=1, 3 B body"),
    "c4_1m": (4, "/1m", 1 << 20, "c=4, 1 MiB body"),
}



def free_ports(n: int) -> list[int]:
    """n ports that are free now, outside the ephemeral range (so no outgoing connection of a
    later run can be sitting on a port a target wants to listen on)."""
    ports: list[int] = []
    base = int(os.environ.get("BENCH_PORT_BASE", "0")) or random.randrange(20000, 29000, 10)
    p = base
    while len(ports) < n:
        if p > 31999:
            p = 20000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                ports.append(p)
            except OSError:
                pass
        p += 1
    return ports


class Layout:
    """The ports of one bench run: the origin's two, and each target's (plus pyproxy's admin)."""

    def __init__(self, run: Path):
        self.run = run
        proxies = [t for t in TARGETS if t != "direct"]  # direct is the origin's own port
        with_admin = [t for t in proxies if t.startswith("pyproxy")]
        ports = iter(free_ports(2 + len(proxies) + len(with_admin)))
        self.origin_p1, self.origin_p2 = next(ports), next(ports)
        self._port = {"direct": self.origin_p1}
        self._admin: dict[str, int] = {}
        for t in proxies:
            self._port[t] = next(ports)
            if t in with_admin:
                self._admin[t] = next(ports)

    def port(self, target: str) -> int:
        return self._port[target]

    def admin_port(self, target: str) -> int | None:
        return self._admin.get(target)


def render_config(template: str, values: dict[str, int]) -> str:
    return Template((CONFIG_TEMPLATES / template).read_text()).substitute(values)


def write_configs(layout: Layout) -> dict[str, Path]:
    """Fill every template for this run's ports into run/conf/; the path of each, by target
    name (and "origin"). Also lays out the origin's files and the nginx prefix directories."""
    run = layout.run
    for d in ("origin/tmp", "origin/www", "nginx/tmp", "conf", "logs"):
        (run / d).mkdir(parents=True, exist_ok=True)
    (run / "origin/www/4k").write_bytes(b"x" * 4096)
    (run / "origin/www/1m").write_bytes(b"y" * (1 << 20))
    origin = {"origin_port": layout.origin_p1, "origin_port2": layout.origin_p2}
    written: dict[str, Path] = {}
    jobs: list[tuple[str, str, dict[str, int]]] = [("origin", ORIGIN_TEMPLATE, origin)]
    for name, target in TARGETS.items():
        if target.template is not None:
            values = dict(origin, port=layout.port(name))
            admin = layout.admin_port(name)
            if admin is not None:
                values["admin_port"] = admin
            jobs.append((name, target.template, values))
    for name, template, values in jobs:
        path = run / "conf" / template.removesuffix(".tmpl")
        path.write_text(render_config(template, values))
        written[name] = path
    return written


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, int]:
    """(status, body bytes) of GET path on 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, len(r.read())
    finally:
        conn.close()


class Targets:
    """Starts and stops the origin and the targets of one bench run, each on its core."""

    def __init__(self, tools: dict[str, dict[str, Any]], run: Path):
        self.tools = tools
        self.L = Layout(run)
        self.cfg = write_configs(self.L)
        self.procs = Procs(run / "logs")
        self.origin_pid: int | None = None

    def wait_ready(self, port: int, proc: subprocess.Popen[bytes] | None,
                   limit: float = 30.0) -> None:
        t0 = time.monotonic()
        last = ""
        while time.monotonic() - t0 < limit:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"exited with code {proc.returncode} before answering")
            try:
                st, _ = http_get(port, "/", timeout=2)
                if st == 200:
                    return
                last = f"status {st}"
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise RuntimeError(f"no 200 on port {port} within {limit:.0f}s ({last})")

    def start_origin(self) -> None:
        run = self.L.run
        p = self.procs.start("origin", [require("nginx"), "-e", "stderr",
                                        "-p", str(run / "origin") + "/",
                                        "-c", str(self.cfg["origin"])], LOAD_CPU)
        self.wait_ready(self.L.origin_p1, p)
        self.wait_ready(self.L.origin_p2, p)
        for path, size in BODIES.items():
            st, n = http_get(self.L.origin_p1, path)
            if (st, n) != (200, size):
                raise RuntimeError(f"origin {path}: status {st}, {n} bytes (want 200, {size})")
        self.origin_pid = p.pid

    def argv(self, t: str) -> list[str]:
        cfg = str(self.cfg[t])
        if t == "nginx":
            return [require("nginx"), "-e", "stderr", "-p", str(self.L.run / "nginx") + "/",
                    "-c", cfg]
        if t == "haproxy":
            return [require("haproxy"), "-db", "-f", cfg]
        if t == "envoy":
            return [self.tools["envoy"]["path"], "-c", cfg, "--concurrency", "1",
                    "--disable-hot-restart", "-l", "warn"]
        return [str(VENV_PY), "-m", "pyproxy", "run", "-c", cfg]

    def start_target(self, t: str) -> int | None:
        """Start t alone on the proxy core, wait for it and check every body; its pid
        (None = direct, nothing to start)."""
        if t == "direct":
            return None
        p = self.procs.start(t, self.argv(t), PROXY_CPU, cwd=self.L.run)
        port = self.L.port(t)
        try:
            self.wait_ready(port, p)
            for path, size in BODIES.items():
                st, n = http_get(port, path, timeout=10)
                if (st, n) != (200, size):
                    raise RuntimeError(f"{path}: status {st}, {n} bytes (want 200, {size})")
        except Exception:
            self.procs.stop(t)
            raise
        return p.pid

    def stop_target(self, t: str) -> None:
        self.procs.stop(t)
