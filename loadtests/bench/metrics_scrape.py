"""metrics_scrape (T19): how long a `/metrics` scrape takes with 1,000 routes under load, and
what scraping costs the traffic.

pyproxy runs the generated 1,000-route config (targets.py) alone on the proxy core; wrk (c=50,
a Lua script rotating over the 334 routes that get traffic) keeps it busy. Each round is a
pair of wrk runs of the same length on the same running proxy, one without scrapes and one
with them, in alternating order (the rounds' forward and backward), so the requests/s ratio
is taken inside a pair, then the median. During the scraped run a thread of the harness,
pinned to the load core with wrk and the origin (never to the proxy's), fetches the admin
`/metrics` every --scrape-interval seconds on a new connection and times it from connect to
the last body byte (by default once a second: more often than Prometheus scrapes, every 15 s
or so, so the requests/s lost is an upper bound). A few scrapes with no load give the idle
latency for comparison, and the last body is parsed once with prometheus_client's parser to
check it is valid text format.
"""

from __future__ import annotations

import http.client
import math
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from common import LOAD_CPU, log
from measure import Bench, Run, parse_wrk, tree_hwm_kib, window
from processes import pinned_to
from targets import ROUTE_COUNT, traffic_paths

TARGET = "pyproxy_1k"
CONNS = 50
IDLE_SCRAPES = 5
SCRAPE_TIMEOUT = 30.0
# Each run lasts --dur but at least this long, so even --quick gets a few scrapes per run.
MIN_WINDOW_S = 5.0


def percentile(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1); None for no samples."""
    if not xs:
        return None
    ordered = sorted(xs)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_summary(ms: list[float]) -> dict[str, float | int | None]:
    return {"count": len(ms), "p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99),
            "max_ms": max(ms) if ms else None}


def scrape_once(port: int) -> tuple[float, bytes]:
    """(milliseconds from connecting to the last body byte, body) of GET /metrics; OSError or
    RuntimeError (not a 200) when it fails."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SCRAPE_TIMEOUT)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}")
    return 1e3 * (time.perf_counter() - t0), body


class Scraper(threading.Thread):
    """Scrapes /metrics every interval seconds (back to back when a scrape takes longer) until
    stopped; the latencies, the failures and the last body."""

    def __init__(self, port: int, interval: float):
        super().__init__(name="metrics-scraper", daemon=True)
        self.port = port
        self.interval = interval
        self.stopped = threading.Event()
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []
        self.body = b""

    def run(self) -> None:
        # On Linux the affinity of "pid 0" is the calling thread's: only this thread moves to
        # the load core, the harness stays where it was.
        pinned_to(LOAD_CPU)
        due = time.monotonic()
        while not self.stopped.is_set():
            try:
                ms, self.body = scrape_once(self.port)
                self.latencies_ms.append(ms)
            except (OSError, RuntimeError, http.client.HTTPException) as e:
                self.failures.append(str(e) or type(e).__name__)
            due = max(due + self.interval, time.monotonic())
            self.stopped.wait(due - time.monotonic())


def parse_check(body: bytes) -> dict[str, Any]:
    """The body read with prometheus_client's parser: families and samples, or why not."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as e:  # run.sh uses the project venv, which has it; another Python may not
        return {"ok": None, "error": f"prometheus_client not importable: {e}"}
    try:
        families = list(text_string_to_metric_families(body.decode()))
    except (ValueError, UnicodeDecodeError) as e:
        return {"ok": False, "error": str(e)[:300]}
    return {"ok": True, "families": len(families),
            "samples": sum(len(f.samples) for f in families)}


def write_wrk_script(run: Path) -> Path:
    """A wrk Lua script sending GETs to the routes with traffic in turn (requests prebuilt)."""
    paths = ", ".join(f'"{p}"' for p in traffic_paths())
    script = run / "rotate-routes.lua"
    script.write_text(f"""-- metrics_scrape: GET each route that gets traffic in turn.
local paths = {{{paths}}}
local requests = {{}}
local n = 0
function init(args)
  for i, path in ipairs(paths) do requests[i] = wrk.format("GET", path) end
end
function request()
  n = n % #requests + 1
  return requests[n]
end
""")
    return script


def measure_metrics_scrape(bench: Bench, raw: Path, rounds: int, interval: float,
                           deadline: float) -> dict[str, Any]:
    """The whole measurement, for latest.json's "metrics_scrape"; raises RuntimeError when
    the proxy fails to start."""
    tg, a = bench.targets, bench.args
    script = write_wrk_script(tg.L.run)
    pid = tg.start_target(TARGET)
    assert pid is not None  # a pyproxy, never "direct"
    admin = tg.L.admin_port(TARGET)
    assert admin is not None  # every pyproxy target has an admin port
    url = f"http://127.0.0.1:{tg.L.port(TARGET)}/"
    windows: list[Run] = []
    idle: list[float] = []
    body = b""
    try:
        quiet = bench.wait_for_quiet(pid)
        # The warm-up also gives every route with traffic its series before the first scrape.
        bench.wrk(CONNS, max(a.warm, 1.0), url, latency=False, script=script)
        for _ in range(IDLE_SCRAPES):
            ms, body = scrape_once(admin)
            idle.append(ms)
        for rnd in range(1, rounds + 1):
            if rnd > 1 and time.monotonic() + 2 * (max(a.dur, MIN_WINDOW_S) + 2) > deadline:
                log("metrics_scrape: time budget reached; later rounds not measured")
                break
            for scraping in ((False, True) if rnd % 2 else (True, False)):
                w = _window(bench, pid, admin, url, script, scraping, interval)
                w["round"] = rnd
                (raw / f"metrics_scrape__r{rnd}__{'scraped' if scraping else 'quiet'}.wrk"
                 ).write_text(w.pop("_raw", ""))
                body = w.pop("_body", b"") or body
                windows.append(w)
        rss = tree_hwm_kib(pid)
        alive = tg.procs.procs[TARGET].poll() is None
    finally:
        tg.stop_target(TARGET)
    result = summarize_scrapes(windows, idle, body, rss, alive, interval)
    result["quiet_before"] = quiet
    return result


def _window(bench: Bench, pid: int, admin: int, url: str, script: Path, scraping: bool,
            interval: float) -> Run:
    """One wrk run, with the scraper running alongside when scraping."""
    tg = bench.targets
    scraper = Scraper(admin, interval) if scraping else None
    s0 = bench.acct.snapshot(pid, tg.origin_pid)
    if scraper is not None:
        scraper.start()
    try:
        rc, out = bench.wrk(CONNS, max(bench.args.dur, MIN_WINDOW_S), url, latency=True,
                            script=script)
    finally:
        if scraper is not None:
            scraper.stopped.set()
            scraper.join(timeout=SCRAPE_TIMEOUT + 5)
    s1 = bench.acct.snapshot(pid, tg.origin_pid)
    w = window(s0, s1)
    r = parse_wrk(out)
    r.update(scraping=scraping, wrk_rc=rc, foreign_pct=round(w["foreign_pct"], 1),
             noisy=w["foreign_pct"] > bench.args.quiet_max,
             cpu_pct=round(100.0 * w["target"] / w["wall"], 1) if w["wall"] else None)
    if rc != 0 or "rps" not in r:
        r["error"] = f"wrk rc {rc}: {out.strip()[-300:]}"
    msg = (f"metrics_scrape {'with' if scraping else 'without'} scrapes: "
           f"{r.get('rps', 0):,.0f} rps, cpu {r['cpu_pct']}%, foreign {r['foreign_pct']:.0f}%")
    if scraper is not None:
        lat = latency_summary(scraper.latencies_ms)
        r.update(scrapes=lat, scrape_latencies_ms=[round(x, 2) for x in scraper.latencies_ms],
                 scrape_failures=scraper.failures[:20], scrape_failure_count=len(scraper.failures),
                 _body=scraper.body)
        msg += (f"; {lat['count']} scrapes, p50 {_ms(lat['p50_ms'])}, "
                f"max {_ms(lat['max_ms'])}, {len(scraper.failures)} failed")
    log(msg)
    return r


def _ms(x: float | int | None) -> str:
    return "–" if x is None else f"{x:,.1f} ms"


def summarize_scrapes(windows: list[Run], idle: list[float], body: bytes, rss_kib: int,
                      alive: bool, interval: float) -> dict[str, Any]:
    good = [w for w in windows if "error" not in w]
    quiet = [w for w in good if not w["scraping"]]
    scraped = [w for w in good if w["scraping"]]
    ratios = []
    for w in scraped:
        pair = [q for q in quiet if q["round"] == w["round"]]
        if pair and w.get("rps") and pair[0].get("rps"):
            ratios.append(w["rps"] / pair[0]["rps"])
    latencies = [ms for w in scraped for ms in w.get("scrape_latencies_ms", [])]

    def med(ws: list[Run], key: str) -> float | None:
        vals = [w[key] for w in ws if w.get(key) is not None]
        return statistics.median(vals) if vals else None

    return {
        "conns": CONNS, "interval_s": interval, "routes": ROUTE_COUNT,
        "routes_with_traffic": len(traffic_paths()),
        "scrape": latency_summary(latencies),
        "scrape_failures": sum(w.get("scrape_failure_count", 0) for w in scraped),
        "idle_scrape": latency_summary(idle),
        "body_bytes": len(body),
        "series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
        "parse": parse_check(body) if body else {"ok": None, "error": "no body scraped"},
        "rps_quiet": med(quiet, "rps"), "rps_scraped": med(scraped, "rps"),
        "rps_ratio": statistics.median(ratios) if ratios else None,
        "p99_quiet": med(quiet, "p99"), "p99_scraped": med(scraped, "p99"),
        "cpu_pct_quiet": med(quiet, "cpu_pct"), "cpu_pct_scraped": med(scraped, "cpu_pct"),
        "errors": sum(w.get("non2xx", 0) + w.get("sock_errors", 0) for w in good)
        + len(windows) - len(good),
        "rss_mib": rss_kib / 1024 if rss_kib else None, "alive": alive,
        "noisy_windows": sum(1 for w in windows if w.get("noisy")),
        "windows": windows,
    }
