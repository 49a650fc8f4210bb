#!/usr/bin/env python3
"""Instructions per request: pyproxy's user-space instructions per proxied request, counted
with valgrind's callgrind, for the compiled build and for the pure-Python source.

    .venv/bin/python loadtests/bench/instructions.py [--targets pyproxy_b,...]
        [--builds compiled,pure] [--requests 3000] [--top 25] [--python PY]

Requests per second and CPU µs per request wander with whatever else runs on the machine;
the number of instructions the proxy executes does not. For each target (a pyproxy config of
the bench, targets.py) and build, pyproxy runs twice under `valgrind --tool=callgrind`: once
serving --baseline requests (10) and once --baseline + --requests (3010), each time the same
way: start, wait for its "listening" log line, send the requests with the fixed-count client
below over --conns keep-alive connections (10; the same connections in both runs), stop it
with SIGTERM, read the `totals:` of its callgrind file. Start-up, the connections and shut-down
are the same in both runs, so (large − small) / --requests is what one more request costs.
What runs per second rather than per request (timers) is counted in the difference too, for the
few extra seconds the larger run lasts under valgrind; it is small next to a request.

The builds: "compiled" runs the modules pyproxy/compiled.py lists as mypyc extensions, "pure"
the same source with PYPROXY_PURE_PYTHON=1. The proxy's start-up log says which one it runs,
and a run whose log disagrees with the build asked for fails (a stale extension falls back to
the source). The python measured is --python, by default $PYPROXY_BENCH_PYTHON or the repo's
.venv; PYTHONHASHSEED=0 keeps start-up the same in both runs of a pair.

Output: a Markdown table (target × build → instructions per request, and compiled / pure),
then, for the compiled (b), the functions that account for a request (the difference of the two
runs' `callgrind_annotate`, source paths and objects cut from the names); printed, and written
to results/instructions.md. Each callgrind run takes one to two minutes.

Only the standard library; the origin is the bench's nginx; every process started is killed
by its process-group id at the end, on Ctrl-C and on SIGTERM; every step has a time limit.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common import RESULTS, VENV_PY, Deadline, log, require, run_cmd
from install import ensure_debian_tools
from targets import TARGETS, Targets

# The bench targets that are pyproxy configs measured here (labels from targets.py).
TARGET_NAMES = ("pyproxy_a", "pyproxy_b", "pyproxy_b_log", "pyproxy_c")
# Build name → the environment that selects it (compiled: the extensions, when they are there).
BUILDS = {"compiled": {}, "pure": {"PYPROXY_PURE_PYTHON": "1"}}
# The start-up log line that names the build (pyproxy/server.py), by build.
BUILD_LOG = {"compiled": re.compile(r"hot path: (compiled.*)"),
             "pure": re.compile(r"pyproxy runs (uncompiled.*PYPROXY_PURE_PYTHON.*)")}
LISTENING = "pyproxy listening on"
# The origin's answer at / (targets.py: BODIES["/"]); every response must carry it.
BODY = b"ok\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
# One function's row of `callgrind_annotate`: "1,234 ( 5.67%)  file:function [object]".
_ANNOTATE_ROW = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.+?)\s*$")


class Stopped(Exception):
    """SIGTERM reached the bench: stop everything, like on Ctrl-C."""


@dataclass
class Run:
    """One pyproxy process under callgrind: the requests it served and what it executed."""

    requests: int
    instructions: int
    callgrind_file: Path
    seconds: float  # wall time from start to exit, under valgrind
    build_line: str  # the proxy's own log line naming its build
    access_log_lines: int | None  # lines its access log got (None: it logs none)


# ---------------------------------------------------------------------------------------------
# The fixed-count client.


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[str, bytes]:
    """One response off a keep-alive connection: (its head, its body). Content-Length framed
    (the origin's answers are); anything else is an error. buf keeps what follows it."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode("latin-1")
            length = None
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                elif name.strip().lower() == "transfer-encoding":
                    raise RuntimeError(f"unexpected Transfer-Encoding: {head!r}")
            if length is None:
                raise RuntimeError(f"response without Content-Length: {head!r}")
            if len(buf) >= end + 4 + length:
                body = bytes(buf[end + 4:end + 4 + length])
                del buf[:end + 4 + length]
                return head, body
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed before the response was complete")
        buf += chunk


def _connection(port: int, count: int, timeout: float, errors: list[str]) -> None:
    """count GET / one after the other on one connection; the first failure goes to errors."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            buf = bytearray()
            for i in range(count):
                sock.sendall(REQUEST)
                head, body = _read_response(sock, buf)
                status = head.split("\r\n", 1)[0]
                if not status.startswith("HTTP/1.1 200 ") or body != BODY:
                    raise RuntimeError(f"request {i + 1}: {status!r}, body {body[:80]!r} "
                                       f"(want 200 and {BODY!r})")
    except Exception as e:  # any failure of the thread: the caller reports it
        errors.append(f"{type(e).__name__}: {e}")


def send_requests(port: int, requests: int, conns: int, timeout: float) -> None:
    """requests keep-alive GETs to 127.0.0.1:port over conns connections, in threads, each
    connection its share; every response must be a 200 with the origin's body. Raises on the
    first failure, or when they are not all done within timeout seconds."""
    shares = [requests // conns + (1 if i < requests % conns else 0) for i in range(conns)]
    errors: list[str] = []
    threads = [threading.Thread(target=_connection, args=(port, k, timeout, errors), daemon=True)
               for k in shares if k]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise RuntimeError(f"the client did not finish {requests} requests within {timeout:.0f}s")
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(threads)} connections failed: {errors[0]}")


# ---------------------------------------------------------------------------------------------
# Callgrind runs.


def ensure_tools(install: bool) -> bool:
    """valgrind (with callgrind_annotate) and nginx, with apt-get when missing and allowed."""
    return ensure_debian_tools(
        {"valgrind": "valgrind", "callgrind_annotate": "valgrind", "nginx": "nginx-light"},
        install)


def callgrind_totals(path: Path) -> int:
    """The instructions a callgrind file counted: its `totals:` line (older: `summary:`)."""
    found: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("totals", "summary") and value.strip().isdigit():
                found[key] = int(value)
    if not found:
        raise RuntimeError(f"{path}: no totals: line (did valgrind exit cleanly?)")
    return found.get("totals", found.get("summary", 0))


def clean_name(raw: str) -> tuple[str, str]:
    """callgrind_annotate's "path/to/file.c:function'2 [/path/to/lib.so]" as ("file.c",
    "function"): the build and install paths differ between machines, and a function's
    recursion levels ('2, '3) are one function. An unknown file ("???") is named by its object,
    the only clue."""
    obj = ""
    m = re.match(r"^(.*?)\s*\[([^\]]*)\]$", raw)
    if m:
        raw, obj = m.group(1), m.group(2)
    file, _, function = raw.partition(":")
    file = file.rsplit("/", 1)[-1]
    if file == "???" and obj:
        file = obj.rsplit("/", 1)[-1]
    return file, re.sub(r"'\d+$", "", function)


def annotate(path: Path) -> dict[tuple[str, str], int]:
    """Instructions per (file, function) of one callgrind file (names as clean_name gives)."""
    rc, out = run_cmd([require("callgrind_annotate"), "--threshold=100", "--auto=no",
                       str(path)], 600)
    if rc != 0:
        raise RuntimeError(f"callgrind_annotate {path} failed ({rc}): {out[-400:]}")
    per_function: dict[tuple[str, str], int] = {}
    for line in out.splitlines():
        m = _ANNOTATE_ROW.match(line)
        if m and "PROGRAM TOTALS" not in line:
            key = clean_name(m.group(2))
            per_function[key] = per_function.get(key, 0) + int(m.group(1).replace(",", ""))
    return per_function


class Measurer:
    def __init__(self, args: argparse.Namespace, targets: Targets, run: Path):
        self.args = args
        self.targets = targets
        self.run = run

    def callgrind_run(self, target: str, build: str, requests: int) -> Run:
        """Start target on build under callgrind, send it requests, stop it, count."""
        args, t = self.args, self.targets
        name = f"{target}-{build}-{requests}"
        out = self.run / f"callgrind-{name}.out"
        argv = [require("valgrind"), "--tool=callgrind", f"--callgrind-out-file={out}",
                str(args.python), "-m", "pyproxy", "run", "-c", str(t.cfg[target])]
        env = {k: v for k, v in os.environ.items() if k != "PYPROXY_PURE_PYTHON"}
        env.update(BUILDS[build], PYTHONHASHSEED="0")
        access = self.run / "access" / f"{name}.log" if TARGETS[target].access_log else None
        started = time.monotonic()
        # Not pinned: instructions do not depend on the core, and valgrind runs one thread
        # at a time anyway.
        proc = t.procs.start(name, argv, None, cwd=self.run, env=env, stdout=access)
        try:
            build_line = self.wait_started(name, build, proc)
            send_requests(t.L.port(target), requests, args.conns, args.client_timeout)
            # Let the proxy see the clients' closes before it is told to stop, as in every run.
            time.sleep(args.settle)
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=args.stop_timeout)
            except subprocess.TimeoutExpired as e:
                raise RuntimeError(f"{name}: not stopped {args.stop_timeout:.0f}s after "
                                   f"SIGTERM") from e
        finally:
            t.procs.stop(name)
        seconds = time.monotonic() - started
        if code != 0:
            raise RuntimeError(f"{name}: exit code {code} after SIGTERM; "
                               f"{self.log_tail(name)}")
        lines = None
        if access is not None:
            with open(access, "rb") as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            if lines != requests:
                log(f"warning: {name}: {lines} access log lines for {requests} requests")
            access.unlink()
        return Run(requests, callgrind_totals(out), out, seconds, build_line, lines)

    def wait_started(self, name: str, build: str, proc: subprocess.Popen[bytes]) -> str:
        """Until the proxy logged that it listens and which build it runs (its build line),
        bounded by --start-timeout; fails if that build is not the one asked for."""
        logf = self.run / "logs" / f"{name}.log"
        deadline = time.monotonic() + self.args.start_timeout
        while time.monotonic() < deadline:
            text = logf.read_text(errors="replace") if logf.exists() else ""
            if LISTENING in text:
                m = BUILD_LOG[build].search(text)
                if m:
                    return m.group(1).strip()
                if "hot path: " in text or "pyproxy runs " in text:
                    raise RuntimeError(f"{name}: the proxy does not run the {build} build: "
                                       f"{self.log_tail(name)}")
            if proc.poll() is not None:
                raise RuntimeError(f"{name}: exited before listening; {self.log_tail(name)}")
            time.sleep(0.2)
        raise RuntimeError(f"{name}: not listening within {self.args.start_timeout:.0f}s; "
                           f"{self.log_tail(name)}")

    def log_tail(self, name: str) -> str:
        logf = self.run / "logs" / f"{name}.log"
        tail = logf.read_text(errors="replace")[-800:] if logf.exists() else "(no log)"
        return f"its log ends:\n{tail}"


# ---------------------------------------------------------------------------------------------
# The report.


def per_request(small: Run, large: Run) -> float:
    return (large.instructions - small.instructions) / (large.requests - small.requests)


def results_table(pairs: dict[tuple[str, str], tuple[Run, Run]], names: list[str],
                  builds: list[str]) -> str:
    """Markdown: a row per target, a column per build, and compiled / pure when both ran."""
    ratio = "compiled" in builds and "pure" in builds
    head = ["target", *(f"{b} (instr./request)" for b in builds)]
    if ratio:
        head.append("compiled / pure")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name in names:
        cells = [TARGETS[name].label]
        values = {b: per_request(*pairs[name, b]) for b in builds if (name, b) in pairs}
        cells += [f"{values[b]:,.0f}" if b in values else "–" for b in builds]
        if ratio:
            both = "compiled" in values and "pure" in values
            cells.append(f"{values['compiled'] / values['pure']:.2f}" if both else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(pairs: dict[tuple[str, str], tuple[Run, Run]]) -> str:
    """Markdown: every callgrind run, for checking the difference is sound."""
    lines = ["| target | build | requests | instructions | wall s | access log lines |",
             "|---|---|---:|---:|---:|---:|"]
    for (name, build), runs in pairs.items():
        for r in runs:
            logged = "–" if r.access_log_lines is None else f"{r.access_log_lines:,}"
            lines.append(f"| {name} | {build} | {r.requests:,} | {r.instructions:,} | "
                         f"{r.seconds:.0f} | {logged} |")
    return "\n".join(lines)


def top_table(small: Run, large: Run, top: int) -> str:
    """Markdown: the top functions by instructions per request (large − small run). A
    function's code inlined from a header is counted under that header's name by callgrind
    (CPyStr_Build in str_ops.c and in unicodeobject.h): one row per function, its files listed
    by their share."""
    a, b = annotate(small.callgrind_file), annotate(large.callgrind_file)
    extra = large.requests - small.requests
    by_function: dict[str, dict[str, float]] = {}
    for file, function in a.keys() | b.keys():
        value = (b.get((file, function), 0) - a.get((file, function), 0)) / extra
        by_function.setdefault(function, {})[file] = value
    total = sum(sum(files.values()) for files in by_function.values())
    lines = [f"Sum over all functions: {total:,.0f} instructions per request.", "",
             "| instr./request | share | function | in |", "|---:|---:|---|---|"]
    ranked = sorted(by_function.items(), key=lambda kv: -sum(kv[1].values()))
    for function, files in ranked[:top]:
        value = sum(files.values())
        where = ", ".join(f for f, v in sorted(files.items(), key=lambda kv: -kv[1]) if v > 0)
        lines.append(f"| {value:,.0f} | {100 * value / total:.1f}% | `{function}` | {where} |")
    return "\n".join(lines)


def _shown(path: object) -> str:
    """A path as the report shows it: relative to the repository when inside it (the report
    is committed, and must not name one machine's directories)."""
    text = str(path)
    repo = str(Path(__file__).resolve().parents[2]) + "/"
    return text[len(repo):] if text.startswith(repo) else text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default=",".join(TARGET_NAMES),
                    help=f"comma-separated, of {', '.join(TARGET_NAMES)} (default: all)")
    ap.add_argument("--builds", default="compiled,pure",
                    help="comma-separated, of compiled, pure (default: both)")
    ap.add_argument("--requests", type=int, default=3000,
                    help="the requests the larger run serves beyond the smaller (default 3000)")
    ap.add_argument("--baseline", type=int, default=10,
                    help="the requests of the smaller run (default 10; at least --conns, so "
                         "both runs open the same connections)")
    ap.add_argument("--conns", type=int, default=10, help="client connections (default 10)")
    ap.add_argument("--top", type=int, default=25,
                    help="functions listed for the compiled (b) (default 25; 0: none)")
    ap.add_argument("--python", type=Path,
                    default=Path(os.environ.get("PYPROXY_BENCH_PYTHON", str(VENV_PY))),
                    help="the python whose pyproxy is measured (default $PYPROXY_BENCH_PYTHON "
                         "or the repo's .venv/bin/python)")
    ap.add_argument("--out", type=Path, default=RESULTS / "instructions.md",
                    help="where the Markdown goes too (default results/instructions.md)")
    ap.add_argument("--start-timeout", type=float, default=300.0,
                    help="seconds a proxy under valgrind may take to listen (default 300)")
    ap.add_argument("--client-timeout", type=float, default=300.0,
                    help="seconds the client may take for a run's requests (default 300)")
    ap.add_argument("--stop-timeout", type=float, default=120.0,
                    help="seconds a proxy may take to exit after SIGTERM (default 120)")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds between the last response and SIGTERM (default 0.5)")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install")
    args = ap.parse_args()
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    builds = [b.strip() for b in args.builds.split(",") if b.strip()]
    if bad := [n for n in names if n not in TARGET_NAMES]:
        ap.error(f"unknown targets: {', '.join(bad)}")
    if bad := [b for b in builds if b not in BUILDS]:
        ap.error(f"unknown builds: {', '.join(bad)}")
    if args.requests < 1 or args.conns < 1 or args.baseline < args.conns:
        ap.error("--requests and --conns must be at least 1, --baseline at least --conns")
    if not args.python.exists():
        ap.error(f"{args.python} does not exist (--python, or $PYPROXY_BENCH_PYTHON)")
    if not ensure_tools(install=not args.no_install):
        return 3

    run = Path(tempfile.mkdtemp(prefix="pyproxy-instructions-"))
    run.chmod(0o755)
    targets = Targets({}, run)
    measurer = Measurer(args, targets, run)

    def on_alarm(signum: int, frame: object) -> None:
        raise Deadline()

    def on_term(signum: int, frame: object) -> None:
        raise Stopped()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    per_run = args.start_timeout + args.client_timeout + args.stop_timeout + args.settle
    signal.alarm(int(2 * len(names) * len(builds) * per_run + 600))
    pairs: dict[tuple[str, str], tuple[Run, Run]] = {}
    top = ""
    try:
        targets.start_origin()
        for name in names:
            for build in builds:
                small, large = (
                    measurer.callgrind_run(name, build, n)
                    for n in (args.baseline, args.baseline + args.requests))
                if small.build_line != large.build_line:  # reinstalled in between
                    raise RuntimeError(f"{name} {build}: the build changed between its two "
                                       f"runs: {small.build_line!r}, then {large.build_line!r}")
                pairs[name, build] = (small, large)
                log(f"{name} {build}: {per_request(small, large):,.0f} instructions per request "
                    f"({small.build_line})")
        if args.top > 0 and ("pyproxy_b", "compiled") in pairs:
            top = top_table(*pairs["pyproxy_b", "compiled"], args.top)
        elif args.top > 0:
            log("no top functions: they are listed for pyproxy_b on the compiled build only")
    except Deadline:
        log("time limit reached")
        return 1
    except RuntimeError as e:  # a failed run: its reason, then nothing left running
        log(f"failed: {e}")
        return 1
    except (KeyboardInterrupt, Stopped):
        log("interrupted")
        return 130
    finally:
        signal.alarm(0)
        targets.procs.stop_all()
        shutil.rmtree(run, ignore_errors=True)

    builds_seen = sorted({r[0].build_line for r in pairs.values()})
    _, valgrind = run_cmd([require("valgrind"), "--version"], 30)
    parts = [
        "# pyproxy: instructions per request (callgrind)", "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"`loadtests/bench/instructions.py {' '.join(sys.argv[1:])}`; "
        f"{valgrind.strip()}, python `{_shown(args.python)}`. Each figure is "
        f"(instructions of a run "
        f"serving {args.baseline + args.requests:,} requests − those of a run serving "
        f"{args.baseline:,}) / {args.requests:,}: keep-alive `GET /` (3 B response) over "
        f"{args.conns} connections.", "",
        results_table(pairs, names, builds), "",
        "Builds as the proxy logged them: " + "; ".join(builds_seen) + ".",
    ]
    if top:
        parts += ["", "## Where a request's instructions go: compiled (b)", "", top]
    parts += ["", "## The runs", "", runs_table(pairs)]
    text = "\n".join(parts) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
