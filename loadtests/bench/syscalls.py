#!/usr/bin/env python3
"""Syscalls per request: nginx and pyproxy under the same load, counted with `strace -c`.

    .venv/bin/python loadtests/bench/syscalls.py [--requests N] [--conns C] [--targets ...]
                                                  [--tracer strace|perf]

For each target (nginx as a proxy, pyproxy config (b), and (b) with its access log on), on the
bench's own layout (targets.py: the origin on core 0 with wrk, the target alone on core 1):
start it, warm it up with a short untraced wrk run, attach `strace -f -c` to every process of
it (all threads), run wrk until N responses have come back (a wrk Lua script signals the budget;
wrk, stopped with SIGINT, reports the exact count), detach, and divide each syscall's count by
the requests wrk completed. Prints a Markdown table: syscall → calls per request for each
target, errors per request in brackets, and the total.

What is counted per request includes the target's share of per-connection work (wrk opens its
c connections anew for the counted run: accept, socket options, registration, close) and of
work done per second rather than per request (timers, other threads), spread over N requests.

strace stops the target at every syscall, so it serves several times fewer requests per second
than untraced, and each loop turn finds more requests ready: fewer `epoll_wait` per request
than at full speed. `--tracer perf` counts with `perf trace -s` instead (kernel tracepoints, no
stops; needs perf and root), which is close to the untraced batching.

Only the standard library; every process started is killed by its process-group id.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from common import LOAD_CPU, PROXY_CPU, VENV_PY, Deadline, log, require, which
from install import ensure_debian_tools
from measure import descendants, parse_wrk
from targets import BODIES, Targets

# wrk -t1: once the budget of responses has come back, drop a file; the counter then stops
# wrk with SIGINT, on which wrk prints its report, with the exact number of responses it read
# (a few more than the budget: those that came back while the file was being noticed).
_BUDGET_LUA = """
local budget = tonumber(os.getenv("SYSCALLS_BUDGET"))
local flag = os.getenv("SYSCALLS_FLAG")
local post = tonumber(os.getenv("SYSCALLS_POST") or "")
if post then
  wrk.method = "POST"
  wrk.body = string.rep("x", post)
end
local seen = 0
function response(status, headers, body)
  seen = seen + 1
  if seen == budget then io.open(flag, "w"):close() end
end
"""

# The extra target: (b) with the JSON access log on. Procs sends a target's stdout to
# logs/<name>.log, so the log goes to a file, as it would under a process supervisor.
_ACCESS_LOG_OFF = 'access_log: {format: "off"}'
_ACCESS_LOG_ON = "access_log: {format: json}"

# Any bench target with something to attach to, and (b) with the access log on.
TARGET_LABELS = {
    "nginx": "nginx",
    "pyproxy_a": "pyproxy (a)",
    "pyproxy_b": "pyproxy (b)",
    "pyproxy_b_log": "pyproxy (b) + access log",
    "pyproxy_c": "pyproxy (c)",
    "haproxy": "HAProxy",
}

# One row of `strace -c`'s table: % time, seconds, usecs/call, calls, [errors], syscall.
_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d+\s+)?(\w+)\s*$")
# One row of `perf trace -s`: syscall, calls, errors, total, min, avg, max (ms), stddev.
_PERF_ROW = re.compile(r"^\s+(\w+)\s+(\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+")


def ensure_tools(install: bool) -> bool:
    """wrk, nginx and strace, installed with apt-get when missing and allowed."""
    return ensure_debian_tools({"wrk": "wrk", "nginx": "nginx-light", "strace": "strace"}, install)


def parse_perf_summary(text: str) -> dict[str, tuple[int, int]]:
    """`perf trace -s` output (a table per thread) → {syscall: (calls, errors)}, summed."""
    counts: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        m = _PERF_ROW.match(line)
        if m:
            calls, errors = counts.get(m.group(1), (0, 0))
            counts[m.group(1)] = (calls + int(m.group(2)), errors + int(m.group(3)))
    return counts


def parse_strace_summary(text: str) -> dict[str, tuple[int, int]]:
    """`strace -c` output → {syscall: (calls, errors)}."""
    counts: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m and m.group(3) != "total":
            counts[m.group(3)] = (int(m.group(1)), int(m.group(2) or 0))
    return counts


class Counter:
    def __init__(self, args: argparse.Namespace, targets: Targets, run: Path):
        self.args = args
        self.targets = targets
        self.run = run
        self.lua = run / "budget.lua"
        self.lua.write_text(_BUDGET_LUA)

    def wrk(self, url: str, secs: float, budget: int | None) -> str:
        """wrk's report of a run of secs seconds, or, with a budget, of a run stopped once
        that many responses have come back (secs is then the time limit)."""
        argv = [require("wrk"), "-t1", f"-c{self.args.conns}", f"-d{secs:g}s", "--timeout", "5s"]
        if self.args.close:
            argv += ["-H", "Connection: close"]  # a new client connection per request
        flag = self.run / "budget-reached"
        flag.unlink(missing_ok=True)
        env = None
        if budget is not None:
            argv += ["-s", str(self.lua)]
            env = dict(os.environ, SYSCALLS_BUDGET=str(budget), SYSCALLS_FLAG=str(flag))
            if self.args.post is not None:
                env["SYSCALLS_POST"] = str(self.args.post)
        procs = self.targets.procs
        (self.run / "logs" / "wrk.log").unlink(missing_ok=True)  # Procs appends to logs
        p = procs.start("wrk", [*argv, url], LOAD_CPU, env=env)
        try:
            t0 = time.monotonic()
            while p.poll() is None and time.monotonic() - t0 < secs + 30:
                if budget is not None and flag.exists():
                    p.send_signal(signal.SIGINT)  # wrk stops and prints its report
                    p.wait(timeout=30)
                    break
                time.sleep(0.01)
        finally:
            procs.stop("wrk")
        return (self.run / "logs" / "wrk.log").read_text()

    def start(self, name: str) -> tuple[int, int]:
        """Start the target (alone on the proxy core); (its pid, its port)."""
        t = self.targets
        if name != "pyproxy_b_log":
            pid = t.start_target(name)
            assert pid is not None
            return pid, t.L.port(name)
        # (b) with the access log on: (b)'s config and ports, started once (b) has stopped.
        cfg = t.cfg["pyproxy_b"]
        text = cfg.read_text()
        if _ACCESS_LOG_OFF not in text:
            raise RuntimeError(f"{cfg}: no {_ACCESS_LOG_OFF!r} line to turn the log on")
        logged = cfg.with_name("pyproxy-b-access-log.yaml")
        logged.write_text(text.replace(_ACCESS_LOG_OFF, _ACCESS_LOG_ON))
        p = t.procs.start(name, [str(VENV_PY), "-m", "pyproxy", "run", "-c", str(logged)],
                          PROXY_CPU, cwd=self.run)
        port = t.L.port("pyproxy_b")
        t.wait_ready(port, p)
        return p.pid, port

    def count(self, name: str) -> tuple[int, dict[str, tuple[int, int]]]:
        """(requests wrk completed, {syscall: (calls, errors)}) for one target."""
        pid, port = self.start(name)
        url = f"http://127.0.0.1:{port}{self.args.path}"
        try:
            self.wrk(url, self.args.warm, None)
            summary = self.run / f"{self.args.tracer}-{name}.txt"
            pids = descendants(pid)
            (self.run / "logs" / "tracer.log").unlink(missing_ok=True)
            if self.args.tracer == "strace":
                argv = [require("strace"), "-f", "-c", "-o", str(summary),
                        *(f"-p{p}" for p in pids)]
            else:
                argv = [require("perf"), "trace", "-s", "-o", str(summary),
                        "-p", ",".join(map(str, pids))]
            tracer = self.targets.procs.start("tracer", argv, LOAD_CPU)
            self.wait_attached(name, len(pids))
            out = self.wrk(url, self.args.max_secs, self.args.requests)
            # SIGINT: the tracer detaches and writes its summary.
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
            self.targets.procs.procs.pop("tracer", None)
        finally:
            self.targets.procs.stop("tracer")
            self.targets.procs.stop(name)
        w = parse_wrk(out)
        requests = int(w.get("requests", 0))
        if requests == 0 or w.get("non2xx") or w.get("sock_errors"):
            raise RuntimeError(f"{name}: bad wrk run:\n{out}")
        text = summary.read_text()
        parse = parse_strace_summary if self.args.tracer == "strace" else parse_perf_summary
        return requests, parse(text)

    def wait_attached(self, name: str, processes: int) -> None:
        """Until the tracer has attached (strace logs a line per thread; perf has no such
        line, and is given a fixed second); bounded."""
        if self.args.tracer == "perf":
            time.sleep(1.0)
            return
        logf = self.run / "logs" / "tracer.log"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            if logf.exists() and logf.read_text().count("attached") >= processes:
                time.sleep(0.2)  # the threads attached after the leader
                return
            time.sleep(0.05)
        raise RuntimeError(f"strace did not attach to {name}: {logf.read_text()[-400:]}")


def table(results: dict[str, tuple[int, dict[str, tuple[int, int]]]]) -> str:
    """Markdown: syscall → calls per request per target (errors in brackets), then total."""
    names = list(results)
    calls: dict[str, dict[str, tuple[float, float]]] = {}
    for name, (requests, counts) in results.items():
        for sc, (n, err) in counts.items():
            calls.setdefault(sc, {})[name] = (n / requests, err / requests)
    # Most frequent first (the largest count over the targets); rarer than 1 in 1000 requests
    # is folded into "other".
    rows = sorted(calls, key=lambda sc: -max(v[0] for v in calls[sc].values()))
    head = ["syscall", *(TARGET_LABELS[n] for n in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * len(names)]
    other = dict.fromkeys(names, 0.0)

    def cell(v: tuple[float, float] | None) -> str:
        if v is None or v[0] == 0:
            return "–"
        return f"{v[0]:.3f}" + (f" ({v[1]:.3f} err)" if v[1] >= 0.0005 else "")

    for sc in rows:
        if max(v[0] for v in calls[sc].values()) < 0.001:
            for n, v in calls[sc].items():
                other[n] += v[0]
            continue
        lines.append(f"| `{sc}` | " + " | ".join(cell(calls[sc].get(n)) for n in names) + " |")
    if any(other.values()):
        lines.append("| other | " + " | ".join(f"{other[n]:.3f}" for n in names) + " |")
    totals = [sum(v.get(n, (0.0, 0.0))[0] for v in calls.values()) for n in names]
    lines.append("| **total** | " + " | ".join(f"**{t:.2f}**" for t in totals) + " |")
    lines.append("| requests counted | " + " | ".join(f"{results[n][0]:,}" for n in names)
                 + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000,
                    help="responses to count per target (default 5000)")
    ap.add_argument("--conns", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--targets", default="nginx,pyproxy_b,pyproxy_b_log",
                    help=f"comma-separated, of {', '.join(TARGET_LABELS)}")
    ap.add_argument("--tracer", choices=("strace", "perf"), default="strace",
                    help="strace -f -c (ptrace: stops the target at every syscall, so it runs "
                         "~10x slower and batches more per loop turn), or perf trace -s "
                         "(tracepoints: close to full speed; needs perf and root)")
    ap.add_argument("--close", action="store_true",
                    help="send Connection: close: one client connection per request, to count "
                         "what a connection costs")
    ap.add_argument("--path", default="/", choices=sorted(BODIES),
                    help="what to GET from the origin: / (3 B), /4k, /1m (default /)")
    ap.add_argument("--post", type=int, metavar="BYTES",
                    help="POST a body of BYTES instead of GET (a request with a body takes "
                         "pyproxy's Task path, not the fast path)")
    ap.add_argument("--warm", type=float, default=1.0, help="unstraced warm-up seconds")
    ap.add_argument("--max-secs", type=float, default=60.0,
                    help="time limit of each counted run (wrk -d)")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install")
    args = ap.parse_args()
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGET_LABELS]
    if unknown:
        ap.error(f"unknown targets: {', '.join(unknown)}")
    if not ensure_tools(install=not args.no_install):
        return 3
    if args.tracer == "perf" and which("perf") is None:
        log("--tracer perf: perf is not installed (Debian: linux-perf)")
        return 3

    run = Path(tempfile.mkdtemp(prefix="pyproxy-syscalls-"))
    run.chmod(0o755)
    targets = Targets({}, run)
    counter = Counter(args, targets, run)

    def on_alarm(signum: int, frame: object) -> None:
        raise Deadline()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(len(names) * (args.max_secs + args.warm + 120)))
    results: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {}
    try:
        targets.start_origin()
        for name in names:
            log(f"{name}: warm-up {args.warm:g} s, then ~{args.requests} requests under "
                f"{args.tracer}")
            results[name] = counter.count(name)
            log(f"{name}: {results[name][0]} requests counted")
    except Deadline:
        log("time limit reached")
        return 1
    finally:
        signal.alarm(0)
        targets.procs.stop_all()
        shutil.rmtree(run, ignore_errors=True)
    how = "strace -f -c" if args.tracer == "strace" else "perf trace -s"
    close = ", Connection: close" if args.close else ""
    request = f"GET {args.path}" if args.post is None else f"POST {args.path} ({args.post} B body)"
    print(f"Syscalls per request, wrk -t1 -c{args.conns} {request}, {BODIES[args.path]} B "
          f"response{close}, "
          f"~{args.requests} requests per target under `{how}`:\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
