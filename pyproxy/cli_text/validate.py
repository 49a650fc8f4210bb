"""``pyproxy validate``: check config files and show what they will do (docs/cli.md).

The summary is what an operator reads before a rollout: every route with its match
conditions, each backend's share of the traffic and the policies on it; every service
with its endpoints and limits; the canaries; then the warnings. ``--json`` gives the same
facts to machines. Secrets (the admin token, fault header secrets) are never printed.
Exit status: 0 valid, 2 invalid.

Several paths (or a directory) are checked as ONE config by default, merged exactly as
``pyproxy run -c`` merges them, and the output says so. ``--each`` checks every file on its
own instead (a directory of alternative examples) and reports per file.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyproxy.config.load import (
    ConfigInvalid,
    ConfigIssue,
    LoadedConfig,
    config_files,
    load_config,
)
from pyproxy.config.model import (
    Address,
    Backend,
    Canary,
    Config,
    DirectResponse,
    Endpoint,
    Fault,
    HeaderChanges,
    Match,
    Mirror,
    Redirect,
    Retries,
    Rewrite,
    Route,
    Service,
    Sticky,
    StringMatch,
)

__all__ = ["config_to_json", "format_duration", "format_summary", "validate_command"]

REDACTED = "<redacted>"


def validate_command(paths: Sequence[str], as_json: bool, each: bool = False) -> int:
    """Load ``paths`` as one config (or each file alone with ``each``); print the summary
    (stdout) or every error (stderr). 0 valid, 2 invalid."""
    if each:
        return _validate_each(paths, as_json)
    files, _ = config_files(paths)
    # Name the mode whenever more than one file is merged: a directory of alternative
    # examples is not one config, and 25 errors without this line look like 25 bugs.
    merged = (f"{len(files)} files checked as one config, as `pyproxy run -c` reads them; "
              "--each checks each file on its own" if len(files) > 1 else "")
    try:
        loaded = load_config(paths)
    except ConfigInvalid as invalid:
        if as_json:
            print(json.dumps(_result(None, invalid.issues, invalid.warnings), indent=2))
        else:
            for issue in (*invalid.issues, *invalid.warnings):
                print(issue, file=sys.stderr)
            count = len(invalid.issues)
            print(f"invalid: {_count(count, 'error')}" + (f" ({merged})" if merged else ""),
                  file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(_result(loaded.config, (), loaded.warnings), indent=2))
    else:
        print(format_summary(loaded))
        if merged:
            print(f"\n({merged})")
    return 0


def _validate_each(paths: Sequence[str], as_json: bool) -> int:
    """Every file of ``paths`` (directories expanded) checked as a config of its own."""
    files, missing = config_files(paths)
    results: list[dict[str, Any]] = [
        {"path": issue.file, **_result(None, [issue], ())} for issue in missing]
    if not as_json:
        for issue in missing:
            print(issue, file=sys.stderr)
    valid = 0
    for file in files:
        try:
            loaded = load_config([file])
        except ConfigInvalid as invalid:
            results.append({"path": file, **_result(None, invalid.issues, invalid.warnings)})
            if not as_json:
                for issue in (*invalid.issues, *invalid.warnings):
                    print(issue, file=sys.stderr)
                print(f"{file}: invalid: {_count(len(invalid.issues), 'error')}",
                      file=sys.stderr)
            continue
        valid += 1
        results.append({"path": file, **_result(loaded.config, (), loaded.warnings)})
        if not as_json:
            print(f"{file}: {_headline(loaded)}")
            for warning in loaded.warnings:
                print(f"  {warning}")
    total = len(files) + len(missing)
    if as_json:
        print(json.dumps({"valid": valid == total, "each": results}, indent=2))
    else:
        print(f"{valid} of {_count(total, 'config')} valid, each file checked on its own",
              file=sys.stdout if valid == total else sys.stderr)
    return 0 if valid == total else 2


# ---------------------------------------------------------------------------- JSON


def _result(config: Config | None, errors: Iterable[ConfigIssue],
            warnings: Iterable[ConfigIssue]) -> dict[str, Any]:
    body = config_to_json(config) if config else {"routes": [], "services": [], "canaries": []}
    return {"valid": config is not None, "errors": [_issue_json(issue) for issue in errors],
            "warnings": [_issue_json(issue) for issue in warnings], **body}


def _issue_json(issue: ConfigIssue) -> dict[str, Any]:
    return {"file": issue.file, "line": issue.line, "path": issue.path, "message": issue.message}


def config_to_json(config: Config) -> dict[str, Any]:
    """The config as JSON-ready values, secrets redacted: the model's shape plus each
    backend's ``share`` (percent of its route's traffic) and each subset's endpoints."""
    routes = []
    for route in config.routes:
        plain = _plain(route)
        for backend, share in zip(plain["backends"], _shares(route), strict=True):
            backend["share"] = round(share, 3)
        if route.fault and route.fault.header_secret:
            plain["fault"]["header_secret"] = REDACTED
        routes.append(plain)
    services = []
    for service in config.services.values():
        plain = _plain(service)
        plain["subset_endpoints"] = {
            subset: [endpoint.address for endpoint in service.subset_endpoints(subset)]
            for subset in service.subsets}
        services.append(plain)
    admin = _plain(config.admin)
    if config.admin.token:
        admin["token"] = REDACTED
    return {
        "listen": _plain(config.listen),
        "admin": admin,
        "debug_headers": config.debug_headers,
        "routes": routes,
        "services": services,
        "canaries": [_plain(canary) for canary in config.canaries],
        "timeouts": _plain(config.timeouts),
        "limits": _plain(config.limits),
        "access_log": _plain(config.access_log),
        "metrics": _plain(config.metrics),
        "trusted_proxies": [str(network) for network in config.trusted_proxies],
    }


# Fields holding (name, value) pairs: shown as JSON objects, which is how they were written.
_PAIR_FIELDS = {"headers", "query", "cookies", "set", "add"}


# Derived names that label these values in metrics and the admin API.
_DERIVED = {Backend: "name", Mirror: "name", Endpoint: "address"}


def _plain(value: Any, name: str = "") -> Any:
    if isinstance(value, Address):
        return str(value)
    if dataclasses.is_dataclass(value):
        plain = {f.name: _plain(getattr(value, f.name), f.name) for f in dataclasses.fields(value)}
        derived = _DERIVED.get(type(value))
        if derived:
            plain[derived] = getattr(value, derived)
        return plain
    if isinstance(value, tuple) and name in _PAIR_FIELDS:
        return {key: _plain(item) for key, item in value}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def _shares(route: Route) -> list[float]:
    """Each backend's percentage of the route's traffic (all 0 when every weight is 0)."""
    total = sum(backend.weight for backend in route.backends)
    return [100 * backend.weight / total if total else 0.0 for backend in route.backends]


# ---------------------------------------------------------------------------- text


def format_duration(seconds: float) -> str:
    """``0.25`` → ``250ms``, ``90`` → ``1m30s``: the way durations are written in config."""
    if seconds < 1:
        return f"{seconds * 1000:.6g}ms" if seconds else "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs = round(secs, 3)  # float noise from the division, not a real millisecond fraction
    parts = [f"{int(hours)}h" if hours else "", f"{int(minutes)}m" if minutes else "",
             f"{secs:g}s" if secs else ""]
    return "".join(parts)


def _percent(value: float) -> str:
    return f"{value:g}%"


def format_summary(loaded: LoadedConfig) -> str:
    """The human summary ``pyproxy validate`` prints for a valid config."""
    config = loaded.config
    lines = [_headline(loaded), ""]
    lines += _rows([
        ("listen", [str(config.listen)]),
        ("admin", [f"{config.admin.listen} ({'token set' if config.admin.token else 'no token'})"]),
        ("debug", ["x-pyproxy-* response headers on"] if config.debug_headers else []),
        ("trusted", [", ".join(map(str, config.trusted_proxies))
                     + " (their X-Forwarded-For is believed)"] if config.trusted_proxies else []),
    ], indent=0)
    if config.routes:
        lines += ["", "Routes (first match wins)"]
        for route in config.routes:
            lines += ["", f"  {route.name}", *_route_rows(route)]
    if config.services:
        lines += ["", "Services"]
        for service in config.services.values():
            lines += ["", f"  {service.name}", *_service_rows(service)]
    if config.canaries:
        lines += ["", "Canaries"]
        for canary in config.canaries:
            lines += ["", f"  {canary.name}", *_canary_rows(canary)]
    if loaded.warnings:
        lines += ["", "Warnings"]
        lines += [f"  {warning}" for warning in loaded.warnings]
    return "\n".join(lines)


def _headline(loaded: LoadedConfig) -> str:
    config = loaded.config
    counts = [_count(len(loaded.files), "file"), _count(len(config.routes), "route"),
              _count(len(config.services), "service"), _count(len(config.canaries), "canary"),
              _count(len(loaded.warnings), "warning")]
    return f"valid: {', '.join(counts)}"


def _count(number: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{number} {noun if number == 1 else plural}"


_LABEL_WIDTH = 11  # one value column for the whole summary: "endpoints" and "websocket" + 2


def _rows(rows: Iterable[tuple[str, list[str]]], indent: int = 4) -> list[str]:
    """``label  value`` lines with the values aligned; a label with no values is left out;
    further values of a label go on continuation lines under the first."""
    lines = []
    for label, values in rows:
        if not values:
            continue
        lines.append(" " * indent + label.ljust(_LABEL_WIDTH) + values[0])
        lines += [" " * (indent + _LABEL_WIDTH) + value for value in values[1:]]
    return lines


def _table(rows: list[list[str]]) -> list[str]:
    """Rows of cells with every column aligned (the last one left ragged)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
            for row in rows]


# ---------------------------------------------------------------------------- routes


def _route_rows(route: Route) -> list[str]:
    return _rows([
        ("hosts", [", ".join(route.hosts) if route.hosts else "any"]),
        ("match", _matches(route.matches)),
        ("backends", _backend_lines(route)),
        ("redirect", [_redirect(route.redirect)] if route.redirect else []),
        ("respond", [_direct_response(route.direct_response)] if route.direct_response else []),
        ("sticky", [_sticky(route.sticky)] if route.sticky else []),
        ("fault", _fault(route.fault) if route.fault else []),
        ("timeout", [format_duration(route.timeout)] if route.timeout is not None else []),
        ("retries", [_retries(route.retries)] if route.retries else []),
        ("mirror", [f"{m.name} ({_percent(m.percent)} of requests)" for m in route.mirrors]),
        ("request", _header_changes(route.headers.request) if route.headers else []),
        ("response", _header_changes(route.headers.response) if route.headers else []),
        ("rewrite", [_rewrite(route.rewrite)] if route.rewrite else []),
        ("websocket", [] if route.websocket else ["refused"]),
        ("unhealthy", _when_backend_unavailable(route)),
    ])


_WHEN_UNAVAILABLE = {
    "failover": "its share goes to the other available backends, by weight (503 UH if none)",
    "panic": "its share goes to its endpoints anyway, ejected or unhealthy ones included",
    "fail": "its share is answered 503 UH",
}


def _when_backend_unavailable(route: Route) -> list[str]:
    """What a backend's share gets when it has no available endpoint (docs/responses.md);
    left out for a single-backend route on the default, with nowhere to fail over to."""
    policy = route.when_backend_unavailable
    if len(route.backends) < 2 and policy == "failover":
        return []
    return [f"{policy}: {_WHEN_UNAVAILABLE[policy]}"]


def _matches(matches: tuple[Match, ...]) -> list[str]:
    if not matches:
        return ["every request"]
    lines = [", ".join(_conditions(match)) or "every request" for match in matches]
    return [lines[0], *(f"or {line}" for line in lines[1:])]


def _conditions(match: Match) -> list[str]:
    conditions = []
    if match.path:
        case = " (any case)" if match.path.ignore_case else ""
        conditions.append(f"path {match.path.kind} {match.path.value}{case}")
    if match.methods:
        conditions.append(f"method {'|'.join(match.methods)}")
    for kind, pairs in (("header", match.headers), ("query", match.query),
                        ("cookie", match.cookies)):
        conditions += [f"{kind} {name} {_string_match(test)}" for name, test in pairs]
    return conditions


def _string_match(test: StringMatch) -> str:
    case = " (any case)" if test.ignore_case else ""
    if test.kind == "exact":
        return f"{'!=' if test.invert else '='} {test.value}{case}"
    text = test.kind if test.kind in ("present", "absent") else f"{test.kind} {test.value}{case}"
    return f"not {text}" if test.invert else text


def _backend_lines(route: Route) -> list[str]:
    if not route.backends:
        return []
    return _table([[backend.name, f"{share:.1f}%", f"(weight {backend.weight:g})"
                    + (f", answers {backend.direct_status}" if backend.direct_status else "")
                    + (f", redirects: {_redirect(backend.redirect)}" if backend.redirect
                       else "")
                    + (", own rewrite" if backend.rewrite else "")]
                   for backend, share in zip(route.backends, _shares(route), strict=True)])


def _redirect(redirect: Redirect) -> str:
    changes = [f"{key} {value}" for key, value in (
        ("scheme", redirect.scheme), ("host", redirect.host), ("port", redirect.port),
        ("path", redirect.path), ("path prefix", redirect.path_prefix)) if value is not None]
    return ", ".join([str(redirect.status), *changes])


def _direct_response(response: DirectResponse) -> str:
    body = response.body if len(response.body) <= 40 else response.body[:37] + "..."
    return f"{response.status}" + (f" {body!r}" if body else "")


def _sticky(sticky: Sticky) -> str:
    if sticky.cookie:
        ttl = format_duration(sticky.cookie.ttl) if sticky.cookie.ttl else "session"
        return f"cookie {sticky.cookie.name} (ttl {ttl})"
    return f"header {sticky.header}"


def _fault(fault: Fault) -> list[str]:
    lines = []
    if fault.delay:
        lines.append(f"delay {format_duration(fault.delay.fixed)} "
                     f"on {_percent(fault.delay.percent)} of requests")
    if fault.abort:
        lines.append(f"abort {fault.abort.status} on {_percent(fault.abort.percent)} of requests")
    if fault.scope == "attempt":
        lines.append("drawn again for every attempt (retries can recover)")
    if fault.header_secret:
        lines.append("header-triggered faults enabled (secret set)")
    return lines


def _retries(retries: Retries) -> str:
    on = [f"retriable-status-codes {'/'.join(map(str, retries.status_codes))}"
          if reason == "retriable-status-codes" else reason for reason in retries.retry_on]
    text = f"{_count(retries.attempts, 'retry')} on {', '.join(on)}"
    if retries.per_try_timeout is not None:
        text += f"; {format_duration(retries.per_try_timeout)} per try"
    backoff = retries.backoff
    return text + f"; backoff {format_duration(backoff.base)} to {format_duration(backoff.max)}"


def _header_changes(changes: HeaderChanges) -> list[str]:
    return ([f"set {name}: {value}" for name, value in changes.set]
            + [f"add {name}: {value}" for name, value in changes.add]
            + [f"remove {name}" for name in changes.remove])


def _rewrite(rewrite: Rewrite) -> str:
    parts = []
    if rewrite.path_prefix is not None:
        parts.append(f"path prefix -> {rewrite.path_prefix}")
    if rewrite.path_full is not None:
        parts.append(f"path -> {rewrite.path_full}")
    if rewrite.path_regex is not None:
        parts.append(f"path {rewrite.path_regex[0]} -> {rewrite.path_regex[1]}")
    if rewrite.host is not None:
        parts.append(f"host -> {rewrite.host}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------- services


def _labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in labels.items())


def _service_rows(service: Service) -> list[str]:
    endpoints = _table([[("https://" if e.tls else "") + e.address, _labels(e.labels)]
                        for e in service.endpoints])
    subsets = []
    if service.subsets:
        subsets = _table([[name, _labels(selector) or "(all)",
                           _count(len(service.subset_endpoints(name)), "endpoint")]
                          for name, selector in service.subsets.items()])
    balancer = service.load_balancer.kind.replace("_", " ")
    if service.load_balancer.hash_on:
        hash_on = service.load_balancer.hash_on
        balancer += (f" on header {hash_on.header}" if hash_on.header else
                     f" on cookie {hash_on.cookie}" if hash_on.cookie else " on source IP")
    pool = service.connection_pool
    discovery = [] if service.discovery is None else [
        f"DNS: each name is one endpoint per address, resolved every "
        f"{format_duration(service.discovery.interval)}"]
    return _rows([
        ("endpoints", endpoints),
        ("discovery", discovery),
        ("subsets", subsets),
        ("balancer", [balancer]),
        ("pool", [f"{pool.max_connections} connections, {pool.max_pending_requests} pending, "
                  f"{pool.max_requests} requests, "
                  + (f"{pool.max_retries} retries at once" if pool.max_retries
                     else "retries within the budget (20% of active, at least 3)"),
                  f"connect timeout {format_duration(pool.connect_timeout)}, "
                  f"idle {format_duration(pool.idle_timeout)}"]),
        ("outlier", _outlier(service)),
        ("health", _health(service)),
    ])


def _outlier(service: Service) -> list[str]:
    outlier = service.outlier_detection
    if outlier is None:
        return []
    after = [f"{outlier.consecutive_5xx} consecutive 5xx" if outlier.consecutive_5xx else "",
             f"{outlier.consecutive_gateway_errors} consecutive gateway errors"
             if outlier.consecutive_gateway_errors else ""]
    after = [reason for reason in after if reason]
    return [f"eject after {' or '.join(after) or 'nothing (both counts are 0)'}",
            f"for {format_duration(outlier.base_ejection_time)} (up to "
            f"{format_duration(outlier.max_ejection_time)}), at most "
            f"{_percent(outlier.max_ejection_percent)} ejected, "
            f"swept every {format_duration(outlier.interval)}"]


def _health(service: Service) -> list[str]:
    check = service.health_check
    if check is None:
        return []
    return [f"GET {check.path} every {format_duration(check.interval)}, "
            f"timeout {format_duration(check.timeout)}",
            f"healthy after {check.healthy_threshold}, "
            f"unhealthy after {check.unhealthy_threshold}"]


# ---------------------------------------------------------------------------- canaries


def _canary_rows(canary: Canary) -> list[str]:
    steps = ("steps " + ", ".join(_percent(step) for step in canary.step_weights)
             if canary.step_weights else f"+{_percent(canary.step_weight)}")
    checks = canary.checks
    criteria = [f"success rate >= {_percent(checks.success_rate_min)}"
                if checks.success_rate_min is not None else "",
                f"p99 <= {format_duration(checks.latency_p99_max)}"
                if checks.latency_p99_max is not None else "",
                "relative to primary" if checks.relative_to_primary else ""]
    return _rows([
        ("route", [f"{canary.route}: {canary.primary} -> {canary.candidate}"]),
        ("steps", [f"{steps} every {format_duration(canary.interval)}, "
                   f"up to {_percent(canary.max_weight)}"]),
        ("checks", [", ".join(c for c in criteria if c) or "none",
                    f"at least {canary.min_requests} requests per interval, "
                    f"roll back after {canary.threshold} failed checks"]),
        ("webhooks", [f"{hook.type} {hook.url} (timeout {format_duration(hook.timeout)})"
                      for hook in canary.webhooks]),
    ])
