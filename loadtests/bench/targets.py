"""What each target is, its config and how it starts; the origin behind all of them, and the
scenarios (load shapes) run against each.

The origin (nginx, one process, on the load core) answers `ok\\n` at `/` (and at any other
path but the two files) and serves static 4 KiB and 1 MiB files, on two ports (the second is
the canary "service" of pyproxy's split). Each target runs alone on the proxy core, started
only for its own run and stopped after it. Configs are the templates in configs/, filled with
this run's ports (string.Template); the 1,000 routes of the /metrics measurement are generated.
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
    # Its stdout (pyproxy's access log) goes to access/<name>.log in the run directory, apart
    # from the process log, measured after each run and deleted.
    access_log: bool = False
    # Measured only by its own measurement (metrics_scrape), never in the rounds.
    in_rounds: bool = True


# In report order; rounds visit them forward in odd rounds and backward in even ones.
TARGETS: dict[str, Target] = {
    "direct": Target("direct (wrk → origin)", None, None),
    "nginx": Target("nginx, 1 worker", "proxy-nginx.conf.tmpl", "nginx"),
    "haproxy": Target("HAProxy, nbthread 1", "haproxy.cfg.tmpl", "haproxy"),
    "envoy": Target("Envoy, concurrency 1", "envoy.yaml.tmpl", "envoy"),
    "pyproxy_a": Target("pyproxy (a) plain route", "pyproxy-a.yaml.tmpl", None),
    "pyproxy_b": Target("pyproxy (b) split+match+fault", "pyproxy-b.yaml.tmpl", None),
    # Next to (b), so the two are neighbours in every round: the default config, log on.
    "pyproxy_b_log": Target("pyproxy (b) + access log (JSON, to a file)",
                            "pyproxy-b-log.yaml.tmpl", None, access_log=True),
    "pyproxy_c": Target("pyproxy (c) = (b)+sticky+retries+outlier", "pyproxy-c.yaml.tmpl", None),
    "pyproxy_1k": Target("pyproxy, 1,000 routes", "pyproxy-1k-routes.yaml.tmpl", None,
                         in_rounds=False),
}
ROUND_TARGETS = [t for t, target in TARGETS.items() if target.in_rounds]
ORIGIN_TEMPLATE = "origin-nginx.conf.tmpl"
# What the origin serves: path -> body bytes; every target must pass each through unchanged.
BODIES = {"/": 3, "/4k": 4096, "/1m": 1 << 20}


@dataclass(frozen=True)
class Scenario:
    """The load of a run: wrk connections, the path and the body bytes it must get back."""

    conns: int
    path: str
    body: int
    title: str
    # Only these targets (those of them selected); None: every selected target.
    targets: tuple[str, ...] | None = None
    # A scale check (T7): its runs count for the scenario's own table and check, not for the
    # target's peak RSS, which the 40 MiB target states at the ordinary loads.
    scale: bool = False


SCENARIOS: dict[str, Scenario] = {
    "c50_3b": Scenario(50, "/", 3, "c=50, 3 B body"),
    "c50_4k": Scenario(50, "/4k", 4096, "c=50, 4 KiB body"),
    "c1_3b": Scenario(1, "/", 3, "c=1, 3 B body"),
    "c4_1m": Scenario(4, "/1m", 1 << 20, "c=4, 1 MiB body"),
    # T7: 800 keep-alive connections at steady load; nginx and Envoy for comparison.
    "c800_3b": Scenario(800, "/", 3, "c=800 keep-alive, 3 B body",
                        ("nginx", "envoy", "pyproxy_b"), scale=True),
}
# Measurements of their own, selected with --scenarios like the scenarios above.
METRICS_SCRAPE = "metrics_scrape"  # T19: /metrics under load with 1,000 routes (metrics_scrape.py)
ALL_SCENARIOS = [*SCENARIOS, METRICS_SCRAPE]

# The 1,000-route config of metrics_scrape: route i matches the path prefix /rNNNN/, and every
# TRAFFIC_STEP-th route gets traffic (334 of them, spread over the whole list).
ROUTE_COUNT = 1000
TRAFFIC_STEP = 3


def route_path(i: int) -> str:
    return f"/r{i:04d}/"


def traffic_paths() -> list[str]:
    """The request paths wrk rotates over in metrics_scrape, one per route that gets traffic."""
    return [route_path(i) + "x" for i in range(0, ROUTE_COUNT, TRAFFIC_STEP)]


def generated_routes() -> str:
    """ROUTE_COUNT path-prefix routes, each a 90/10 split over the two services (so each route
    with traffic has series for two backends), as YAML list items."""
    return "\n".join(
        f"  - {{name: r{i:04d}, match: [{{path: {{prefix: {route_path(i)}}}}}], backends: "
        "[{service: stable, weight: 90}, {service: canary, weight: 10}]}"
        for i in range(ROUTE_COUNT))



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


def render_config(template: str, values: dict[str, int | str]) -> str:
    return Template((CONFIG_TEMPLATES / template).read_text()).substitute(values)


def write_configs(layout: Layout) -> dict[str, Path]:
    """Fill every template for this run's ports into run/conf/; the path of each, by target
    name (and "origin"). Also lays out the origin's files and the nginx prefix directories."""
    run = layout.run
    for d in ("origin/tmp", "origin/www", "nginx/tmp", "conf", "logs", "access"):
        (run / d).mkdir(parents=True, exist_ok=True)
    (run / "origin/www/4k").write_bytes(b"x" * 4096)
    (run / "origin/www/1m").write_bytes(b"y" * (1 << 20))
    origin: dict[str, int | str] = {"origin_port": layout.origin_p1,
                                    "origin_port2": layout.origin_p2}
    written: dict[str, Path] = {}
    jobs: list[tuple[str, str, dict[str, int | str]]] = [("origin", ORIGIN_TEMPLATE, origin)]
    for name, target in TARGETS.items():
        if target.template is not None:
            values: dict[str, int | str] = dict(origin, port=layout.port(name))
            if name == "pyproxy_1k":
                values["routes"] = generated_routes()
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
        stdout = self.access_log(t) if TARGETS[t].access_log else None
        p = self.procs.start(t, self.argv(t), PROXY_CPU, cwd=self.L.run, stdout=stdout)
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

    def access_log(self, t: str) -> Path:
        """Where t's access log (its stdout) goes during a run."""
        return self.L.run / "access" / f"{t}.log"

    def take_access_log(self, t: str) -> dict[str, int] | None:
        """Bytes and lines t's access log got in its last run (None: it has none); the file is
        deleted, a full run would otherwise leave hundreds of MiB behind."""
        path = self.access_log(t)
        if not TARGETS[t].access_log or not path.exists():
            return None
        size, lines = 0, 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                size += len(chunk)
                lines += chunk.count(b"\n")
        path.unlink()
        return {"bytes": size, "lines": lines}
