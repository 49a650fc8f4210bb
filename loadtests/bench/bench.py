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

The parts, next to this file: targets.py (the targets, their configs from configs/*.tmpl, the
origin and the scenarios), install.py (finding and installing the tools), measure.py (a wrk run,
its CPU/RSS accounting and the quiet-machine guard), metrics_scrape.py (/metrics under load
with 1,000 routes, after the rounds), report.py (medians, checks, the Markdown report),
profiling.py (the profile command), processes.py and common.py (shared plumbing).

Only the standard library is used (and prometheus_client, from the project venv, to check a
scraped /metrics); every process started is killed by its process group id (each one gets
its own session) on exit, on Ctrl-C, on SIGTERM and on the hard time limit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from common import LOAD_CPU, RESULTS, Deadline, log, set_log_file
from install import ensure_tools, machine_info, tool_versions
from measure import Bench, Run
from metrics_scrape import measure_metrics_scrape
from processes import raise_fd_limit
from profiling import cmd_profile
from report import checks, render_md, summarize
from targets import ALL_SCENARIOS, METRICS_SCRAPE, ROUND_TARGETS, SCENARIOS, TARGETS, Targets

# Defaults of a full run and of --quick; an explicit flag wins over either.
FULL = {"rounds": 3, "warm": 2.0, "dur": 8.0, "quiet_wait": 60.0, "max_tries": 3,
        "budget": 60.0, "wait_budget": 600.0}
QUICK = {"rounds": 1, "warm": 1.0, "dur": 3.0, "quiet_wait": 30.0, "max_tries": 2,
         "budget": 15.0, "wait_budget": 180.0}


def setup_signals() -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise Deadline()

    signal.signal(signal.SIGALRM, on_alarm)


def apply_defaults(args: argparse.Namespace) -> None:
    """Fill the options left unset (None or 0) from the full or the quick defaults."""
    for key, value in (QUICK if args.quick else FULL).items():
        given = getattr(args, key)
        # warm, dur and quiet_wait may be set to 0 on purpose; the others mean "default" by 0.
        unset = given is None if key in ("warm", "dur", "quiet_wait") else not given
        if unset:
            setattr(args, key, value)


def cmd_run(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    apply_defaults(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("raw", "configs"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir()
    set_log_file(out / "run.log")
    (out / "run.log").write_text("")
    if (os.cpu_count() or 1) < 2:
        log("this harness needs 2 cores (load core + proxy core)")
        return 2
    tools = ensure_tools(install=not args.no_install)
    for req in ("wrk", "nginx"):
        if not tools[req]["ok"]:
            log(f"cannot run without {req} (origin/load generator); giving up")
            (out / "latest.md").write_text(f"# pyproxy benchmark\n\nNot run: {req} unavailable "
                                           f"({tools[req]['how']}).\n")
            return 3
    targets = args.targets.split(",") if args.targets else list(ROUND_TARGETS)
    scens = args.scenarios.split(",") if args.scenarios else list(ALL_SCENARIOS)
    for t in targets:
        if t not in ROUND_TARGETS:
            raise SystemExit(f"unknown target {t}; choose from {','.join(ROUND_TARGETS)}")
    for s in scens:
        if s not in ALL_SCENARIOS:
            raise SystemExit(f"unknown scenario {s}; choose from {','.join(ALL_SCENARIOS)}")
    # metrics_scrape measures a pyproxy of its own: it runs unless the targets leave pyproxy out.
    scrape = METRICS_SCRAPE in scens and any(t.startswith("pyproxy") for t in targets)
    if METRICS_SCRAPE in scens and not scrape:
        log(f"{METRICS_SCRAPE} skipped: the targets leave every pyproxy out")
    scens = [s for s in scens if s in SCENARIOS]
    fd_soft, fd_hard = raise_fd_limit()
    most_conns = max((SCENARIOS[s].conns for s in scens), default=0)
    if fd_soft < 2 * most_conns + 256:  # downstream + upstream sockets, and some to spare
        log(f"warning: open files limited to {fd_soft} (hard limit {fd_hard}); "
            f"c={most_conns} may fail for lack of file descriptors")
    skipped = []
    for t in ("nginx", "haproxy", "envoy"):
        tool = TARGETS[t].tool
        if t in targets and tool is not None and not tools[tool]["ok"]:
            targets.remove(t)
            skipped.append(f"{t}: {tools[tool]['how']}")

    params = {"rounds": args.rounds, "warm": args.warm, "dur": args.dur, "quick": args.quick,
              "quiet_max": args.quiet_max, "quiet_wait": args.quiet_wait,
              "max_tries": args.max_tries, "budget_min": args.budget, "targets": targets,
              "scenarios": scens + ([METRICS_SCRAPE] if scrape else []),
              "scrape_interval": args.scrape_interval, "fd_limit": [fd_soft, fd_hard],
              "command": "bash loadtests/bench/run.sh " + " ".join(sys.argv[2:])}
    meta: dict[str, Any] = {"machine": machine_info(), "versions": tool_versions(tools),
                            "tools": tools, "params": params}
    run = Path(tempfile.mkdtemp(prefix="pyproxy-bench-"))
    run.chmod(0o755)  # the nginx proxy's worker drops privileges
    started = Targets(tools, run)
    bench = Bench(args, started)
    for path in started.cfg.values():
        shutil.copy(path, out / "configs" / path.name)
    runs: list[Run] = []
    scraped: dict[str, Any] | None = None
    deadline = t_start + args.budget * 60
    # hard limit: everything (incl. a stuck tool) ends by budget + 5 min
    signal.alarm(int(args.budget * 60 + 300))
    try:
        started.start_origin()
        log(f"origin up on 127.0.0.1:{started.L.origin_p1} and :{started.L.origin_p2} "
            f"(core {LOAD_CPU}); targets {', '.join(targets)}; "
            f"scenarios {', '.join(params['scenarios'])}; "
            f"{args.rounds} round(s) of {args.warm:g}+{args.dur:g} s")
        if not run_rounds(args, bench, targets, scens, out, run, runs, skipped, deadline):
            skipped.append(f"time budget of {args.budget:g} min reached; "
                           "later runs not measured")
            log(skipped[-1])
        elif scrape:
            scraped = run_metrics_scrape(args, bench, out, run, skipped, deadline)
    except Deadline:
        skipped.append("hard time limit reached")
        log("hard time limit reached; stopping")
    finally:
        signal.alarm(0)
        started.procs.stop_all()
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
    md = render_md(meta, summ, chk, [t for t in TARGETS if t in targets], scens, scraped)
    (out / "latest.md").write_text(md)
    (out / "latest.json").write_text(json.dumps(
        {"meta": meta, "summary": summ, "checks": chk, "metrics_scrape": scraped, "runs": runs},
        indent=1, default=str))
    print(md)
    log(f"wrote {out / 'latest.md'} and latest.json in {meta['wall_s'] / 60:.1f} min")
    return 0


def run_rounds(args: argparse.Namespace, bench: Bench, targets: list[str], scens: list[str],
               out: Path, run: Path, runs: list[Run], skipped: list[str],
               deadline: float) -> bool:
    """Every scenario × round × target into runs; False when the time budget cut it short.
    A target that fails to start is skipped for the rest of the bench."""
    broken: set[str] = set()
    runs_left = sum(len(scenario_targets(s, targets)) for s in scens) * args.rounds
    for scen in scens:
        chosen = scenario_targets(scen, targets)
        if not chosen:
            log(f"{scen}: none of its targets ({', '.join(SCENARIOS[scen].targets or ())}) "
                "selected; skipped")
        for rnd in range(1, args.rounds + 1):
            for t in (chosen if rnd % 2 else chosen[::-1]):
                if time.monotonic() > deadline:
                    return False
                runs_left -= 1
                if t in broken:
                    continue
                try:
                    r = bench.measure(scen, t, rnd, out / "raw", runs_left, deadline)
                except RuntimeError as e:
                    broken.add(t)
                    log(f"target {t} failed to start: {e}\n{_tail(run / 'logs' / f'{t}.log')}")
                    skipped.append(f"{t}: failed to start ({e})")
                    continue
                r.update(scenario=scen, target=t, round=rnd)
                runs.append(r)
    return True


def scenario_targets(scen: str, targets: list[str]) -> list[str]:
    """The selected targets scen runs against, in report order."""
    only = SCENARIOS[scen].targets
    return [t for t in targets if only is None or t in only]


def run_metrics_scrape(args: argparse.Namespace, bench: Bench, out: Path, run: Path,
                       skipped: list[str], deadline: float) -> dict[str, Any] | None:
    """The metrics_scrape measurement (metrics_scrape.py); None when it could not be made."""
    if time.monotonic() > deadline:
        skipped.append(f"{METRICS_SCRAPE}: time budget reached")
        return None
    log(f"{METRICS_SCRAPE}: pyproxy with 1,000 routes, {args.rounds} pair(s) of runs "
        f"without and with a scrape every {args.scrape_interval:g} s")
    try:
        return measure_metrics_scrape(bench, out / "raw", args.rounds, args.scrape_interval,
                                      deadline)
    except (RuntimeError, OSError, http.client.HTTPException) as e:
        log(f"{METRICS_SCRAPE} failed: {e}\n{_tail(run / 'logs' / 'pyproxy_1k.log')}")
        skipped.append(f"{METRICS_SCRAPE}: failed ({e})")
        return None


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the benchmark (run.sh)")
    r.add_argument("--quick", action="store_true", help="1 round of 1 s + 3 s per run")
    r.add_argument("--rounds", type=int, default=0)
    r.add_argument("--warm", type=float, default=None, help="warm-up seconds per run")
    r.add_argument("--dur", type=float, default=None, help="measured seconds per run")
    r.add_argument("--targets", default="", help=f"comma list from {','.join(ROUND_TARGETS)}")
    r.add_argument("--scenarios", default="",
                   help=f"comma list from {','.join(ALL_SCENARIOS)}")
    r.add_argument("--scrape-interval", type=float, default=1.0,
                   help="seconds between /metrics scrapes in metrics_scrape")
    r.add_argument("--quiet-max", type=float, default=10.0,
                   help="foreign load limit, %% of one core")
    r.add_argument("--quiet-wait", type=float, default=None,
                   help="max seconds to wait for quiet before a run")
    r.add_argument("--max-tries", type=int, default=0, help="attempts of a contaminated run")
    r.add_argument("--budget", type=float, default=0, help="minutes of measuring before it stops")
    r.add_argument("--wait-budget", type=float, default=0,
                   help="total seconds of waiting for quiet")
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
