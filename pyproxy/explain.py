"""Explain a routing decision: which route takes a request, why, and what happens next.

Used by ``pyproxy explain`` (offline, from config files) and ``POST /api/v1/explain`` (live,
with run-time overrides). It walks the same compiled snapshot the proxy uses, so the answer
is the proxy's own decision, not a re-implementation of it.
"""

from __future__ import annotations

from pyproxy.messages import RequestHead
from pyproxy.routing.matchers import compile_match, describe_match
from pyproxy.routing.table import host_matches
from pyproxy.runtime import CompiledRoute, Runtime, Snapshot


def request_head(host: str, path: str, method: str = "GET",
                 headers: list[tuple[str, str]] | None = None) -> RequestHead:
    path, _, query = path.partition("?")
    pairs = [(k.lower().strip(), v.strip()) for k, v in (headers or [])]
    if not any(k == "host" for k, _ in pairs):
        pairs.append(("host", host))
    name = host.rsplit(":", 1)[0] if ":" in host and not host.startswith("[") else host
    return RequestHead(method.upper(), path or "/", query, "1.1", pairs,
                       name.rstrip(".").lower(), "127.0.0.1")


def _why_host(route: CompiledRoute, host: str) -> str:
    if route.implicit:
        return f"host {host!r} names service {route.name!r} and no route names it"
    if not route.hosts:
        return "route lists no hosts (any host)"
    matched = [p for p in route.hosts if host_matches(p, host)]
    return f"host {host!r} matches {matched[0]!r}"


def _why_match(route: CompiledRoute, head: RequestHead) -> str | None:
    """The reason the match block accepts ``head``, or None if it does not."""
    matches = route.route.matches
    if not matches:
        return "no match block (matches every request)"
    for index, entry in enumerate(matches):
        if compile_match(entry)(head):
            return f"match[{index}]: {describe_match(entry)}"
    return None


def explain(snapshot: Snapshot, runtime: Runtime | None, head: RequestHead) -> dict:
    candidates = snapshot.table.candidates(head.host)
    considered = []
    chosen = None
    for route in candidates:
        why = _why_match(route, head)
        considered.append({"route": route.name, "matched": why is not None,
                           "why": f"{_why_host(route, head.host)}; "
                                  f"{why or 'match block does not accept the request'}"})
        if why is not None:
            chosen = route
            break
    result = {"request": {"method": head.method, "host": head.host, "path": head.target,
                          "headers": dict(head.headers)},
              "considered": considered}
    if chosen is None:
        result.update(route=None, status=404, flag="NR",
                      reason=f"no route answers host {head.host!r} with this request")
        return result
    order = [r.name for r in snapshot.table.routes]
    position = order.index(chosen.name) + 1 if chosen.name in order else None
    result["route"] = chosen.name
    result["reason"] = ("first match wins: " + (f"route #{position} in file order"
                        if position else "implicit route of a known service")
                        + f" — {considered[-1]['why']}")
    override = runtime.weight_overrides.get(chosen.name) if runtime else None
    total = chosen.split.total
    result["backends"] = [
        {"backend": b.name, "weight": chosen.split.weights[i],
         "configured_weight": chosen.route.backends[i].weight,
         "probability": round(chosen.split.weights[i] / total, 6) if total else 0.0,
         "endpoints": [ep.address for ep in b.endpoints]}
        for i, b in enumerate(chosen.backends)]
    result["override"] = override.weights if override else None
    if chosen.direct_response is not None:
        result["action"] = f"direct response {chosen.direct_response.status}"
    elif chosen.redirect is not None:
        result["action"] = f"redirect {chosen.redirect.status}"
    elif total <= 0:
        result["action"] = "503 UH: every backend weight is 0"
    else:
        result["action"] = "forward"
    fault = chosen.fault
    result["fault"] = None if fault is None else {
        "delay": None if fault.delay is None else {"fixed_s": fault.delay.fixed,
                                                   "percent": fault.delay.percent},
        "abort": None if fault.abort is None else {"status": fault.abort.status,
                                                   "percent": fault.abort.percent},
        "scope": fault.scope,
        "runtime": bool(runtime and chosen.name in runtime.faults)}
    retries = chosen.retries
    result["retries"] = None if retries is None else {
        "attempts": retries.attempts, "per_try_timeout_s": retries.per_try_timeout,
        "retry_on": list(retries.retry_on), "status_codes": list(retries.status_codes)}
    result["timeout_s"] = chosen.timeout
    result["sticky"] = None if chosen.sticky is None else (
        f"cookie {chosen.sticky.cookie.name}" if chosen.sticky.cookie
        else f"header {chosen.sticky.header}")
    return result
