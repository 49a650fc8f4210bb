"""``pyproxy convert``: Istio / SMI / Gateway API manifests (and native blocks) → native YAML.

The config is loaded exactly as ``pyproxy run`` would load it (``config.assemble``, with the
importers of ``config.compat``), then written back in the native format
(docs/configuration.md): every
setting that differs from its default, every service, route and canary, in order. What the
importers could not honour is kept as ``# warning: ...`` comments next to the route or
service it concerns (the rest at the top), and each imported route says which manifest it
came from. Loading the output gives back an equal ``Config``; that is what makes the
conversion trustworthy, and the tests check it.

Two values are never copied into the output: the admin token and a fault's header secret.
They are written as ``${PYPROXY_ADMIN_TOKEN}`` / ``${PYPROXY_FAULT_SECRET}`` instead.

This module writes YAML by hand (``yaml`` lives in ``config.load`` only): block style for
sections, flow style (``{service: reviews, subset: v1, weight: 90}``) for small values,
strings quoted whenever a plain scalar could be read as something else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pyproxy.config.assemble import RouteOrigin, assemble
from pyproxy.config.document import ConfigInvalid, ConfigIssue, Document
from pyproxy.config.load import read_documents
from pyproxy.config.model import (
    AccessLog,
    AdminConfig,
    Backend,
    Backoff,
    Canary,
    CanaryChecks,
    Config,
    ConnectionPool,
    DnsDiscovery,
    Endpoint,
    Fault,
    HeaderChanges,
    HeaderRules,
    HealthCheck,
    KubernetesConfig,
    Limits,
    LoadBalancer,
    Match,
    MetricsConfig,
    Mirror,
    OutlierDetection,
    Redirect,
    Retries,
    Rewrite,
    Route,
    Service,
    StringMatch,
    Timeouts,
    UpstreamTLS,
    Webhook,
)

__all__ = ["convert", "convert_command"]

_WIDTH = 96  # a flow-style value longer than this is written in block style


def convert(paths: Sequence[str], env: Mapping[str, str] | None = None
            ) -> tuple[str, tuple[ConfigIssue, ...]]:
    """The native YAML for ``paths`` and the warnings; raises ConfigInvalid on errors."""
    files, documents, _ = read_documents(paths)  # the same reading as load_config
    origins: dict[str, RouteOrigin] = {}
    config, warnings = assemble(documents, os.environ if env is None else env, origins=origins)
    return _Writer(config, warnings, origins, documents, files).text(), warnings


def convert_command(paths: Sequence[str], output: str | None) -> int:
    """CLI: write the native YAML to ``output`` (or stdout); warnings and errors to stderr.
    Exit status 0, or 2 when the input has errors."""
    try:
        text, warnings = convert(paths)
    except ConfigInvalid as invalid:
        for issue in (*invalid.issues, *invalid.warnings):
            print(issue, file=sys.stderr)
        count = len(invalid.issues)
        print(f"not converted: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(warning, file=sys.stderr)
    if output is None or output == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text)
        count = len(warnings)
        print(f"wrote {output}" + (f" ({count} warning{'s' if count != 1 else ''} kept as "
                                   "comments)" if count else ""), file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- writer


class _Writer:
    def __init__(self, config: Config, warnings: Sequence[ConfigIssue],
                 origins: Mapping[str, RouteOrigin],
                 documents: Sequence[Document], files: Sequence[str]):
        self.config = config
        self.origins = origins
        self.files = files
        self.lines: list[str] = []
        self.by_route: dict[str, list[ConfigIssue]] = {}
        self.by_service: dict[str, list[ConfigIssue]] = {}
        self.general: list[ConfigIssue] = []
        self._place(warnings, documents)

    def _place(self, warnings: Sequence[ConfigIssue], documents: Sequence[Document]) -> None:
        """Each warning goes with a route its document made, else a service it names."""
        spans = []  # (file, first line, last line, document)
        for document in documents:
            lines = [line for line in document.lines.values() if line is not None]
            if lines:
                spans.append((document.source, min(lines), max(lines), document))
        routes_of: dict[tuple[str, int | None], list[tuple[str, str]]] = {}
        for name, (source, line, label, path) in self.origins.items():
            if label:
                routes_of.setdefault((source, line), []).append((path, name))
        for warning in warnings:
            found = next((d for source, first, last, d in spans
                          if source == warning.file and warning.line is not None
                          and first <= warning.line <= last), None)
            if found is None:
                self.general.append(warning)
                continue
            routes = routes_of.get((found.source, found.line("")), [])
            service = _service_named(found, self.config)
            if routes:
                # The route made from the rule the warning is about, else the first one.
                route = next((name for path, name in routes if warning.path == path
                              or warning.path.startswith((path + ".", path + "["))),
                             routes[0][1])
                self.by_route.setdefault(route, []).append(warning)
            elif service is not None:
                self.by_service.setdefault(service, []).append(warning)
            else:
                self.general.append(warning)

    def text(self) -> str:
        config = self.config
        self.lines += [f"# Written by `pyproxy convert` from {', '.join(self.files)}.",
                       "# Each imported route names its manifest; '# warning:' lines are what "
                       "pyproxy does not honour."]
        for warning in self.general:
            self.lines += _comment(f"warning: {_where(warning)}: {_what(warning)}")
        self.lines.append("")
        settings = _settings(config)
        for key, value in settings.items():
            self._entry(key, value, 0)
        if config.services:
            self.lines += ["", "services:"]
            for name, service in config.services.items():
                for warning in self.by_service.get(name, []):
                    self.lines += _comment(f"warning: {_where(warning)}: {_what(warning)}", 2)
                self._entry(_key(name), _service(service), 2)
        if config.routes:
            self.lines += ["", "routes:"]
            for route in config.routes:
                source, line, label, _ = self.origins.get(route.name,
                                                          RouteOrigin("", None, "", ""))
                if label:
                    self.lines += _comment(f"from {label} ({source}:{line})", 2)
                for warning in self.by_route.get(route.name, []):
                    self.lines += _comment(f"warning: {_where(warning)}: {_what(warning)}", 2)
                self._item(_route(route), 2, block=True)
        if config.canaries:
            self.lines += ["", "canaries:"]
            for canary in config.canaries:
                self._item(_canary(canary), 2, block=True)
        return "\n".join(self.lines).rstrip() + "\n"

    # ------------------------------------------------------------------ block YAML

    def _entry(self, key: str, value: Any, indent: int) -> None:
        pad = " " * indent
        flow = _flow(value)
        if flow is not None and len(pad) + len(key) + 2 + len(flow) <= _WIDTH:
            self.lines.append(f"{pad}{key}: {flow}")
        elif isinstance(value, dict):
            self.lines.append(f"{pad}{key}:")
            for child, item in value.items():
                self._entry(_key(child), item, indent + 2)
        else:  # a list
            self.lines.append(f"{pad}{key}:")
            for item in value:
                self._item(item, indent + 2)

    def _item(self, value: Any, indent: int, block: bool = False) -> None:
        pad = " " * indent
        flow = None if block else _flow(value)
        if flow is not None and len(pad) + 2 + len(flow) <= _WIDTH:
            self.lines.append(f"{pad}- {flow}")
        elif isinstance(value, dict):
            first = True
            for key, item in value.items():
                before = len(self.lines)
                self._entry(_key(key), item, indent + 2)
                if first:  # "- key: ..." on the dash's line
                    self.lines[before] = f"{pad}- {self.lines[before][indent + 2:]}"
                    first = False
        else:
            self.lines.append(f"{pad}-")
            for item in value:
                self._item(item, indent + 2)


def _service_named(document: Document, config: Config) -> str | None:
    """The native service a DestinationRule (or any manifest with spec.host) is about."""
    spec = document.value.get("spec") if isinstance(document.value, dict) else None
    if not isinstance(spec, dict):
        return None
    host = spec.get("host") or spec.get("service")
    if not isinstance(host, str):
        return None
    host = host.lower()
    return host if host in config.services else next(
        (name for name in config.services if host.startswith(name + ".")), None)


def _where(issue: ConfigIssue) -> str:
    return issue.file if issue.line is None else f"{issue.file}:{issue.line}"


def _what(issue: ConfigIssue) -> str:
    return f"{issue.path}: {issue.message}" if issue.path else issue.message


def _comment(text: str, indent: int = 0) -> list[str]:
    return [f"{' ' * indent}# {line}" for line in text.splitlines() or [""]]


# ---------------------------------------------------------------------------- scalars

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    text = str(value).replace("$", "$$")  # native strings substitute ${VAR}; $$ is a '$'
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text, ensure_ascii=False)


def _key(key: Any) -> str:
    text = str(key)
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text, ensure_ascii=False)


def _flow(value: Any) -> str | None:
    """``value`` in flow style, or None when it does not fit on one line."""
    if isinstance(value, dict):
        parts = [(_key(k), _flow(v)) for k, v in value.items()]
        if any(part is None for _, part in parts):
            return None
        text = "{" + ", ".join(f"{k}: {v}" for k, v in parts) + "}"
    elif isinstance(value, list):
        items = []
        for item in value:
            flow = _flow(item)
            if flow is None:
                return None
            items.append(flow)
        text = "[" + ", ".join(items) + "]"
    else:
        return _scalar(value)
    return text if len(text) <= _WIDTH else None


def _duration(seconds: float) -> str:
    """Exact: loading it gives back the same float."""
    if seconds == 0:
        return "0s"
    millis = seconds * 1000
    if millis.is_integer():
        whole = int(millis)
        return f"{whole // 1000}s" if whole % 1000 == 0 else f"{whole}ms"
    return f"{seconds!r}s"


# ---------------------------------------------------------------------------- values


def _changed(value: Any, default: Any, durations: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of a dataclass value that differ from ``default``, ready to write."""
    durations = set(durations)
    out = {}
    for item in dataclasses.fields(value):
        mine, theirs = getattr(value, item.name), getattr(default, item.name)
        if mine != theirs and mine is not None:
            out[item.name] = _duration(mine) if item.name in durations else mine
    return out


def _settings(config: Config) -> dict[str, Any]:
    default = Config()
    out: dict[str, Any] = {}
    if config.listen != default.listen:
        out["listen"] = _address(config.listen.host, config.listen.port)
    if config.tls is not None:
        out["tls"] = {"cert": config.tls.cert, "key": config.tls.key}
    if config.admin != AdminConfig():
        admin: dict[str, Any] = {}
        if config.admin.listen != AdminConfig().listen:
            admin["listen"] = _address(config.admin.listen.host, config.admin.listen.port)
        if config.admin.token:
            admin["token"] = "${PYPROXY_ADMIN_TOKEN}"  # never copy a secret into a file
        out["admin"] = admin
    if config.debug_headers:
        out["debug_headers"] = True
    timeouts = [item.name for item in dataclasses.fields(Timeouts)]  # all durations
    for key, kind, durations in (("timeouts", Timeouts, timeouts), ("limits", Limits, ()),
                                 ("access_log", AccessLog, ()), ("metrics", MetricsConfig, ())):
        changed = _changed(getattr(config, key), kind(), durations)
        if changed:
            out[key] = changed
    if config.trusted_proxies:
        out["trusted_proxies"] = [str(network) for network in config.trusted_proxies]
    if config.kubernetes is not None:
        kubernetes = _changed(config.kubernetes, KubernetesConfig(),
                              ("watch_timeout", "idle_timeout", "batch_delay"))
        if "gateways" in kubernetes:
            kubernetes["gateway"] = kubernetes.pop("gateways")
        out["kubernetes"] = {key: list(value) if isinstance(value, tuple) else value
                             for key, value in kubernetes.items()}
    return out


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _endpoint(endpoint: Endpoint) -> Any:
    address = ("https://" if endpoint.tls else "") + _address(endpoint.host, endpoint.port)
    if not endpoint.labels:
        return address
    return {"address": address, "labels": dict(endpoint.labels)}


def _service(service: Service) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoints": [_endpoint(e) for e in service.endpoints]}
    if service.subsets:
        out["subsets"] = {name: dict(labels) for name, labels in service.subsets.items()}
    balancer = service.load_balancer
    if balancer != LoadBalancer():
        if balancer.kind == "consistent_hash" and balancer.hash_on is not None:
            hash_on = balancer.hash_on
            key = ({"header": hash_on.header} if hash_on.header else
                   {"cookie": hash_on.cookie} if hash_on.cookie else {"source_ip": True})
            out["load_balancer"] = {"consistent_hash": key}
        else:
            out["load_balancer"] = balancer.kind
    pool = _changed(service.connection_pool, ConnectionPool(),
                    ("connect_timeout", "idle_timeout", "pending_timeout"))
    if pool:
        out["connection_pool"] = pool
    if service.outlier_detection is not None:
        out["outlier_detection"] = _changed(service.outlier_detection, OutlierDetection(),
                                            ("interval", "base_ejection_time",
                                             "max_ejection_time"))
    if service.health_check is not None:
        out["health_check"] = _changed(service.health_check, HealthCheck(),
                                       ("interval", "timeout", "jitter"))
    tls = _changed(service.tls, UpstreamTLS())
    if tls:
        out["tls"] = tls
    if service.discovery is not None:
        out["discovery"] = "dns" if service.discovery == DnsDiscovery() else {
            "type": "dns", "interval": _duration(service.discovery.interval)}
    return out


def _string_match(test: StringMatch) -> dict[str, Any]:
    out: dict[str, Any] = {test.kind: True if test.kind in ("present", "absent") else test.value}
    if test.ignore_case:
        out["ignore_case"] = True
    if test.invert:
        out["invert"] = True
    return out


def _match(match: Match) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if match.path is not None:
        out["path"] = {match.path.kind: match.path.value}
        if match.path.ignore_case:
            out["path"]["ignore_case"] = True
    if match.methods:
        out["method"] = list(match.methods)
    for key, pairs in (("headers", match.headers), ("query", match.query),
                       ("cookies", match.cookies)):
        if pairs:
            out[key] = {name: _string_match(test) for name, test in pairs}
    return out


def _header_changes(changes: HeaderChanges) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if changes.set:
        out["set"] = dict(changes.set)
    if changes.add:
        out["add"] = dict(changes.add)
    if changes.remove:
        out["remove"] = list(changes.remove)
    return out


def _backend(backend: Backend) -> dict[str, Any]:
    out: dict[str, Any] = {"service": backend.service}
    if backend.subset is not None:
        out["subset"] = backend.subset
    out["weight"] = backend.weight
    if backend.headers is not None:
        out["headers"] = _header_changes(backend.headers)
    if backend.response_headers is not None:
        out["response_headers"] = _header_changes(backend.response_headers)
    if backend.rewrite is not None:
        out["rewrite"] = _rewrite(backend.rewrite)
    if backend.redirect is not None:
        out["redirect"] = _redirect(backend.redirect)
    if backend.direct_status is not None:
        out["status"] = backend.direct_status
    return out


def _redirect(redirect: Redirect) -> dict[str, Any]:
    return {key: value for key, value in dataclasses.asdict(redirect).items()
            if value is not None}


def _rewrite(rewrite: Rewrite) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("path_prefix", "path_full", "host"):
        if getattr(rewrite, key) is not None:
            out[key] = getattr(rewrite, key)
    if rewrite.path_regex is not None:
        out["path_regex"] = {"pattern": rewrite.path_regex[0],
                             "substitution": rewrite.path_regex[1]}
    return out


def _retries(retries: Retries) -> dict[str, Any]:
    out: dict[str, Any] = {"attempts": retries.attempts}
    default = Retries()
    if retries.per_try_timeout is not None:
        out["per_try_timeout"] = _duration(retries.per_try_timeout)
    if retries.retry_on != default.retry_on:
        out["retry_on"] = list(retries.retry_on)
    if retries.status_codes:
        out["status_codes"] = list(retries.status_codes)
    if retries.backoff != Backoff():
        out["backoff"] = {"base": _duration(retries.backoff.base),
                          "max": _duration(retries.backoff.max)}
    if retries.buffer_bytes != default.buffer_bytes:
        out["buffer_bytes"] = retries.buffer_bytes
    return out


def _fault(fault: Fault) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if fault.delay is not None:
        out["delay"] = {"fixed": _duration(fault.delay.fixed), "percent": fault.delay.percent}
    if fault.abort is not None:
        out["abort"] = {"status": fault.abort.status, "percent": fault.abort.percent}
    if fault.scope != "request":
        out["scope"] = fault.scope
    if fault.header_secret is not None:
        out["header_secret"] = "${PYPROXY_FAULT_SECRET}"  # never copy a secret into a file
    return out


def _mirror(mirror: Mirror) -> dict[str, Any]:
    out: dict[str, Any] = {"service": mirror.service}
    if mirror.subset is not None:
        out["subset"] = mirror.subset
    out["percent"] = mirror.percent
    return out


def _route(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = {"name": route.name}
    if route.hosts:
        out["hosts"] = list(route.hosts)
    if route.matches:
        out["match"] = [_match(match) for match in route.matches]
    if route.backends:
        out["backends"] = [_backend(backend) for backend in route.backends]
    if route.redirect is not None:
        out["redirect"] = _redirect(route.redirect)
    if route.direct_response is not None:
        out["direct_response"] = {"status": route.direct_response.status}
        if route.direct_response.body:
            out["direct_response"]["body"] = route.direct_response.body
    if route.sticky is not None:
        sticky = route.sticky
        out["sticky"] = ({"cookie": {"name": sticky.cookie.name,
                                     "ttl": _duration(sticky.cookie.ttl)}}
                         if sticky.cookie is not None else {"header": sticky.header})
    if route.fault is not None:
        out["fault"] = _fault(route.fault)
    if route.timeout is not None:
        out["timeout"] = _duration(route.timeout)
    if route.retries is not None:
        out["retries"] = _retries(route.retries)
    if route.mirrors:
        out["mirrors"] = [_mirror(mirror) for mirror in route.mirrors]
    if route.headers is not None and route.headers != HeaderRules():
        headers = {key: _header_changes(getattr(route.headers, key))
                   for key in ("request", "response")
                   if getattr(route.headers, key) != HeaderChanges()}
        out["headers"] = headers
    elif route.headers is not None:
        out["headers"] = {"request": {}}
    if route.rewrite is not None:
        out["rewrite"] = _rewrite(route.rewrite)
    if not route.websocket:
        out["websocket"] = False
    return out


def _canary(canary: Canary) -> dict[str, Any]:
    out: dict[str, Any] = {"name": canary.name, "route": canary.route,
                           "primary": canary.primary, "candidate": canary.candidate}
    default = Canary("x", "x", "x", "x")
    for key in ("interval", "step_weight", "max_weight", "threshold", "min_requests"):
        if getattr(canary, key) != getattr(default, key):
            value = getattr(canary, key)
            out[key] = _duration(value) if key == "interval" else value
    if canary.step_weights:
        out["step_weights"] = list(canary.step_weights)
    checks = _changed(canary.checks, CanaryChecks(), ("latency_p99_max",))
    if checks:
        out["checks"] = checks
    if canary.webhooks:
        out["webhooks"] = [{"type": hook.type, "url": hook.url,
                            **({"timeout": _duration(hook.timeout)}
                               if hook.timeout != Webhook("rollout", "x").timeout else {})}
                           for hook in canary.webhooks]
    return out
