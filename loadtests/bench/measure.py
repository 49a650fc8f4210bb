"""One measured run: wrk against a target, the CPU and memory it used, and the quiet-machine
guard around it.

CPU accounting comes from /proc: a target's utime+stime over its whole process tree, peak RSS
as VmHWM summed over the tree. Foreign load = whole-machine busy time (hypervisor steal
included) minus our own processes (target, origin, wrk, this harness, ksoftirqd). Before each
run we wait (bounded) until foreign load is below --quiet-max % of one core; a run during
which it was higher is repeated (bounded), and the quietest attempt is kept, marked "noisy"
if it is still over.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

from common import LOAD_CPU, SOCKET_ERRORS, log, require
from processes import pinned_to
from report import fmt_us
from targets import SCENARIOS, Targets

HZ = os.sysconf("SC_CLK_TCK")

Run = dict[str, Any]  # one run's figures, as written to latest.json


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


def find_ksoftirqd() -> list[int]:
    """The kernel's softirq threads: they carry loopback TCP work of our runs, so they count
    as ours, not foreign."""
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


class Accounting:
    """Snapshots of CPU counters; the difference of two is a window's accounting."""

    def __init__(self) -> None:
        self.ksoftirqd = find_ksoftirqd()

    def snapshot(self, target_pid: int | None, origin_pid: int | None) -> dict[str, float]:
        own = os.times()
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children: the window's wrk
        return {
            "t": time.monotonic(),
            "busy": machine_busy_ticks(),
            "target": tree_ticks(target_pid),
            "origin": tree_ticks(origin_pid),
            "target_sys": tree_ticks(target_pid, (12,)),
            "origin_sys": tree_ticks(origin_pid, (12,)),
            "self": round((own.user + own.system) * HZ),
            "children": round((ch.ru_utime + ch.ru_stime) * HZ),
            "ksoftirqd": sum(tree_ticks(p) for p in self.ksoftirqd),
        }

    def wait_quiet(self, target_pid: int | None, origin_pid: int | None, max_pct: float,
                   max_wait: float) -> dict[str, Any]:
        """Wait until foreign load over a 1 s window is below max_pct % of a core (bounded)."""
        t0 = time.monotonic()
        worst = 0.0
        while True:
            a = self.snapshot(target_pid, origin_pid)
            time.sleep(1.0)
            w = window(a, self.snapshot(target_pid, origin_pid))
            waited = time.monotonic() - t0
            if w["foreign_pct"] <= max_pct:
                if waited > 1.5:
                    log(f"  waited {waited:.0f}s for foreign load to drop "
                        f"(now {w['foreign_pct']:.0f}%)")
                return {"quiet": True, "waited_s": round(waited, 1),
                        "last_pct": round(w["foreign_pct"], 1)}
            worst = max(worst, w["foreign_pct"])
            if waited >= max_wait:
                log(f"  machine still busy after {waited:.0f}s (foreign {w['foreign_pct']:.0f}% "
                    f"of a core, peak {worst:.0f}%); measuring anyway")
                return {"quiet": False, "waited_s": round(waited, 1),
                        "last_pct": round(w["foreign_pct"], 1)}


def window(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """CPU seconds of each part in the window between two snapshots; foreign = busy − ours."""
    d = {k: b[k] - a[k] for k in a}
    wall = d.pop("t")
    ours = d["target"] + d["origin"] + d["self"] + d["children"] + d["ksoftirqd"]
    sec = {k: v / HZ for k, v in d.items()}
    sec["foreign"] = (d["busy"] - ours) / HZ
    sec["wall"] = wall
    sec["foreign_pct"] = 100.0 * sec["foreign"] / wall if wall > 0 else 0.0
    return sec


# --------------------------------------------------------------------------- wrk


def parse_wrk(out: str) -> Run:
    """wrk's text output → rps, requests, MiB/s, p50..p99 in µs, non-2xx and socket errors."""
    r: Run = {"_raw": out}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    if m:
        per_mib = {"B": 1 / 1048576, "KB": 1 / 1024, "MB": 1, "GB": 1024}[m.group(2)]
        r["mib_per_s"] = float(m.group(1)) * per_mib
    for p in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if m:
            r["p" + p] = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[m.group(2)]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    counts = [int(n) for n in m.groups()] if m else [0, 0, 0, 0]
    r["sock_errors_by"] = dict(zip(SOCKET_ERRORS, counts, strict=True))
    r["sock_errors"] = sum(counts)
    return r


class Bench:
    """Runs of one bench invocation: the targets, the accounting and the quiet-guard state."""

    def __init__(self, args: argparse.Namespace, targets: Targets):
        self.args = args
        self.targets = targets
        self.acct = Accounting()
        # Quiet-guard state: once a wait has timed out (the machine is busy for a long
        # stretch), later waits are short until a quiet second is seen again; all waiting is
        # budgeted.
        self.busy = False
        self.wait_left = getattr(args, "wait_budget", 0) or 600.0
        self.quiet_failures = 0

    def wrk(self, conns: int, secs: float, url: str, latency: bool,
            script: Path | None = None) -> tuple[int, str]:
        argv = [require("wrk"), "-t1", f"-c{conns}", f"-d{secs:g}s", "--timeout", "5s"]
        if latency:
            argv.append("--latency")
        if script is not None:
            argv += ["-s", str(script)]
        argv.append(url)
        procs = self.targets.procs
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             stdin=subprocess.DEVNULL, preexec_fn=lambda: pinned_to(LOAD_CPU),
                             start_new_session=True)
        procs.procs["wrk"] = p
        try:
            out, _ = p.communicate(timeout=secs + 30)
        except subprocess.TimeoutExpired:
            procs.stop("wrk")
            return 124, "wrk timed out"
        procs.procs.pop("wrk", None)
        return p.returncode, out

    def wait_for_quiet(self, pid: int | None) -> dict[str, Any]:
        """The quiet guard before a run, within what is left of the waiting budget."""
        a = self.args
        wait = a.quiet_wait if not self.busy else min(a.quiet_wait, 5.0)
        limit = max(1.0, min(wait, self.wait_left))
        quiet = self.acct.wait_quiet(pid, self.targets.origin_pid, a.quiet_max, limit)
        self.wait_left -= quiet["waited_s"]
        self.busy = not quiet["quiet"]
        self.quiet_failures += 0 if quiet["quiet"] else 1
        return quiet

    def attempt(self, scen: str, t: str) -> Run:
        conns, path = SCENARIOS[scen].conns, SCENARIOS[scen].path
        a = self.args
        tg = self.targets
        pid = tg.start_target(t)
        url = f"http://127.0.0.1:{tg.L.port(t)}{path}"
        try:
            quiet = self.wait_for_quiet(pid)
            self.wrk(conns, a.warm, url, latency=False)
            s0 = self.acct.snapshot(pid, tg.origin_pid)
            rc, out = self.wrk(conns, a.dur, url, latency=True)
            s1 = self.acct.snapshot(pid, tg.origin_pid)
            measured_pid = pid or tg.origin_pid
            rss = tree_hwm_kib(measured_pid) if measured_pid else 0
            alive = pid is None or tg.procs.procs[t].poll() is None
        finally:
            tg.stop_target(t)
        w = window(s0, s1)
        r = parse_wrk(out)
        access_log = tg.take_access_log(t)
        if access_log is not None:
            r["access_log"] = access_log  # bytes and lines, warm-up and checks included
        r.update(wrk_rc=rc, quiet_before=quiet, rss_kib=rss, alive=alive,
                 cpu={k: round(w[k], 3) for k in ("target", "origin", "children", "self",
                                                   "ksoftirqd", "foreign", "wall")},
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
                deadline: float = float("inf")) -> Run:
        """The run, repeated while contaminated -- as long as the repeat still leaves time for
        a first attempt at each of the runs_after runs still to come before the deadline."""
        best: Run | None = None
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
            msg = (f"{scen} r{rnd} {t} try{k}: {r.get('rps', 0):,.0f} rps, "
                   f"p50 {fmt_us(r.get('p50'))}, cpu {r['cpu_pct']}%, "
                   f"foreign {r['foreign_pct']:.0f}% of a core")
            if r.get("non2xx") or r.get("sock_errors"):
                msg += f", non-2xx {r.get('non2xx')}, socket errors {r.get('sock_errors')}"
            log(msg)
            if best is None or r["foreign_pct"] < best["foreign_pct"]:
                best = r
            if r["foreign_pct"] <= self.args.quiet_max or "error" in r:
                break
        assert best is not None  # max_tries >= 1: cmd_run sets it
        best["noisy"] = best["foreign_pct"] > self.args.quiet_max
        best["tries"] = tries
        return best
