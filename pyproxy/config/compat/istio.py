"""Istio ``networking.istio.io`` (v1alpha3, v1beta1, v1) → the native model.

- **DestinationRule**: ``host`` names a native service; ``subsets`` (label selectors) are
  added to it, and ``trafficPolicy`` sets its load balancer, connection pool and outlier
  detection. A subset that selects no endpoint is kept out of the service (a warning);
  routes to it answer 503, as Istio's would (no healthy upstream).
- **VirtualService**: each ``http[]`` rule becomes one native route, in order (first match
  wins), named ``<vs>-<http[].name or index>``. ``hosts`` become the route's hosts (short
  Kubernetes names match ``NAME.NS...`` too; ``*`` is any host); with ``gateways`` that do
  not include ``mesh``, they are narrowed to the hosts of those Gateways' servers.
  ``delegate`` rules take the delegate VirtualService's rules, each match merged with the
  root's.
- **Gateway**: only its servers' ``hosts`` matter to pyproxy, which is itself the gateway.

Semantics are Istio's (``istio/api`` ``virtual_service.proto``, ``destination_rule.proto``):
a destination with no ``weight`` gets 100 when it is alone, several destinations with a
total weight of 0 are rejected (as ``istioctl validate`` does), a fault without a
``percentage`` injects nothing, ``mirror`` without ``mirrorPercentage`` mirrors 100%,
``redirect`` defaults to 301, ``retries`` without ``retryOn`` retry connect failures and
refused streams. Faults are drawn once per request before routing (Envoy's fault filter),
so retries never retry an injected abort.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import replace
from typing import Any, Literal, TypedDict

from pyproxy.config.compat.common import (
    ImportContext,
    Invalid,
    Manifest,
    Node,
    intersect_hosts,
    is_host,
    qualified_names,
)
from pyproxy.config.model import (
    AbortFault,
    Backend,
    Backoff,
    ConnectionPool,
    ConsistentHash,
    DelayFault,
    DirectResponse,
    Fault,
    HeaderChanges,
    HeaderRules,
    LoadBalancer,
    Match,
    Mirror,
    OutlierDetection,
    PathMatch,
    PathMatchKind,
    Redirect,
    Retries,
    Rewrite,
    Route,
    Service,
    StringMatch,
    StringMatchKind,
    kubernetes_short_name,
)

# Methods a prefix or regex method match is expanded over (pyproxy matches a method list).
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_NOT_ROUTED = "pyproxy routes HTTP only (the http: rules)"
_SOURCE_SELECTOR = ("it selects client workloads, not requests; pyproxy applies the rule to "
                    "every client")


def import_istio(ctx: ImportContext, manifests: list[Manifest]) -> None:
    gateways: dict[tuple[str, str], list[str | None]] = {}
    for m in manifests:
        if m.kind == "Gateway":
            try:
                gateways[m.key] = _gateway_hosts(ctx, m)
            except Invalid:
                gateways[m.key] = []
    rules = [m for m in manifests if m.kind == "DestinationRule"]
    _destination_rules(ctx, rules)
    services = [m for m in manifests if m.kind == "VirtualService"]
    names = qualified_names(services)
    delegates = {m.key: m for m in services
                 if not (m.doc.value.get("spec") or {}).get("hosts")}
    used_delegates: set[tuple[str, str]] = set()
    hosts_seen: dict[str, Manifest] = {}
    for m in services:
        if m.key in delegates:
            continue
        try:
            _virtual_service(ctx, m, names[m.key], gateways, delegates, used_delegates,
                             hosts_seen)
        except Invalid:
            pass
    for key, m in delegates.items():
        if key not in used_delegates:
            ctx.warn(m, "spec.hosts", "has no hosts, so it is only a delegate, and no "
                                      "VirtualService delegates to it: it routes nothing")


# ---------------------------------------------------------------------------- Gateway


def _gateway_hosts(ctx: ImportContext, m: Manifest) -> list[str | None]:
    """The hosts a Gateway's HTTP servers accept (None: any host)."""
    spec = m.spec(ctx).fields(["servers"], ignored=["selector"])
    hosts: list[str | None] = []
    ports: set[int] = set()
    for server in spec.get("servers", Node(m, [], "spec.servers", ctx)).items():
        fields = server.fields(["port", "hosts", "tls", "name", "bind", "defaultEndpoint"])
        port = fields.get("port")
        protocol = "HTTP"
        if port is not None:
            port_fields = port.fields(["number", "protocol", "name", "targetPort"])
            protocol = port_fields["protocol"].text().upper() if "protocol" in port_fields \
                else "HTTP"
            if "number" in port_fields:
                ports.add(port_fields["number"].integer(0, 65535))
        tls = fields.get("tls")
        mode = None
        if tls is not None and isinstance(tls.value, dict):
            mode = str(tls.value.get("mode", "SIMPLE")).upper()
        if protocol in ("TCP", "TLS", "MONGO", "REDIS") or mode in ("PASSTHROUGH",
                                                                    "AUTO_PASSTHROUGH"):
            server.warn(f"is not served: protocol {protocol}"
                        f"{' with TLS passthrough' if mode and 'PASSTHROUGH' in mode else ''}; "
                        "pyproxy routes HTTP only")
            continue
        if protocol in ("HTTPS",) or tls is not None:
            server.warn("TLS settings are not honoured: pyproxy terminates TLS with its own "
                        "tls: setting (cert and key files), for all hosts")
        if protocol in ("HTTP2", "GRPC"):
            server.warn(f"protocol {protocol}: pyproxy serves HTTP/1.1 on its listener")
        for key in ("bind", "defaultEndpoint"):
            if key in fields:
                fields[key].warn(f"{key} is not honoured: pyproxy listens where listen: says")
        for host_node in fields.get("hosts", Node(m, [], "", ctx)).items():
            host = host_node.text().rpartition("/")[2].lower()  # "ns/host", "*/host", "./host"
            if not is_host(host):
                raise host_node.error(f"must be a host such as 'bookinfo.example.com' or "
                                      f"'*', got {host!r}")
            hosts.append(None if host == "*" else host)
    if len(ports) > 1:
        m.spec(ctx).key("servers").warn(
            f"servers on ports {', '.join(map(str, sorted(ports)))} are all served on "
            "pyproxy's one listener (listen:)")
    return hosts


# ---------------------------------------------------------------------------- DestinationRule


def _destination_rules(ctx: ImportContext, rules: list[Manifest]) -> None:
    applied: dict[str, Manifest] = {}  # service → the DestinationRule whose policy it has
    wildcards: list[tuple[Manifest, str]] = []
    for m in rules:
        try:
            spec = m.spec(ctx)
            host = spec.key("host").host()
        except Invalid:
            continue
        if host.startswith("*"):
            wildcards.append((m, host))
            continue
        service = ctx.resolve(host, m.namespace)
        if service is None:
            if not ctx.declared(host):
                ctx.warn(m, "spec.host", f"applies to nothing: {ctx.missing_service(host)}")
            continue
        _apply_rule(ctx, m, service, applied)
    for m, host in wildcards:  # the most specific rule wins: wildcards fill in the rest
        matched = [name for name in ctx.services if name not in applied
                   and _wildcard_covers(host, name)]
        if not matched:
            ctx.warn(m, "spec.host", f"{host!r} covers no native service without a "
                                     "DestinationRule of its own")
        for service in matched:
            _apply_rule(ctx, m, service, applied, wildcard=True)


def _wildcard_covers(host: str, service: str) -> bool:
    """Whether ``*.suffix`` covers a native service, which stands for every namespace's
    ``NAME.NS.svc.cluster.local``."""
    if host == "*" or "svc.cluster.local".endswith(host[2:]) or host.endswith(
            ".svc.cluster.local"):
        return True
    return service.endswith(host[1:])


_POLICY_KEYS = ("loadBalancer", "connectionPool", "outlierDetection", "tls",
                "portLevelSettings", "tunnel", "proxyProtocol", "retryBudget")


def _apply_rule(ctx: ImportContext, m: Manifest, name: str, applied: dict[str, Manifest],
                wildcard: bool = False) -> None:
    spec = m.spec(ctx)
    try:
        fields = spec.fields(["host", "trafficPolicy", "subsets"], {
            "workloadSelector": "pyproxy applies the rule to all traffic it proxies",
        }, ignored=["exportTo"])
    except Invalid:
        return
    service = ctx.services.get(name)
    if service is None:  # declared natively, but its definition has errors (reported there)
        return
    subsets = dict(service.subsets)
    empty = ctx.empty_subsets.setdefault(name, {})
    for subset in fields.get("subsets", Node(m, [], "", ctx)).items():
        try:
            sub = subset.fields(["name", "labels", "trafficPolicy"])
            if "name" not in sub:
                raise subset.error("needs a name")
            subset_name = sub["name"].text()
            if "/" in subset_name or any(c.isspace() for c in subset_name):
                raise sub["name"].error(f"must be a name without '/' or spaces, got "
                                        f"{subset_name!r}")
            labels = sub["labels"].labels() if "labels" in sub else {}
            if subset_name in subsets and dict(subsets[subset_name]) != labels:
                raise sub["name"].error(
                    f"subset {subset_name!r} of service {name!r} is also defined in the "
                    f"native services: block with other labels; define it in one place")
            if "trafficPolicy" in sub:
                sub["trafficPolicy"].warn(
                    f"trafficPolicy of subset {subset_name!r} is not honoured: pyproxy has "
                    f"one policy per service (service {name!r} uses the rule's top-level "
                    "trafficPolicy)")
            selected = [ep for ep in service.endpoints
                        if all(ep.labels.get(k) == v for k, v in labels.items())]
            if selected:
                subsets[subset_name] = labels
            else:
                wanted = ", ".join(f"{k}={v}" for k, v in labels.items())
                subset.warn(f"subset {subset_name!r} selects no endpoint of native service "
                            f"{name!r} (none has labels {wanted}); requests routed to it get "
                            "503 until an endpoint with these labels is added")
                empty[subset_name] = labels
        except Invalid:
            continue
    service = replace(service, subsets=subsets)
    policy = fields.get("trafficPolicy")
    if policy is not None:
        if name in applied:
            policy.warn(f"is not honoured for service {name!r}: {applied[name].label} "
                        "already sets its policy (the first DestinationRule for a host wins)")
        else:
            try:
                service = _traffic_policy(ctx, policy, service)
                applied[name] = m
            except Invalid:
                pass
    ctx.services[name] = service


class _PolicyChanges(TypedDict, total=False):
    """What a DestinationRule's trafficPolicy changes on the native service."""

    load_balancer: LoadBalancer
    connection_pool: ConnectionPool
    outlier_detection: OutlierDetection


def _traffic_policy(ctx: ImportContext, node: Node, service: Service) -> Service:
    fields = node.fields(["loadBalancer", "connectionPool", "outlierDetection", "tls",
                          "retryBudget"], {
        "portLevelSettings": "pyproxy has one policy per service, not per port",
        "tunnel": "pyproxy does not tunnel upstream connections",
        "proxyProtocol": "pyproxy does not send the PROXY protocol upstream",
    })
    changes: _PolicyChanges = {}
    if "loadBalancer" in fields:
        changes["load_balancer"] = _load_balancer(fields["loadBalancer"])
    if "connectionPool" in fields:
        changes["connection_pool"] = _connection_pool(fields["connectionPool"],
                                                      service.connection_pool)
    if "outlierDetection" in fields:
        changes["outlier_detection"] = _outlier_detection(fields["outlierDetection"])
    if "tls" in fields:
        tls = fields["tls"]
        mode = tls.value.get("mode", "DISABLE") if isinstance(tls.value, dict) else None
        simple_and_done = mode == "SIMPLE" and service.endpoints and all(
            endpoint.tls for endpoint in service.endpoints)  # https:// endpoints do it
        if mode != "DISABLE" and not simple_and_done:
            tls.warn(f"tls mode {mode} is not honoured: pyproxy does no Istio mutual TLS; "
                     "upstream TLS comes from https:// endpoints and the native service's tls:")
    if "retryBudget" in fields:
        budget = fields["retryBudget"].value
        if not isinstance(budget, dict) or float(budget.get("percent", 20) or 20) != 20 or int(
                budget.get("minRetryConcurrency", 3) or 3) != 3 or budget.get("budgetInterval"):
            fields["retryBudget"].warn("retryBudget is not honoured: pyproxy's retry budget is "
                                       "fixed at 20% of active requests, at least 3")
    for key, value in changes.items():
        default = getattr(Service(name="x", endpoints=()), key)
        if getattr(service, key) != default and getattr(service, key) != value:
            fields[_POLICY_FIELD[key]].warn(f"overrides the {key} the native services: "
                                            "block gives this service")
    return replace(service, **changes)


_POLICY_FIELD = {"load_balancer": "loadBalancer", "connection_pool": "connectionPool",
                 "outlier_detection": "outlierDetection"}

_SIMPLE_BALANCERS: dict[str, Literal["round_robin", "least_request", "random"]] = {
    "UNSPECIFIED": "round_robin", "ROUND_ROBIN": "round_robin", "PASSTHROUGH": "round_robin",
    "RANDOM": "random", "LEAST_CONN": "least_request", "LEAST_REQUEST": "least_request"}


def _load_balancer(node: Node) -> LoadBalancer:
    fields = node.fields(["simple", "consistentHash", "localityLbSetting"], {
        "warmupDurationSecs": "pyproxy has no slow start for new endpoints",
        "warmup": "pyproxy has no slow start for new endpoints",
        "zoneAwareLbSetting": "pyproxy knows no zones",
    })
    if "localityLbSetting" in fields:
        locality = fields["localityLbSetting"]
        if not (isinstance(locality.value, dict) and locality.value.get("enabled") is False):
            locality.warn("localityLbSetting is not honoured: pyproxy knows no localities")
    if "simple" in fields and "consistentHash" in fields:
        raise fields["consistentHash"].error("cannot be combined with simple: give one")
    if "consistentHash" in fields:
        return _consistent_hash(fields["consistentHash"])
    if "simple" in fields:
        simple = fields["simple"].choice("UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH",
                                         "ROUND_ROBIN", "LEAST_REQUEST")
        if simple == "PASSTHROUGH":
            fields["simple"].warn("PASSTHROUGH is not honoured: pyproxy balances over the "
                                  "service's endpoints (round robin)")
        return LoadBalancer(_SIMPLE_BALANCERS[simple])
    return LoadBalancer()


def _consistent_hash(node: Node) -> LoadBalancer:
    fields = node.fields(["httpHeaderName", "httpCookie", "useSourceIp"], {
        "httpQueryParameterName": "pyproxy hashes on a header, a cookie or the client "
                                  "address only; round robin is used",
        "ringHash": "pyproxy uses its own consistent hash (same soft affinity)",
        "maglev": "pyproxy uses its own consistent hash (same soft affinity)",
        "minimumRingSize": "pyproxy uses its own consistent hash (same soft affinity)",
    })
    if "httpHeaderName" in fields:
        return LoadBalancer("consistent_hash", ConsistentHash(header=fields[
            "httpHeaderName"].header_name()))
    if "httpCookie" in fields:
        cookie = fields["httpCookie"].fields(["name", "ttl"], {
            "path": "the cookie is only read, never set, by pyproxy",
            "attributes": "the cookie is only read, never set, by pyproxy",
        })
        if "name" not in cookie:
            raise fields["httpCookie"].error("needs a name")
        if "ttl" in cookie:
            cookie["ttl"].warn("ttl is not honoured: pyproxy hashes on the cookie when the "
                               "client sends it but does not generate it (use the route's "
                               "sticky: setting for a cookie pyproxy sets)")
        return LoadBalancer("consistent_hash", ConsistentHash(cookie=cookie["name"].text()))
    if "useSourceIp" in fields and fields["useSourceIp"].boolean():
        return LoadBalancer("consistent_hash", ConsistentHash(source_ip=True))
    return LoadBalancer()


def _connection_pool(node: Node, pool: ConnectionPool) -> ConnectionPool:
    fields = node.fields(["tcp", "http"])
    if "tcp" in fields:
        tcp = fields["tcp"].fields(["maxConnections", "connectTimeout"], {
            "tcpKeepalive": "pyproxy does not set TCP keepalive on upstream connections",
            "maxConnectionDuration": "pyproxy keeps pooled connections until idle_timeout",
            "idleTimeout": "use connectionPool.http.idleTimeout (pyproxy's pool idle_timeout)",
        })
        if "maxConnections" in tcp and tcp["maxConnections"].integer() > 0:
            pool = replace(pool, max_connections=tcp["maxConnections"].integer())
        if "connectTimeout" in tcp:
            pool = replace(pool, connect_timeout=tcp["connectTimeout"].duration())
    if "http" in fields:
        http = fields["http"].fields([
            "http1MaxPendingRequests", "http2MaxRequests", "maxRetries", "idleTimeout",
            "maxRequestsPerConnection", "h2UpgradePolicy", "useClientProtocol"], {
            "maxConcurrentStreams": "an HTTP/2 setting; pyproxy speaks HTTP/1.1 upstream",
            "http2KeepAlive": "an HTTP/2 setting; pyproxy speaks HTTP/1.1 upstream",
        })
        # 0: unset (Istio's default)
        if "http1MaxPendingRequests" in http and http["http1MaxPendingRequests"].integer() > 0:
            pool = replace(pool,
                           max_pending_requests=http["http1MaxPendingRequests"].integer())
        if "http2MaxRequests" in http and http["http2MaxRequests"].integer() > 0:
            pool = replace(pool, max_requests=http["http2MaxRequests"].integer())
        if "maxRetries" in http and http["maxRetries"].integer() > 0:
            pool = replace(pool, max_retries=http["maxRetries"].integer())
        if "idleTimeout" in http:
            pool = replace(pool, idle_timeout=http["idleTimeout"].duration())
        if "maxRequestsPerConnection" in http and http["maxRequestsPerConnection"].integer() > 0:
            http["maxRequestsPerConnection"].warn(
                "maxRequestsPerConnection is not honoured: pyproxy reuses an upstream "
                "connection until it is idle for idle_timeout")
        if "h2UpgradePolicy" in http and http["h2UpgradePolicy"].value == "UPGRADE":
            http["h2UpgradePolicy"].warn("UPGRADE is not honoured: pyproxy speaks HTTP/1.1 "
                                         "upstream")
    return pool


def _outlier_detection(node: Node) -> OutlierDetection:
    fields = node.fields(["consecutive5xxErrors", "consecutiveGatewayErrors",
                          "consecutiveErrors", "interval", "baseEjectionTime",
                          "maxEjectionPercent", "minHealthPercent"], {
        "splitExternalLocalOriginErrors": "pyproxy counts connect failures and resets as "
                                          "gateway errors (consecutiveGatewayErrors)",
        "consecutiveLocalOriginFailures": "pyproxy counts connect failures and resets as "
                                          "gateway errors (consecutiveGatewayErrors)",
        "outlierDetectionHttpErrorCodes": "pyproxy counts 5xx responses (and 502/503/504 as "
                                          "gateway errors), not chosen codes",
    })
    # Istio's defaults (Envoy's): 5 consecutive 5xx, swept every 10s, ejected for 30s,
    # at most 10% of the endpoints (pyproxy: at least one, see resilience.outlier).
    outlier = OutlierDetection(consecutive_5xx=5, max_ejection_percent=10.0)
    if "consecutive5xxErrors" in fields:
        outlier = replace(outlier, consecutive_5xx=fields["consecutive5xxErrors"].integer(0))
    if "consecutiveGatewayErrors" in fields:
        outlier = replace(outlier, consecutive_gateway_errors=fields[
            "consecutiveGatewayErrors"].integer(0))
    if "consecutiveErrors" in fields:
        fields["consecutiveErrors"].warn(
            "consecutiveErrors is deprecated: read as consecutiveGatewayErrors (502, 503, 504 "
            "and connection failures), as it was documented; current Istio ignores it")
        if "consecutiveGatewayErrors" not in fields:
            outlier = replace(outlier, consecutive_gateway_errors=fields[
                "consecutiveErrors"].integer(0))
    if "interval" in fields:
        outlier = replace(outlier, interval=fields["interval"].duration())
    if "baseEjectionTime" in fields:
        outlier = replace(outlier, base_ejection_time=fields["baseEjectionTime"].duration())
    if "maxEjectionPercent" in fields and fields["maxEjectionPercent"].integer(0, 100) > 0:
        outlier = replace(outlier, max_ejection_percent=float(
            fields["maxEjectionPercent"].integer(0, 100)))
    if "minHealthPercent" in fields:
        outlier = replace(outlier, panic_threshold=float(
            fields["minHealthPercent"].integer(0, 100)))
    if outlier.base_ejection_time > outlier.max_ejection_time:
        outlier = replace(outlier, max_ejection_time=outlier.base_ejection_time)
    return outlier


# ---------------------------------------------------------------------------- VirtualService


def _virtual_service(ctx: ImportContext, m: Manifest, base: str,
                     gateways: dict[tuple[str, str], list[str | None]],
                     delegates: dict[tuple[str, str], Manifest],
                     used_delegates: set[tuple[str, str]], hosts_seen: dict[str, Manifest]
                     ) -> None:
    spec = m.spec(ctx).fields(["hosts", "gateways", "http"], {
        "tcp": _NOT_ROUTED, "tls": _NOT_ROUTED,
    }, ignored=["exportTo"])
    hosts = _hosts(ctx, m, spec)
    for host in hosts or ("*",):
        if host in hosts_seen and hosts_seen[host] is not m:
            spec["hosts"].warn(f"host {host!r} is also routed by {hosts_seen[host].label}: "
                               "pyproxy takes both in file order (first match wins), where "
                               "Istio's merge is undefined outside gateways")
        hosts_seen.setdefault(host, m)
    if "gateways" in spec:
        bound = _gateway_bound_hosts(ctx, m, spec["gateways"], hosts, gateways)
        if bound is None:
            return
        hosts = bound
    rules = spec["http"].items() if "http" in spec else []
    if not rules:
        ctx.warn(m, "spec", "has no http rules: it routes nothing for pyproxy")
    catch_all: str | None = None
    for index, rule in enumerate(rules):
        try:
            fields = rule.value if isinstance(rule.value, dict) else {}
            label = fields.get("name") if isinstance(fields.get("name"), str) else str(index)
            if "delegate" in fields:
                made = _delegated(ctx, m, rule, f"{base}-{label}", hosts, delegates,
                                  used_delegates)
            else:
                made = [_rule(ctx, m, rule, f"{base}-{label}", hosts, ())]
        except Invalid:
            continue
        for route in made:
            if catch_all is not None:
                rule.warn(f"never matches: rule {catch_all!r} before it matches every "
                          "request for these hosts (first match wins)")
            ctx.add_route(route, m, rule.path)
        if made and any(not route.matches or Match() in route.matches for route in made):
            catch_all = catch_all or made[-1].name
    if catch_all is None and hosts and rules:
        # Istio owns a VirtualService's hosts: a request no rule matches gets 404 (NR), it
        # does not fall through to the service (or to later routes) as in pyproxy's table.
        try:
            name = ctx.route_name(m, "spec.http", f"{base}-unmatched")
        except Invalid:
            return
        ctx.add_route(Route(name=name, hosts=hosts, direct_response=DirectResponse(404)), m,
                      "spec.http")


def _hosts(ctx: ImportContext, m: Manifest, spec: dict[str, Node]) -> tuple[str, ...]:
    if "hosts" not in spec or not spec["hosts"].items():
        raise ctx.fail(m, "spec.hosts", "needs at least one host (only a delegate "
                                        "VirtualService has none)")
    hosts = []
    for node in spec["hosts"].items():
        host = node.host()
        if host == "*":
            return ()
        hosts.append(_native_host(ctx, host))
    return tuple(dict.fromkeys(hosts))


def _native_host(ctx: ImportContext, host: str) -> str:
    """A Kubernetes FQDN as the short name the route table matches in every form."""
    short = kubernetes_short_name(host)
    if short is not None and (host.count(".") >= 2 or short in ctx.declared_services):
        return short
    return host


def _gateway_bound_hosts(ctx: ImportContext, m: Manifest, node: Node, hosts: tuple[str, ...],
                         gateways: dict[tuple[str, str], list[str | None]]
                         ) -> tuple[str, ...] | None:
    """The hosts a VirtualService answers for through its gateways (None: for none)."""
    names = [item.text() for item in node.items()]
    if not names or "mesh" in names:
        return hosts  # sidecar traffic: the VirtualService's own hosts
    result: set[str | None] = set()  # None: any host
    for item, name in zip(node.items(), names, strict=True):
        namespace, _, gateway = name.rpartition("/")
        key = (namespace or m.namespace, gateway)
        if key not in gateways:
            item.warn(f"gateway {name!r} is not among the manifests: its server hosts do not "
                      "narrow this VirtualService's hosts")
            return hosts
        for allowed in gateways[key]:
            for host in hosts or (None,):
                both = intersect_hosts(host, allowed)
                if both is not False:
                    result.add(both)
    if not result:
        node.warn("no host of this VirtualService is served by its gateways: it routes nothing")
        return None
    if None in result:
        return ()
    return tuple(sorted(_native_host(ctx, h) for h in result if h is not None))


def _delegated(ctx: ImportContext, m: Manifest, rule: Node, base: str, hosts: tuple[str, ...],
               delegates: dict[tuple[str, str], Manifest],
               used_delegates: set[tuple[str, str]]) -> list[Route]:
    """A root rule's ``delegate``: the delegate's rules, each match merged with the root's."""
    fields = rule.fields(["name", "match", "delegate"], {
        key: "a rule with delegate takes everything else from the delegate's rules"
        for key in ("route", "redirect", "directResponse", "rewrite", "timeout", "retries",
                    "fault", "mirror", "mirrors", "mirrorPercentage", "mirrorPercent",
                    "headers", "corsPolicy")})
    ref = fields["delegate"].fields(["name", "namespace"])
    if "name" not in ref:
        raise fields["delegate"].error("needs a name")
    key = (ref["namespace"].text() if "namespace" in ref else m.namespace, ref["name"].text())
    delegate = delegates.get(key)
    if delegate is None:
        raise fields["delegate"].error(f"VirtualService {key[1]!r} (namespace {key[0]}) is not "
                                       "among the manifests, or it has hosts (a delegate must "
                                       "have none)")
    used_delegates.add(key)
    root_matches = _matches(fields["match"]) if "match" in fields else ()
    spec = delegate.spec(ctx).fields(["http"], {"tcp": _NOT_ROUTED, "tls": _NOT_ROUTED},
                                     ignored=["exportTo", "gateways", "hosts"])
    routes = []
    for index, child in enumerate(spec["http"].items() if "http" in spec else []):
        label = child.value.get("name") if isinstance(child.value, dict) and isinstance(
            child.value.get("name"), str) else str(index)
        try:
            routes.append(_rule(ctx, delegate, child, f"{base}-{delegate.name}-{label}", hosts,
                                root_matches))
        except Invalid:
            continue
    return routes


_RULE_FIELDS = ["name", "match", "route", "redirect", "directResponse", "rewrite", "timeout",
                "retries", "fault", "mirror", "mirrors", "mirrorPercentage", "mirrorPercent",
                "headers"]


def _rule(ctx: ImportContext, m: Manifest, rule: Node, name: str, hosts: tuple[str, ...],
          root_matches: tuple[Match, ...]) -> Route:
    fields = rule.fields(_RULE_FIELDS, {
        "corsPolicy": "pyproxy has no CORS handling; requests are routed as if it were absent",
    })
    actions = [key for key in ("route", "redirect", "directResponse") if key in fields]
    if len(actions) != 1:
        raise rule.error("needs exactly one of route, redirect, directResponse or delegate"
                         + (f" (has {', '.join(actions)})" if actions else ""))
    matches = _matches(fields["match"]) if "match" in fields else ()
    if root_matches:
        matches = tuple(_merge_match(root, own) for root in root_matches
                        for own in (matches or (Match(),)))
    values: dict[str, Any] = {"name": ctx.route_name(m, rule.path, name), "hosts": hosts,
                    "matches": matches}
    response_headers = HeaderChanges()
    if "route" in fields:
        values["backends"], response_headers = _backends(ctx, fields["route"])
    elif "redirect" in fields:
        values["redirect"] = _redirect(fields["redirect"], matches)
    else:
        values["direct_response"] = _direct_response(fields["directResponse"])
    if "rewrite" in fields:
        if "redirect" in fields:
            raise fields["rewrite"].error("cannot be combined with redirect")
        values["rewrite"] = _rewrite(fields["rewrite"])
    if "timeout" in fields:
        values["timeout"] = fields["timeout"].duration(zero=True)
    if "retries" in fields:
        values["retries"] = _retries(fields["retries"])
    if "fault" in fields:
        values["fault"] = _fault(fields["fault"])
    values["mirrors"] = _mirrors(ctx, fields)
    headers = _headers(fields["headers"]) if "headers" in fields else HeaderRules()
    if response_headers != HeaderChanges():
        headers = HeaderRules(headers.request, _join(headers.response, response_headers))
    if headers != HeaderRules():
        values["headers"] = headers
    return Route(**values)


def _merge_match(root: Match, own: Match) -> Match:
    """A delegate's match within its root's: the delegate's conditions win where both set
    one (Istio requires the delegate's to be the narrower)."""
    def merged(first: tuple[tuple[str, StringMatch], ...],
               second: tuple[tuple[str, StringMatch], ...]
               ) -> tuple[tuple[str, StringMatch], ...]:
        names = {name for name, _ in second}
        return tuple(pair for pair in first if pair[0] not in names) + second

    return Match(path=own.path or root.path, methods=own.methods or root.methods,
                 headers=merged(root.headers, own.headers), query=merged(root.query, own.query),
                 cookies=merged(root.cookies, own.cookies))


# ---------------------------------------------------------------------------- matches


def _string_match(node: Node, *, invert: bool = False) -> StringMatch:
    """Istio ``StringMatch``: exact, prefix or regex (RE2, full match); ``{}`` or nothing
    means "present"."""
    if node.value is None or node.value == {}:
        return StringMatch("present", invert=invert)
    fields = node.fields(["exact", "prefix", "regex"])
    if len(fields) != 1:
        raise node.error("needs exactly one of exact, prefix or regex")
    name, value = next(iter(fields.items()))
    kind: StringMatchKind = "regex" if name == "regex" else "prefix" if name == "prefix" \
        else "exact"
    text = value.regex() if kind == "regex" else value.text(empty=True)
    return StringMatch(kind, text, invert=invert)


def _matches(node: Node) -> tuple[Match, ...]:
    matches = []
    for item in node.items():
        match = _match(item)
        if match is not None:
            matches.append(match)
    if node.items() and not matches:
        node.warn("no match entry can ever match: the rule is skipped")
        raise Invalid
    return tuple(matches)


def _match(node: Node) -> Match | None:
    fields = node.fields(["uri", "method", "authority", "headers", "queryParams",
                          "ignoreUriCase", "withoutHeaders", "port", "scheme", "gateways",
                          "sourceLabels", "sourceNamespace"], ignored=["name", "statPrefix"])
    path = None
    if "uri" in fields:
        uri = _string_match(fields["uri"])
        if uri.kind == "present":
            raise fields["uri"].error("needs exactly one of exact, prefix or regex")
        ignore_case = "ignoreUriCase" in fields and fields["ignoreUriCase"].boolean()
        kind: PathMatchKind = "regex" if uri.kind == "regex" else "prefix" \
            if uri.kind == "prefix" else "exact"
        path = PathMatch(kind, uri.value, ignore_case and kind != "regex")
    methods: tuple[str, ...] = ()
    if "method" in fields:
        method = _string_match(fields["method"])
        if method.kind == "exact":
            methods = (method.value.upper(),)
        else:
            pattern = re.compile(method.value) if method.kind == "regex" else None
            methods = tuple(m for m in _METHODS if (pattern.fullmatch(m) if pattern
                                                    else m.startswith(method.value)))
            if not methods:
                fields["method"].warn(f"{method.kind} {method.value!r} matches no standard "
                                      "method: this match entry never matches")
                return None
            fields["method"].warn(f"{method.kind} method match is read as the method list "
                                  f"{', '.join(methods)} (pyproxy matches methods from a list)")
    headers: list[tuple[str, StringMatch]] = []
    if "authority" in fields:
        headers.append(("host", _string_match(fields["authority"])))
    for name, value in (fields["headers"].entries() if "headers" in fields else []):
        lower = name.lower()
        if lower in ("uri", "scheme", "method", "authority"):
            value.warn(f"header key {name!r} is ignored (Istio ignores it too)")
            continue
        headers.append((_header_key(value, name), _string_match(value)))
    for name, value in (fields["withoutHeaders"].entries() if "withoutHeaders" in fields else []):
        headers.append((_header_key(value, name), _string_match(value, invert=True)))
    query = [(name, _string_match(value))
             for name, value in (fields["queryParams"].entries() if "queryParams" in fields
                                 else [])]
    if "port" in fields:
        fields["port"].warn("port is not honoured: pyproxy serves one listener, so this "
                            "condition matches every request")
    if "scheme" in fields:
        fields["scheme"].warn("scheme is not honoured: pyproxy's listener has one scheme, so "
                              "this condition matches every request")
    for key in ("sourceLabels", "sourceNamespace", "gateways"):
        if key in fields:
            fields[key].warn(f"{key} is not honoured: {_SOURCE_SELECTOR}")
    return Match(path=path, methods=methods, headers=tuple(headers), query=tuple(query))


def _header_key(node: Node, name: str) -> str:
    return Node(node.m, name, node.path, node.ctx).header_name()


# ---------------------------------------------------------------------------- actions


def _destination(ctx: ImportContext, node: Node) -> tuple[str, str | None, bool]:
    """(native service, subset, whether the subset selects no endpoint)."""
    fields = node.fields(["host", "subset", "port"])
    if "host" not in fields:
        raise node.error("needs a host")
    host = fields["host"].text()
    service = ctx.resolve(host, node.m.namespace)
    if service is None:
        if ctx.declared(host):
            raise Invalid  # the native service has errors of its own
        raise fields["host"].error(f"destination host {host!r} is unknown: "
                                   f"{ctx.missing_service(host)}")
    subset = fields["subset"].text() if "subset" in fields else None
    if subset is not None and subset not in ctx.services[service].subsets:
        if subset in ctx.empty_subsets.get(service, {}):
            return service, subset, True
        known = ", ".join(ctx.services[service].subsets) or "none"
        raise fields["subset"].error(f"service {service!r} has no subset {subset!r} "
                                     f"(subsets: {known}); define it in a DestinationRule "
                                     "(or the native services: block)")
    return service, subset, False


def _backends(ctx: ImportContext, node: Node) -> tuple[tuple[Backend, ...], HeaderChanges]:
    items = node.items()
    if not items:
        raise node.error("needs at least one destination")
    backends: list[Backend] = []
    response: list[HeaderChanges] = []
    failed = False
    for item in items:
        try:
            fields = item.fields(["destination", "weight", "headers"])
            if "destination" not in fields:
                raise item.error("needs a destination")
            service, subset, empty = _destination(ctx, fields["destination"])
            weight = fields["weight"].integer(0) if "weight" in fields else 0
            rules = _headers(fields["headers"]) if "headers" in fields else HeaderRules()
        except Invalid:
            failed = True
            continue
        request = rules.request if rules.request != HeaderChanges() else None
        backend = Backend(service, subset, float(weight), headers=request,
                          direct_status=503 if empty else None)
        for index, known in enumerate(backends):
            if known.name == backend.name:
                item.warn(f"destination {backend.name} is listed twice: pyproxy sends it the "
                          "sum of the weights, with the first one's headers")
                backends[index] = replace(known, weight=known.weight + backend.weight)
                break
        else:
            backends.append(backend)
            response.append(rules.response)
    if failed:
        raise Invalid
    if len(backends) == 1 and len(items) == 1 and backends[0].weight == 0:
        backends[0] = replace(backends[0], weight=100.0)  # a lone destination gets it all
    elif len(items) > 1 and sum(b.weight for b in backends) == 0:
        raise node.error("total destination weight = 0 (Istio rejects this): give the "
                         "destinations weights")
    joined = HeaderChanges()
    if any(changes != HeaderChanges() for changes in response):
        if len(backends) == 1:
            joined = response[0]  # the only destination: the route's response is its response
        else:
            # Each destination's response headers go with the responses it gives.
            backends = [replace(backend, response_headers=changes)
                        if changes != HeaderChanges() else backend
                        for backend, changes in zip(backends, response, strict=True)]
    return tuple(backends), joined


def _headers(node: Node) -> HeaderRules:
    fields = node.fields(["request", "response"])

    def operations(key: str) -> HeaderChanges:
        if key not in fields:
            return HeaderChanges()
        ops = fields[key].fields(["set", "add", "remove"])
        pairs = {op: tuple((_header_key(value, name), value.header_value())
                           for name, value in ops[op].entries()) if op in ops else ()
                 for op in ("set", "add")}
        remove = tuple(item.header_name() for item in ops["remove"].items()) \
            if "remove" in ops else ()
        return HeaderChanges(set=pairs["set"], add=pairs["add"], remove=remove)

    return HeaderRules(operations("request"), operations("response"))


def _join(first: HeaderChanges, second: HeaderChanges) -> HeaderChanges:
    return HeaderChanges(first.set + second.set, first.add + second.add,
                         first.remove + second.remove)


def _redirect(node: Node, matches: tuple[Match, ...]) -> Redirect:
    fields = node.fields(["uri", "authority", "port", "derivePort", "scheme", "redirectCode",
                          "prefixRewrite"])
    values: dict[str, Any] = {"status": 301}
    if "uri" in fields and "prefixRewrite" in fields:
        raise fields["prefixRewrite"].error("cannot be combined with uri: give one")
    if "uri" in fields:
        values["path"] = fields["uri"].url_path()
    if "prefixRewrite" in fields:
        if not any(match.path is not None and match.path.kind == "prefix" for match in matches):
            raise fields["prefixRewrite"].error("needs a uri prefix match to replace")
        values["path_prefix"] = fields["prefixRewrite"].text(empty=True) or "/"
    if "authority" in fields:
        authority = fields["authority"].text()
        host, colon, port = authority.rpartition(":")
        if colon and port.isdigit() and "]" not in port:
            values["host"], values["port"] = host.lower(), int(port)
        else:
            values["host"] = authority.lower()
    if "port" in fields:
        values["port"] = fields["port"].integer(1, 65535)
    if "derivePort" in fields:
        derive = fields["derivePort"].choice("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT")
        if derive == "FROM_REQUEST_PORT":
            fields["derivePort"].warn("FROM_REQUEST_PORT is not honoured: the Location has no "
                                      "port unless one is given")
    if "scheme" in fields:
        values["scheme"] = fields["scheme"].choice("http", "https")
    if "redirectCode" in fields:
        code = fields["redirectCode"].integer()
        if code not in _REDIRECT_CODES:
            raise fields["redirectCode"].error(f"must be one of "
                                               f"{', '.join(map(str, _REDIRECT_CODES))}, got "
                                               f"{code}")
        values["status"] = code
    return Redirect(**values)


def _direct_response(node: Node) -> DirectResponse:
    fields = node.fields(["status", "body"])
    if "status" not in fields:
        raise node.error("needs a status")
    status = fields["status"].integer(200, 599)
    body = ""
    if "body" in fields:
        spec = fields["body"].fields(["string", "bytes"])
        if "string" in spec:
            body = spec["string"].text(empty=True)
        elif "bytes" in spec:
            try:
                body = base64.b64decode(spec["bytes"].text(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise spec["bytes"].error("must be base64 of UTF-8 text (pyproxy's direct "
                                          "responses are text)") from None
    return DirectResponse(status, body)


def _rewrite(node: Node) -> Rewrite:
    fields = node.fields(["uri", "authority", "uriRegexRewrite"])
    values: dict[str, Any] = {}
    if "uri" in fields and "uriRegexRewrite" in fields:
        raise fields["uriRegexRewrite"].error("cannot be combined with uri: give one")
    if "uri" in fields:
        # Istio replaces the matched prefix, or the whole path after an exact or regex
        # match: the native path_prefix does exactly that.
        values["path_prefix"] = fields["uri"].text(empty=True) or "/"
    if "uriRegexRewrite" in fields:
        regex = fields["uriRegexRewrite"].fields(["match", "rewrite"])
        if "match" not in regex or "rewrite" not in regex:
            raise fields["uriRegexRewrite"].error("needs match and rewrite")
        pattern = regex["match"].regex()
        substitution = regex["rewrite"].text(empty=True)
        groups = re.compile(pattern).groups
        for number in re.findall(r"\\(\d+)", substitution):
            if int(number) > groups:
                raise regex["rewrite"].error(f"refers to group {number}, which the pattern "
                                             "does not have")
        values["path_regex"] = (pattern, substitution)
    if "authority" in fields:
        values["host"] = fields["authority"].host()
    if not values:
        raise node.error("needs uri, authority or uriRegexRewrite")
    return Rewrite(**values)


# Envoy retry_on tokens → pyproxy's; "" means honoured with nothing to do (an HTTP/2 event).
_RETRY_ON = {"5xx": "5xx", "gateway-error": "gateway-error", "reset": "reset",
             "connect-failure": "connect-failure", "refused-stream": ""}
_GRPC_RETRY_ON = {"cancelled", "deadline-exceeded", "internal", "resource-exhausted",
                  "unavailable"}


def _retries(node: Node) -> Retries:
    fields = node.fields(["attempts", "perTryTimeout", "retryOn", "retryIgnorePreviousHosts",
                          "retryRemoteLocalities", "backoff"])
    values: dict[str, Any] = {
        "attempts": fields["attempts"].integer(0) if "attempts" in fields else 0}
    if "attempts" not in fields:
        node.warn("has no attempts: Istio then makes none (retries off)")
    if "perTryTimeout" in fields:
        values["per_try_timeout"] = fields["perTryTimeout"].duration()
    retry_on: list[str] = []
    codes: list[int] = []
    if "retryOn" in fields:
        unsupported = []
        for token in (t.strip() for t in fields["retryOn"].text().split(",")):
            if not token:
                continue
            if token.isdigit() and 200 <= int(token) <= 599:
                codes.append(int(token))
            elif token == "retriable-4xx":
                codes.append(409)  # Envoy: retriable-4xx retries 409 Conflict
            elif token == "retriable-status-codes":
                pass  # the numbers in retryOn are the codes
            elif token in _RETRY_ON:
                if _RETRY_ON[token]:
                    retry_on.append(_RETRY_ON[token])
            else:
                unsupported.append(token)
        if unsupported:
            grpc = [t for t in unsupported if t in _GRPC_RETRY_ON]
            other = [t for t in unsupported if t not in _GRPC_RETRY_ON]
            parts = ([f"gRPC conditions {', '.join(grpc)} (pyproxy proxies HTTP/1.1)"]
                     if grpc else []) + ([f"{', '.join(other)} (unknown to pyproxy)"]
                                         if other else [])
            fields["retryOn"].warn(f"retryOn conditions not honoured: {'; '.join(parts)}")
    else:
        retry_on = ["connect-failure", "reset"]  # Istio's default retryOn, HTTP/1.1 part
    if codes:
        retry_on.append("retriable-status-codes")
    values["retry_on"] = tuple(dict.fromkeys(retry_on))
    values["status_codes"] = tuple(dict.fromkeys(codes))
    if "backoff" in fields:
        base = fields["backoff"].duration()
        values["backoff"] = Backoff(base=base, max=max(base * 10, Backoff().max))  # Envoy: 10×
    if "retryIgnorePreviousHosts" in fields and not fields["retryIgnorePreviousHosts"].boolean():
        fields["retryIgnorePreviousHosts"].warn(
            "false is not honoured: a pyproxy retry always prefers an endpoint not tried yet")
    if "retryRemoteLocalities" in fields and fields["retryRemoteLocalities"].boolean():
        fields["retryRemoteLocalities"].warn("is not honoured: pyproxy knows no localities")
    return Retries(**values)


def _percentage(fields: dict[str, Node], legacy: str | None = None) -> float | None:
    if "percentage" in fields:
        percentage = fields["percentage"].fields(["value"])
        return percentage["value"].number(0, 100) if "value" in percentage else 0.0
    if legacy is not None and legacy in fields:
        return float(fields[legacy].integer(0, 100))
    return None


def _fault(node: Node) -> Fault:
    fields = node.fields(["delay", "abort"])
    delay = abort = None
    if "delay" in fields:
        spec = fields["delay"].fields(["fixedDelay", "percentage", "percent"], {
            "exponentialDelay": "pyproxy injects fixed delays only",
        })
        if "fixedDelay" in spec:
            percent = _percentage(spec, "percent")
            if percent is None:
                fields["delay"].warn("has no percentage: Istio then delays no request")
            delay = DelayFault(spec["fixedDelay"].duration(), percent or 0.0)
    if "abort" in fields:
        spec = fields["abort"].fields(["httpStatus", "percentage"], {
            "grpcStatus": "pyproxy aborts with HTTP statuses only",
            "http2Error": "pyproxy aborts with HTTP statuses only",
        })
        if "httpStatus" in spec:
            percent = _percentage(spec)
            if percent is None:
                fields["abort"].warn("has no percentage: Istio then aborts no request")
            abort = AbortFault(spec["httpStatus"].integer(200, 599), percent or 0.0)
    if delay is None and abort is None:
        raise node.error("needs a delay with fixedDelay or an abort with httpStatus")
    return Fault(delay=delay, abort=abort)


def _mirrors(ctx: ImportContext, fields: dict[str, Node]) -> tuple[Mirror, ...]:
    mirrors = []
    if "mirror" in fields:
        percent = 100.0
        if "mirrorPercentage" in fields:
            percent = _percentage({"percentage": fields["mirrorPercentage"]}) or 0.0
        else:
            for legacy in ("mirrorPercent",):
                if legacy in fields:
                    percent = float(fields[legacy].integer(0, 100))
        mirrors.append(_mirror(ctx, fields["mirror"], percent))
    for item in (fields["mirrors"].items() if "mirrors" in fields else []):
        spec = item.fields(["destination", "percentage"])
        if "destination" not in spec:
            raise item.error("needs a destination")
        share = _percentage(spec)
        mirrors.append(_mirror(ctx, spec["destination"], 100.0 if share is None else share))
    return tuple(mirror for mirror in mirrors if mirror is not None)


def _mirror(ctx: ImportContext, node: Node, percent: float) -> Mirror | None:
    service, subset, empty = _destination(ctx, node)
    if empty:
        node.warn(f"mirror to {service}/{subset} is dropped: the subset selects no endpoint")
        return None
    return Mirror(service, subset, percent)
