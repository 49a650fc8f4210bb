"""The bench's results: medians over rounds, the checks against the performance targets, and
the Markdown report (results/latest.md).

Ratios (to nginx, Envoy, direct, (b)) are computed inside each round first, then the median
is taken, so a slow round slows both sides of its ratio.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

from common import SOCKET_ERRORS
from targets import SCENARIOS, TARGETS

Run = dict[str, Any]  # one run's figures, as written to latest.json
Cell = dict[str, Any]  # one (scenario, target)'s medians


def med(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def fmt(x: float | None, nd: int = 0, suffix: str = "") -> str:
    return "–" if x is None else f"{x:,.{nd}f}{suffix}"


def fmt_us(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f} µs"


def fmt_ms(us: float | None) -> str:
    """Microseconds shown as milliseconds (the latencies at c=800 and of scrapes)."""
    return "–" if us is None else f"{us / 1e3:,.1f} ms"


def _ratio(x: Run, y: Run) -> float | None:
    return (x["rps"] / y["rps"]) if x.get("rps") and y.get("rps") else None


def _added(key: str) -> Callable[[Run, Run], float | None]:
    def diff(x: Run, y: Run) -> float | None:
        if x.get(key) is None or y.get(key) is None:
            return None
        return float(x[key] - y[key])
    return diff


def _log_line_bytes(r: Run) -> float | None:
    """The mean access log line of a run, in bytes (the proof that the log was written)."""
    log = r.get("access_log")
    return log["bytes"] / log["lines"] if log and log["lines"] else None


def summarize(runs: list[Run], targets: list[str], scens: list[str]) -> dict[str, Any]:
    """Medians over rounds; ratios (to nginx, Envoy, direct, (b)) computed inside each round
    first."""
    by: dict[tuple[str, str], dict[int, Run]] = {}
    for r in runs:
        by.setdefault((r["scenario"], r["target"]), {})[r["round"]] = r

    def per_round(scen: str, t: str, ref: str,
                  f: Callable[[Run, Run], float | None]) -> list[float | None]:
        a, b = by.get((scen, t), {}), by.get((scen, ref), {})
        return [f(a[k], b[k]) for k in a
                if k in b and "error" not in a[k] and "error" not in b[k]]

    S: dict[str, Cell] = {}
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
                "sock_errors_by": {kind: sum(r.get("sock_errors_by", {}).get(kind, 0)
                                             for r in rr) for kind in SOCKET_ERRORS},
                "access_log_line_bytes": med([_log_line_bytes(r) for r in rr]),
                "errors": errs,
                "x_nginx": med(per_round(scen, t, "nginx", _ratio)),
                "x_envoy": med(per_round(scen, t, "envoy", _ratio)),
                "x_b": med(per_round(scen, t, "pyproxy_b", _ratio)),
                "added_p50": med(per_round(scen, t, "direct", _added("p50"))),
                "added_p99": med(per_round(scen, t, "direct", _added("p99"))),
            }
    rss: dict[str, float | None] = {}
    for t in targets:
        vals = [r["rss_kib"] for r in runs
                if r["target"] == t and "error" not in r and r.get("rss_kib")
                and not SCENARIOS[r["scenario"]].scale]
        rss[t] = max(vals) / 1024 if vals else None
    return {"cells": S, "rss_mib": rss}


def checks(summ: dict[str, Any]) -> list[dict[str, Any]]:
    """Each performance target (docs/performance.md) as PASS, MISS or n/a: reported, never
    enforced."""
    C, rss = summ["cells"], summ["rss_mib"]
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, ok: Callable[[float], bool],
            shown: str, note: str = "") -> None:
        status = "n/a" if value is None else ("PASS" if ok(value) else "MISS")
        out.append({"check": name, "status": status, "value": value, "limit": limit,
                    "shown": shown, "note": note})

    def cell(key: str) -> Cell:
        found: Cell = C.get(key, {})
        return found

    def noisy(*keys: str) -> str:
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
            f"{fmt(x, 2)}× ({fmt(b.get('rps'))} vs {fmt(ev.get('rps'))} rps)"
            if ev or not b else "Envoy not measured",
            noisy(f"{scen}/pyproxy_b", f"{scen}/envoy"))
    b = cell("c1_3b/pyproxy_b")
    x = b.get("added_p50")
    add("(b) added p50 at c=1 ≤ 60 µs", x, 60, lambda v: v <= 60,
        f"+{fmt(x)} µs (p50 {fmt(b.get('p50'))} µs vs direct "
        f"{fmt(cell('c1_3b/direct').get('p50'))} µs)",
        noisy("c1_3b/pyproxy_b", "c1_3b/direct"))
    x = rss.get("pyproxy_b")
    add("(b) peak RSS ≤ 40 MiB", x, 40, lambda v: v <= 40,
        f"{fmt(x, 1)} MiB (VmHWM, max over its runs)")
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
    logged, b = cell("c50_3b/pyproxy_b_log"), cell("c50_3b/pyproxy_b")
    x = logged.get("x_b")
    add("(b) with the access log on within 10% of log off, c=50, 3 B", x, 0.9,
        lambda v: v >= 0.9,
        f"{fmt(x, 2)}× ({fmt(logged.get('rps'))} vs {fmt(b.get('rps'))} rps; "
        f"{fmt(logged.get('access_log_line_bytes'))} B per log line)",
        noisy("c50_3b/pyproxy_b_log", "c50_3b/pyproxy_b"))
    t7 = cell("c800_3b/pyproxy_b")
    errors = t7_errors(t7)
    add("T7: 800 connections, no errors", errors, 0, lambda v: v == 0,
        f"{fmt(errors)} errors ({error_kinds(t7)}); {fmt(t7.get('rps'))} rps, "
        f"p99 {fmt_ms(t7.get('p99'))}, peak RSS {fmt(t7.get('rss_mib'), 1)} MiB"
        if t7 else "not measured", noisy("c800_3b/pyproxy_b"))
    return out


def t7_errors(c: Cell) -> int | None:
    """wrk's errors over a cell's runs (socket errors and non-2xx), plus its failed runs;
    None when it was not measured."""
    if not c:
        return None
    return int(c["sock_errors"] + c["non2xx"] + len(c["errors"]))


def error_kinds(c: Cell) -> str:
    kinds = [f"{kind} {n}" for kind, n in c.get("sock_errors_by", {}).items()]
    failed = f", {len(c['errors'])} failed run(s)" if c.get("errors") else ""
    return ", ".join([*kinds, f"non-2xx {c.get('non2xx', 0)}"]) + failed


def render_md(meta: dict[str, Any], summ: dict[str, Any], chk: list[dict[str, Any]],
              targets: list[str], scens: list[str],
              scrape: dict[str, Any] | None = None) -> str:
    """results/latest.md: the header (machine, tools, noise), the summary table, the checks,
    one table per scenario, the scale section (T7, T19), notes."""
    C, rss = summ["cells"], summ["rss_mib"]
    m, v, p = meta["machine"], meta["versions"], meta["params"]
    L = []
    L.append("# pyproxy benchmark: latest run\n")
    L.append(f"- **date** {m['date']} · **nproc** {m['nproc']} · **CPU** {m['cpu']} · "
             f"**kernel** {m['kernel']} · **RAM** {m['mem_gib']} GiB")
    L.append("- **tools** " + " · ".join(f"{k} {val}" for k, val in v.items()))
    L.append(f"- **layout** {m['host_layout']}; every target started only for its own run; "
             "wrk `-t1`")
    L.append(f"- **params** {p['rounds']} round(s), {p['warm']:g} s warm-up + {p['dur']:g} s "
             "measured per run, targets forward in odd rounds and backward in even ones, medians "
             f"reported; quiet guard: foreign load ≤ {p['quiet_max']:g}% of a core "
             f"(wait ≤ {p['quiet_wait']:g} s, ≤ {p['max_tries']} tries)"
             + (" — **quick mode**" if p["quick"] else ""))
    L.append(f"- **command** `{p['command']}` · wall time {meta.get('wall_s', 0) / 60:.1f} min")
    L.append("- pyproxy runs with `access_log: {format: \"off\"}` (no access log), except "
             "(b) + access log: no `access_log` key, the default JSON lines on stdout, which "
             "the bench sends to a file; metrics are always on.")
    n = meta.get("noise", {})
    if n.get("runs"):
        verdict = ("quiet machine" if not n["noisy_runs"] else
                   f"**{n['noisy_runs']} of {n['runs']} kept runs were still noisy** — treat "
                   "their figures with care")
        L.append(f"- **noise** {verdict}; foreign load during kept runs median "
                 f"{n['foreign_pct_median']:g}%, max {n['foreign_pct_max']:g}% of a core; "
                 f"{n['retried_runs']} run(s) repeated; the quiet wait timed out "
                 f"{n['quiet_wait_timeouts']} time(s)")
    miss = [f"{k} ({st['how']})" for k, st in meta["tools"].items() if not st["ok"]]
    if miss:
        L.append(f"- **not available, skipped:** {', '.join(miss)}")
    if meta.get("skipped"):
        L.append(f"- **not measured:** {'; '.join(meta['skipped'])}")
    L.append("")

    L.append("## Summary (medians)\n")
    L.append("| target | rps c=50 3 B | ×nginx | ×Envoy | p50 / p99 µs | rps c=50 4 KiB | ×nginx "
             "| ×Envoy | c=1 p50 µs (added) | 1 MiB c=4 MiB/s | ×nginx | CPU µs/req c=50 3 B "
             "| peak RSS MiB |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        a, b4, c1, mb = (C.get(f"{s}/{t}", {}) for s in ("c50_3b", "c50_4k", "c1_3b", "c4_1m"))
        if not (a or b4 or c1 or mb):
            continue
        c1s = fmt(c1.get("p50"))
        if t != "direct" and c1.get("added_p50") is not None:
            c1s += f" (+{c1['added_p50']:,.0f})"
        name = f"**{TARGETS[t].label}**" if t.startswith("pyproxy") else TARGETS[t].label
        cpu = fmt(a.get("cpu_us_per_req"), 1) + (" (origin)" if t == "direct" and a else "")
        if a.get("sys_us_per_req") is not None:
            cpu += f" · {fmt(a['sys_us_per_req'], 1)} kernel"
        r = fmt(rss.get(t), 1) + (" (origin)" if t == "direct" and rss.get(t) else "")
        L.append(f"| {name} | {fmt(a.get('rps'))} | {fmt(a.get('x_nginx'), 2)} "
                 f"| {fmt(a.get('x_envoy'), 2)} | {fmt(a.get('p50'))} / {fmt(a.get('p99'))} "
                 f"| {fmt(b4.get('rps'))} | {fmt(b4.get('x_nginx'), 2)} "
                 f"| {fmt(b4.get('x_envoy'), 2)} | {c1s} | {fmt(mb.get('mib_per_s'))} "
                 f"| {fmt(mb.get('x_nginx'), 2)} | {cpu} | {r} |")
    L.append("")
    L.append("Ratios are computed inside each round, then the median is taken. Added p50 = "
             "target p50 − direct p50 in the same round. CPU µs/req = the target's CPU time (all "
             "threads and child processes, from /proc/PID/stat) ÷ requests, and of that the "
             "kernel's share (stime: the syscalls, and the loopback TCP work done in them). Peak "
             "RSS = VmHWM summed over the target's processes, max over its runs. MiB/s is wrk's "
             "Transfer/sec.\n")

    L.append("## Checks against the targets\n")
    L.append("Reported, not enforced: a MISS is information, never a failure of this command.\n")
    L.append("| | check | result | note |")
    L.append("|---|---|---|---|")
    for c in chk:
        L.append(f"| **{c['status']}** | {c['check']} | {c['shown']} | {c['note']} |")
    L.append("")

    L.append("## Per scenario\n")
    for s in scens:
        if SCENARIOS[s].scale:
            continue  # in the scale section
        L.append(f"### {SCENARIOS[s].title} (`{SCENARIOS[s].path}`)\n")
        L.append("| target | rps (min–max) | ×nginx | ×Envoy | p50 µs | p99 µs "
                 "| added p50 / p99 µs | MiB/s | target CPU % | CPU µs/req | foreign % max "
                 "| noisy / retried | errors |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for t in targets:
            if f"{s}/{t}" in C:
                L.append(_scenario_row(t, C[f"{s}/{t}"]))
        L.append("")

    L += _scale_md(C, [s for s in scens if SCENARIOS[s].scale], targets, scrape)

    L.append("## Notes\n")
    L.append("- Origin: nginx, one process on the load core with wrk; it answers `ok\\n` at `/` "
             "and serves static 4 KiB and 1 MiB files. On 2 cores the load core saturates before "
             "nginx/HAProxy do, so their figures are lower bounds on their one-core ceiling "
             "(see `direct`).")
    L.append("- (b)/(c): the split's two backends are the same origin on two ports; wrk sends no "
             "cookies, so with (c)'s sticky cookie every request is a first visit "
             "(draw + `Set-Cookie`).")
    L.append("- nginx proxy: 64 KiB proxy buffers and `proxy_max_temp_file_size 0`, so 1 MiB "
             "responses stream through memory (its 4 KiB defaults cost it ~45% at 1 MiB). "
             "Envoy runs with its defaults (request ids, x-envoy headers, stats).")
    L.append("- Foreign % = whole-machine busy CPU (hypervisor steal included) minus our "
             "processes during the measured window, in % of one core; ±5% is accounting noise. "
             "Runs over the limit were repeated; 'noisy' marks a kept run still over.")
    L.append("- Configs, raw wrk output and the run log are in `results/configs/`, "
             "`results/raw/`, `results/run.log`.")
    return "\n".join(L) + "\n"


def _scenario_row(t: str, c: Cell) -> str:
    spread = f"{fmt(c['rps'])} ({fmt(c['rps_min'])}–{fmt(c['rps_max'])})" if c["rps"] else "–"
    add_s = "–" if t == "direct" else f"{fmt(c['added_p50'])} / {fmt(c['added_p99'])}"
    errs = []
    if c["non2xx"]:
        errs.append(f"{c['non2xx']} non-2xx")
    if c["sock_errors"]:
        errs.append(f"{c['sock_errors']} socket errors")
    errs += c["errors"]
    cpu = fmt(c["cpu_us_per_req"], 1)
    if c.get("sys_us_per_req") is not None:
        cpu += " · " + fmt(c["sys_us_per_req"], 1) + " kernel"
    return (f"| {TARGETS[t].label} | {spread} | {fmt(c['x_nginx'], 2)} "
            f"| {fmt(c['x_envoy'], 2)} | {fmt(c['p50'])} | {fmt(c['p99'])} | {add_s} "
            f"| {fmt(c['mib_per_s'])} | {fmt(c['cpu_pct'])}{' (origin)' if t == 'direct' else ''} "
            f"| {cpu} | {fmt(c['foreign_pct_max'])} | {c['noisy_rounds']} / {c['retried_rounds']} "
            f"| {'; '.join(errs)[:200] or ''} |")


def _scale_md(C: dict[str, Cell], scale_scens: list[str], targets: list[str],
              scrape: dict[str, Any] | None) -> list[str]:
    """The scale section: T7 (800 connections) per target, and T19 (metrics_scrape)."""
    if not scale_scens and scrape is None:
        return []
    L = ["## Scale: 800 connections and /metrics with 1,000 routes\n"]
    for s in scale_scens:
        L.append(f"### T7: {SCENARIOS[s].title} (`{SCENARIOS[s].path}`)\n")
        L.append("| target | rps (min–max) | p50 | p99 | errors: connect / read / write / timeout "
                 "/ non-2xx | peak RSS MiB | target CPU % | noisy / retried |")
        L.append("|---|---:|---:|---:|---|---:|---:|---:|")
        for t in targets:
            c = C.get(f"{s}/{t}")
            if c is None:
                continue
            by = c["sock_errors_by"]
            errs = " / ".join(str(by[k]) for k in SOCKET_ERRORS) + f" / {c['non2xx']}"
            if c["errors"]:
                errs += f"; {'; '.join(c['errors'])[:200]}"
            spread = (f"{fmt(c['rps'])} ({fmt(c['rps_min'])}–{fmt(c['rps_max'])})"
                      if c["rps"] else "–")
            L.append(f"| {TARGETS[t].label} | {spread} | {fmt_ms(c['p50'])} | {fmt_ms(c['p99'])} "
                     f"| {errs} | {fmt(c['rss_mib'], 1)} | {fmt(c['cpu_pct'])} "
                     f"| {c['noisy_rounds']} / {c['retried_rounds']} |")
        L.append("")
        L.append("wrk `-t1 -c800`, keep-alive, each target alone on its core as in the other "
                 "scenarios. Errors are wrk's (socket errors by kind, non-2xx responses) summed "
                 "over the rounds; peak RSS is VmHWM of these runs only (they are left out of "
                 "the per-target peak RSS above).\n")
    if scrape is not None:
        L += _scrape_md(scrape)
    return L


def _scrape_md(m: dict[str, Any]) -> list[str]:
    sc, idle, parse = m["scrape"], m["idle_scrape"], m["parse"]

    def ms(x: float | None) -> str:
        return "–" if x is None else f"{x:,.1f} ms"

    parsed = (f"valid ({parse['families']} families, {parse['samples']:,} samples)"
              if parse.get("ok") else f"**not parsed**: {parse.get('error')}")
    L = ["### T19: `/metrics` with 1,000 routes under load\n",
         f"pyproxy with {m['routes']:,} path-prefix routes (each a 90/10 split over the "
         f"origin's two ports), wrk c={m['conns']} rotating over {m['routes_with_traffic']} of "
         f"them; a scraper on the load core fetches `/metrics` every {m['interval_s']:g} s on a "
         "new connection during the scraped runs.\n",
         "| | result |", "|---|---|",
         f"| scrape latency under load, p50 / p99 / max | {ms(sc['p50_ms'])} / "
         f"{ms(sc['p99_ms'])} / {ms(sc['max_ms'])} ({sc['count']} scrapes, "
         f"{m['scrape_failures']} failed) |",
         f"| scrape latency idle, p50 / max | {ms(idle['p50_ms'])} / {ms(idle['max_ms'])} "
         f"({idle['count']} scrapes) |",
         f"| body | {m['body_bytes'] / 1024:,.0f} KiB, {m['series']:,} series lines; "
         f"prometheus_client's parser: {parsed} |",
         f"| rps without → with scrapes | {fmt(m['rps_quiet'])} → {fmt(m['rps_scraped'])} "
         f"({fmt(m['rps_ratio'], 2)}×, median of the per-round ratios) |",
         f"| proxied p99 without → with scrapes | {fmt_ms(m['p99_quiet'])} → "
         f"{fmt_ms(m['p99_scraped'])} |",
         f"| target CPU % without / with scrapes | {fmt(m['cpu_pct_quiet'])} / "
         f"{fmt(m['cpu_pct_scraped'])} |",
         f"| proxied errors (wrk) | {m['errors']} |",
         f"| peak RSS | {fmt(m['rss_mib'], 1)} MiB"
         + ("" if m["alive"] else " (**the proxy died during the runs**)") + " |",
         ""]
    L.append("| round | scrapes | rps | p50 | p99 | target CPU % | scrapes done | "
             "scrape p50 / p99 / max | foreign % |")
    L.append("|---:|---|---:|---:|---:|---:|---:|---|---:|")
    for w in m["windows"]:
        s = w.get("scrapes")
        lat = (f"{ms(s['p50_ms'])} / {ms(s['p99_ms'])} / {ms(s['max_ms'])}" if s else "–")
        L.append(f"| {w['round']} | {'with' if w['scraping'] else 'without'} "
                 f"| {fmt(w.get('rps'))} | {fmt_ms(w.get('p50'))} | {fmt_ms(w.get('p99'))} "
                 f"| {fmt(w.get('cpu_pct'))} | {s['count'] if s else '–'} | {lat} "
                 f"| {fmt(w.get('foreign_pct'))}{' (noisy)' if w.get('noisy') else ''} |")
    L.append("")
    return L
