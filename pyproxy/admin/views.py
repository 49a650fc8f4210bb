"""Text renderings of admin API answers for the CLI (``status``, ``explain``, ``fault``)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from pyproxy.traffic import failover

# An admin API answer as the CLI decoded it from JSON. Its shape is documented in
# docs/admin-api.md and not checked here, so its values are typed as JSON's (Any).
Json = dict[str, Any]


def ejection_times(remaining: float | None, now: float) -> dict[str, float | int | str | None]:
    """When an ejected endpoint returns, for ``GET /api/v1/services``: ``until`` (Unix time,
    for machines), ``until_utc`` (ISO 8601, whole seconds, rounded up so the endpoint is
    back by then) and ``seconds_left`` (whole seconds, rounded up). All None when
    ``remaining`` is None (not ejected)."""
    if remaining is None:
        return {"until": None, "until_utc": None, "seconds_left": None}
    until = now + remaining
    back_by = datetime.fromtimestamp(math.ceil(until), tz=UTC)
    return {"until": until, "until_utc": back_by.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seconds_left": math.ceil(remaining)}


def duration_text(seconds: int) -> str:
    """``23`` → ``23 s``, ``150`` → ``2 min 30 s``: how long until something happens."""
    if seconds < 120:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def ejection_text(ejection: dict[str, object], now: float | None = None) -> str:
    """``ejected, back in 23 s (at 01:02:03 UTC)`` from an endpoint's ``ejection`` view.
    ``seconds_left`` is the server's count when it answered; a view without it (an older
    server) is counted from ``until`` against ``now``."""
    seconds_left = ejection.get("seconds_left")
    until = ejection.get("until")
    if not isinstance(seconds_left, int):
        if not isinstance(until, (int, float)):
            return "ejected"
        seconds_left = max(0, math.ceil(until - (time.time() if now is None else now)))
    at = ""
    until_utc = ejection.get("until_utc")
    if isinstance(until_utc, str) and "T" in until_utc:
        at = f" (at {until_utc.split('T', 1)[1].rstrip('Z')} UTC)"
    elif isinstance(until, (int, float)):
        at = f" (at {datetime.fromtimestamp(math.ceil(until), tz=UTC):%H:%M:%S} UTC)"
    return f"ejected, back in {duration_text(seconds_left)}{at}"


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}%"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds >= 0.001 else f"{seconds * 1e6:.0f}µs"


def status_table(routes: Json, services: Json | None = None) -> str:
    """Like ``linkerd viz stat``: one row per route and backend."""
    header = ["ROUTE", "BACKEND", "WEIGHT", "OBSERVED", "RPS", "SUCCESS", "P50", "P95", "P99"]
    rows = [header]
    notes = []
    for route in routes.get("routes", []):
        rows.extend(_route_rows(route))
        for backend in route["backends"]:
            weight = _pct(backend["share"] * 100, 0)
            if route.get("override"):
                weight += "*"
            observed = backend.get("observed_share")
            rows.append([route["name"], backend["backend"], weight,
                         _pct(None if observed is None else observed * 100, 0),
                         "-" if backend.get("rps") is None else f"{backend['rps']:.1f}",
                         _pct(backend.get("success_rate")), _ms(backend.get("p50")),
                         _ms(backend.get("p95")), _ms(backend.get("p99"))])
        injected = route.get("injected_abort")
        if injected:
            rows.append(_injected_row(route["name"], injected))
        if route.get("override"):
            notes.append(f"* {route['name']}: weights overridden at run time by "
                         f"{route['override']['source']} (clear with: pyproxy set-weight "
                         f"{route['name']} --clear)")
        for backend in route["backends"]:
            if backend.get("available") is False:
                policy = route.get("when_backend_unavailable") or "failover"
                notes.append(f"! {route['name']}: {backend['backend']} has no available "
                             f"endpoint; {policy}: {failover.describe(policy)}")
        fault = route.get("runtime_fault")
        if fault:
            what = (f"abort {fault['abort']['status']}" if fault.get("abort")
                    else f"delay {fault['delay']['fixed_s']}s")
            percent = fault['abort' if fault.get('abort') else 'delay']['percent']
            notes.append(f"! {route['name']}: fault {what} on {percent}% "
                         f"for {fault['remaining_s']:.0f}s more")
        elif route.get("fault") and (route["fault"].get("abort") or route["fault"].get("delay")):
            notes.append(f"! {route['name']}: {_fault_what(route['fault'])} (set in the config)")
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in rows]
    if services:
        for service in services.get("services", []):
            discovery = service.get("discovery") or {}
            for name in discovery.get("names", []):
                # DNS discovery: which addresses a name stands for, and whether it still does.
                addresses = ", ".join(name["addresses"]) or "not resolved yet: connected by name"
                failing = f"; resolution failing ({name['error']}), last good answer kept" \
                    if name.get("error") else ""
                notes.append(f"{service['name']} {name['name']} (DNS, every "
                             f"{discovery['interval_s']:g}s): {addresses}{failing}")
            for ep in service["endpoints"]:
                if ep.get("ejected"):
                    ejection = ep.get("ejection") or {}
                    reason = f" ({ejection['reason']})" if ejection.get("reason") else ""
                    notes.append(f"{service['name']} {ep['address']}{reason}: "
                                 f"{ejection_text(ejection)}")
    window = routes.get("window_seconds")
    if window:
        notes.append(f"(live stats over the last {window}s)")
    return "\n".join([*lines, "", *notes]) if notes else "\n".join(lines)


def _stat_cells(stats: Json) -> list[str]:
    """RPS, SUCCESS, P50, P95, P99 of a window summary."""
    return ["-" if stats.get("rps") is None else f"{stats['rps']:.1f}",
            _pct(stats.get("success_rate")), _ms(stats.get("p50")), _ms(stats.get("p95")),
            _ms(stats.get("p99"))]


def _route_rows(route: Json) -> list[list[str]]:
    """The route's own row, over all its requests (injected aborts included), when it has
    anything besides one plain backend to add up; otherwise its backend's row says it all."""
    stats = route.get("stats")
    if not stats or (len(route["backends"]) < 2 and not route.get("injected_abort")):
        return []
    return [[route["name"], "(all requests)", "-", "100%" if stats.get("requests") else "-",
             *_stat_cells(stats)]]


def _injected_row(route: str, injected: Json) -> list[str]:
    """Requests an injected abort answered: their share of the route, and 0 % success."""
    observed = injected.get("observed_share")
    return [route, injected["label"], "-", _pct(None if observed is None else observed * 100, 0),
            *_stat_cells(injected)]


def explain_text(result: Json) -> str:
    req = result["request"]
    lines = [f"{req['method']} {req['host']}{req['path']}"]
    for item in result["considered"]:
        lines.append(f"  {'✓' if item['matched'] else '✗'} {item['route']}: {item['why']}")
    if result["route"] is None:
        lines.append(f"→ {result['status']} {result['flag']}: {result['reason']}")
        return "\n".join(lines)
    lines.append(f"→ route {result['route']} ({result['reason']})")
    lines.append(f"  action   {result['action']}")
    for backend in result.get("backends", []):
        lines.append(f"  backend  {backend['backend']:<28} {backend['probability'] * 100:6.2f}%"
                     f"  (weight {backend['weight']:g})  {', '.join(backend['endpoints'])}"
                     + ("  [no available endpoint]" if backend.get("available") is False
                        else ""))
    policy = result.get("when_backend_unavailable")
    if policy and result.get("backends"):
        lines.append(f"  if a backend has no available endpoint: {policy} — "
                     f"{failover.describe(policy)}")
    if result.get("override"):
        lines.append(f"  override {result['override']} (set at run time)")
    fault = result.get("fault")
    if fault:
        if fault.get("delay"):
            lines.append(f"  fault    delay {fault['delay']['fixed_s']}s on "
                         f"{fault['delay']['percent']}% of requests")
        if fault.get("abort"):
            lines.append(f"  fault    abort {fault['abort']['status']} on "
                         f"{fault['abort']['percent']}% of requests")
    retries = result.get("retries")
    if retries:
        lines.append(f"  retries  {retries['attempts']} on {', '.join(retries['retry_on'])}"
                     + (f", per try {retries['per_try_timeout_s']}s"
                        if retries['per_try_timeout_s'] else ""))
    lines.append(f"  timeout  {result['timeout_s']}s" if result.get("timeout_s")
                 else "  timeout  none")
    if result.get("sticky"):
        lines.append(f"  sticky   by {result['sticky']}")
    return "\n".join(lines)


def _fault_what(fault: Json) -> str:
    parts = []
    if fault.get("abort"):
        parts.append(f"abort {fault['abort']['status']} on {fault['abort']['percent']}%")
    if fault.get("delay"):
        parts.append(f"delay {fault['delay']['fixed_s']}s on {fault['delay']['percent']}%")
    return " and ".join(parts) or "only when asked by x-pyproxy-fault-* headers"


def faults_text(faults: Json) -> str:
    """``pyproxy fault list``: run-time faults with their time left, and the config's."""
    if not faults.get("faults"):
        return "no active faults"
    now = time.time()
    lines = []
    for fault in faults["faults"]:
        what = _fault_what(fault)
        if fault.get("source", "run time") == "run time":
            lines.append(f"{fault['route']}: {what}, {max(0, fault['expires'] - now):.0f}s left "
                         "(run time)")
            continue
        where = f"config, {fault['file']}" if fault.get("file") else "config"
        if fault.get("header_triggered") and (fault.get("abort") or fault.get("delay")):
            where += "; x-pyproxy-fault-* headers may ask for another"
        replaced = "" if fault.get("active", True) else \
            " — replaced by the run-time fault while that lasts"
        lines.append(f"{fault['route']}: {what} ({where}){replaced}")
    return "\n".join(lines)
