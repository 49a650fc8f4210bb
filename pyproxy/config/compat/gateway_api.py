"""Gateway API ``HTTPRoute`` (gateway.networking.k8s.io v1, v1beta1, v1alpha2; also
Linkerd's policy.linkerd.io HTTPRoute, the same schema), ``Gateway`` and ``ReferenceGrant``
→ the native model.

pyproxy's routes are first-match in order, so HTTPRoute rules are put in the order the
spec's precedence gives them (``apis/v1/httproute_types.go``), across every HTTPRoute:

1. hostname: a matching non-wildcard hostname first, then the longest wildcard, then
   routes for any host;
2. an ``Exact`` path, then ``RegularExpression`` (implementation-specific: after exact,
   longer patterns first), then the longest ``PathPrefix``;
3. a method match; 4. the most header matches; 5. the most query parameter matches;
6. the oldest ``creationTimestamp``, then ``{namespace}/{name}`` alphabetically;
7. within a route, rules and matches in list order.

Each rule becomes a native route named ``<route>-<rule name or index>``; when precedence
puts other rules between its matches, or its hostnames fall in different precedence
classes, it is split, the parts named ``-m<first match index>`` / ``-h<host class>``. All
HTTPRoutes are placed together, where the first HTTPRoute document is.

Hostnames are intersected with the listener hostnames of the Gateways in ``parentRefs``
(when those Gateways are among the manifests; ``sectionName``/``port`` pick listeners,
``allowedRoutes`` is honoured); a route that intersects none is not attached. A
``parentRef`` to a ``Service`` (GAMMA, as Linkerd uses) routes requests for that service's
host. Invalid or unknown ``backendRefs`` (unknown kind, no such service, cross-namespace
without a ReferenceGrant) get 500 for their share of the traffic, as the spec requires; a
rule with no backendRefs and no redirect answers 500. A backendRef's own filters (header
modifiers, ``URLRewrite``, ``RequestRedirect``) apply only to the requests that backend
draws: they are set on the native backend.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from pyproxy.config.compat.common import (
    ImportContext,
    Invalid,
    Manifest,
    Node,
    intersect_hosts,
    qualified_names,
)
from pyproxy.config.document import Document, Severity
from pyproxy.config.model import (
    Backend,
    Backoff,
    DirectResponse,
    HeaderChanges,
    HeaderRules,
    Match,
    Mirror,
    PathMatch,
    PathMatchKind,
    Redirect,
    Retries,
    Rewrite,
    Route,
    Sticky,
    StickyCookie,
    StringMatch,
)

GATEWAY_GROUP = "gateway.networking.k8s.io"
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_GATEWAY_IGNORED = ["gatewayClassName", "infrastructure"]


@dataclass(frozen=True)
class _Listener:
    name: str
    hostname: str | None
    port: int | None
    protocol: str
    namespaces: str  # Same | All | Selector
    kinds: frozenset[str] | None  # route kinds allowed; None: the protocol's default


@dataclass(frozen=True)
class _Entry:
    """One match of one rule, with what orders it and the action it shares with its rule."""

    key: tuple[object, ...]  # Gateway API precedence, compared element by element
    route: Manifest
    rule: int
    match_index: int
    host_group: int
    hosts: tuple[str, ...]
    match: Match
    action: dict[str, Any]
    label: str  # "<route>-<rule>"


def import_gateway_api(ctx: ImportContext, manifests: list[Manifest]) -> None:
    gateways: dict[tuple[str, str], list[_Listener]] = {}
    grants: list[tuple[Manifest, _Grant]] = []
    for m in manifests:
        try:
            if m.kind == "Gateway":
                gateways[m.key] = _gateway(ctx, m)
            elif m.kind == "ReferenceGrant":
                grants.append((m, _grant(ctx, m)))
        except Invalid:
            if m.kind == "Gateway":
                gateways[m.key] = []
    routes = [m for m in manifests if m.kind == "HTTPRoute"]
    if not routes:
        return
    names = qualified_names(routes)
    entries: list[_Entry] = []
    ports: dict[int, Manifest] = {}
    cache = _RouteCache(ctx, gateways, grants)
    for m in routes:
        own: dict[int, Manifest] = {}
        entries += cache.entries(m, names[m.key], own)
        for port, manifest in own.items():
            ports.setdefault(port, manifest)
    cache.keep()
    if len(ports) > 1:
        listed = ", ".join(f"{port} ({m.label})" for port, m in sorted(ports.items()))
        ctx.warn(routes[0], "spec.parentRefs", f"routes are attached to listeners on ports "
                                               f"{listed}: pyproxy serves them all on its one "
                                               "listener, where routes of different ports can "
                                               "overlap")
    entries.sort(key=lambda entry: entry.key)
    _emit(ctx, entries, routes[0])


@dataclass(frozen=True)
class _Imported:
    """One HTTPRoute as imported last time, and what its import depended on."""

    doc: Document  # the very document (an unchanged object keeps its Document)
    context: tuple[object, ...]
    entries: list[_Entry]
    issues: list[tuple[Severity, Document, str, str]]
    ports: dict[int, Manifest]


class _RouteCache:
    """HTTPRoutes whose import can be reused (``ImportContext.route_cache``, kept by
    in-cluster mode between builds): the same Document, read against the same Gateways,
    ReferenceGrants and service names, imports to the same entries and issues — so one
    changed HTTPRoute among a thousand is the only one imported again. Without a cache
    every route is imported."""

    def __init__(self, ctx: ImportContext, gateways: dict[tuple[str, str], list[_Listener]],
                 grants: list[tuple[Manifest, _Grant]]):
        self.ctx, self.gateways, self.grants = ctx, gateways, grants
        self.store = ctx.route_cache
        self.used: dict[object, object] = {}
        self.context: tuple[object, ...] = ()
        if self.store is not None:
            context = (tuple(sorted((key, tuple(listeners))
                                    for key, listeners in gateways.items())),
                       tuple((m.namespace, m.name, repr(grant)) for m, grant in grants),
                       frozenset(ctx.services), frozenset(ctx.declared_services))
            previous = self.store.get("context")
            # The same context object from build to build makes each route's check cheap.
            self.context = previous if previous == context else context
            self.used["context"] = self.context

    def entries(self, m: Manifest, base: str, ports: dict[int, Manifest]) -> list[_Entry]:
        if self.store is None:
            return self._import(m, base, ports)
        context = (base, self.context)
        found = self.store.get(id(m.doc))
        if isinstance(found, _Imported) and found.doc is m.doc and found.context == context:
            for issue in found.issues:
                self.ctx.report(*issue)
            ports.update(found.ports)
            self.used[id(m.doc)] = found
            return found.entries
        issues: list[tuple[Severity, Document, str, str]] = []
        report = self.ctx.report

        def recording(severity: Severity, document: Document, path: str, message: str) -> None:
            issues.append((severity, document, path, message))
            report(severity, document, path, message)

        self.ctx.report = recording
        try:
            entries = self._import(m, base, ports)
        finally:
            self.ctx.report = report
        self.used[id(m.doc)] = _Imported(m.doc, context, entries, issues, dict(ports))
        return entries

    def _import(self, m: Manifest, base: str, ports: dict[int, Manifest]) -> list[_Entry]:
        try:
            return _http_route(self.ctx, m, base, self.gateways, self.grants, ports)
        except Invalid:
            return []

    def keep(self) -> None:
        """Forget the routes not seen in this import."""
        if self.store is not None:
            self.store.clear()
            self.store.update(self.used)


# ---------------------------------------------------------------------------- Gateway


def _gateway(ctx: ImportContext, m: Manifest) -> list[_Listener]:
    spec = m.spec(ctx).fields(["listeners"], {
        "addresses": "pyproxy listens where listen: (or --listen) says",
        "backendTLS": "set upstream TLS on the native service (tls:, https:// endpoints)",
        "allowedListeners": "ListenerSets are not read",
        "tls": "pyproxy terminates TLS with its own tls: setting",
    }, ignored=_GATEWAY_IGNORED)
    listeners = []
    ports = set()
    for item in (spec["listeners"].items() if "listeners" in spec else []):
        fields = item.fields(["name", "hostname", "port", "protocol", "tls", "allowedRoutes"])
        protocol = fields["protocol"].text().upper() if "protocol" in fields else "HTTP"
        name = fields["name"].text() if "name" in fields else ""
        port = fields["port"].integer(1, 65535) if "port" in fields else None
        if protocol not in ("HTTP", "HTTPS"):
            item.warn(f"listener {name!r} is not served: protocol {protocol} (pyproxy routes "
                      "HTTP only)")
            continue
        if protocol == "HTTPS" or "tls" in fields:
            item.warn(f"listener {name!r}: its TLS settings are not honoured; pyproxy "
                      "terminates TLS with its own tls: setting")
        if port is not None:
            ports.add(port)
        namespaces, kinds = "Same", None
        if "allowedRoutes" in fields:
            allowed = fields["allowedRoutes"].fields(["namespaces", "kinds"])
            if "namespaces" in allowed:
                spec_ns = allowed["namespaces"].fields(["from", "selector"])
                if "from" in spec_ns:
                    namespaces = spec_ns["from"].choice("Same", "All", "Selector")
                if namespaces == "Selector":
                    allowed["namespaces"].warn("from: Selector is read as All: pyproxy does not "
                                               "know namespace labels")
                    namespaces = "All"
            if "kinds" in allowed:
                kinds = frozenset(k.key("kind").text() for k in allowed["kinds"].items())
        hostname = fields["hostname"].host() if "hostname" in fields else None
        listeners.append(_Listener(name, hostname, port, protocol, namespaces, kinds))
    if len(ports) > 1:
        m.spec(ctx).key("listeners").warn(
            f"listeners on ports {', '.join(map(str, sorted(ports)))} are all served on "
            "pyproxy's one listener (listen:)")
    return listeners


# A ReferenceGrant's "from" (group, kind, namespace) and "to" (group, kind, name) entries,
# as written: the values are only compared, so any odd type simply matches nothing.
_Grant = dict[str, list[tuple[Any, Any, Any]]]


def _grant(ctx: ImportContext, m: Manifest) -> _Grant:
    spec = m.spec(ctx).fields(["from", "to"])
    froms = [(i.key("group").value or "", i.key("kind").value, i.key("namespace").value)
             for i in (spec["from"].items() if "from" in spec else [])]
    tos = [(i.key("group").value or "", i.key("kind").value, i.key("name").value)
           for i in (spec["to"].items() if "to" in spec else [])]
    return {"from": froms, "to": tos}


def _granted(grants: list[tuple[Manifest, _Grant]], route: Manifest, namespace: str,
             name: str) -> bool:
    for m, grant in grants:
        if m.namespace != namespace:
            continue
        if not any(group == route.group and kind == route.kind and ns == route.namespace
                   for group, kind, ns in grant["from"]):
            continue
        if any(group in ("", "core") and kind == "Service" and target in (None, name)
               for group, kind, target in grant["to"]):
            return True
    return False


# ---------------------------------------------------------------------------- HTTPRoute


def _http_route(ctx: ImportContext, m: Manifest, base: str,
                gateways: dict[tuple[str, str], list[_Listener]],
                grants: list[tuple[Manifest, _Grant]], ports: dict[int, Manifest]
                ) -> list[_Entry]:
    spec = m.spec(ctx).fields(["parentRefs", "hostnames", "rules"], {
        "useDefaultGateways": "pyproxy is the only gateway; parentRefs decide the hostnames",
    })
    own_hosts = tuple(dict.fromkeys(node.host() for node in spec["hostnames"].items())) \
        if "hostnames" in spec else ()
    hosts, port = _attach(ctx, m, spec, own_hosts, gateways)
    if hosts is False:
        return []
    if port is not None:
        ports.setdefault(port, m)
    created = (0, m.created) if m.created else (1, "")
    entries = []
    rules = spec["rules"].items() if "rules" in spec else []
    if not rules:
        ctx.warn(m, "spec", "has no rules: it routes nothing")
    for index, rule in enumerate(rules):
        try:
            entries += _rule(ctx, m, base, index, rule, hosts, port, created, grants)
        except Invalid:
            continue
    return entries


def _attach(ctx: ImportContext, m: Manifest, spec: dict[str, Node], own: tuple[str, ...],
            gateways: dict[tuple[str, str], list[_Listener]]
            ) -> tuple[frozenset[str] | None, int | None] | tuple[Literal[False], None]:
    """The hosts the route answers for (None: any) and, when all its listeners share one,
    the listener port; (False, None) when it is attached to nothing."""
    hosts: set[str] = set()
    any_host = False
    ports: set[int | None] = set()
    attached = False
    own_set: list[str | None] = [*own] or [None]
    refs = spec["parentRefs"].items() if "parentRefs" in spec else []
    if not refs:
        ctx.warn(m, "spec", "has no parentRefs: Kubernetes would attach it to nothing; "
                            "pyproxy serves it on its listener")
        return (frozenset(own) if own else None), None
    for ref in refs:
        fields = ref.fields(["group", "kind", "name", "namespace", "sectionName", "port"])
        if "name" not in fields:
            raise ref.error("needs a name")
        group = fields["group"].text(empty=True) if "group" in fields else GATEWAY_GROUP
        kind = fields["kind"].text() if "kind" in fields else "Gateway"
        name = fields["name"].text()
        namespace = fields["namespace"].text() if "namespace" in fields else m.namespace
        if kind == "Service" and group in ("", "core"):
            # GAMMA: the route applies to requests for this service (hostnames do not).
            if own:
                spec["hostnames"].warn("hostnames are ignored for a Service parent (GAMMA): "
                                       "the route answers for the service's own host")
            hosts.add(name.lower())
            ports.add(None)
            attached = True
            continue
        if kind != "Gateway" or group != GATEWAY_GROUP:
            ref.warn(f"parent {group or 'core'}/{kind} {name!r} is not honoured: pyproxy "
                     "attaches routes to Gateways and Services only")
            continue
        listeners = gateways.get((namespace, name))
        if listeners is None:
            if gateways:
                ref.warn(f"Gateway {name!r} (namespace {namespace}) is not among the "
                         "manifests: its listener hostnames do not narrow this route")
            attached = True
            ports.add(None)
            if own:
                hosts.update(own)
            else:
                any_host = True
            continue
        candidates = listeners
        if "sectionName" in fields:
            candidates = [li for li in candidates if li.name == fields["sectionName"].text()]
        if "port" in fields:
            candidates = [li for li in candidates if li.port == fields["port"].integer(1, 65535)]
        if not candidates:
            ref.warn(f"Gateway {name!r} has no such listener: the route is not attached to it")
            continue
        reason = "its hostnames intersect no listener hostname"
        for listener in candidates:
            if listener.namespaces == "Same" and namespace != m.namespace:
                reason = "the listener allows routes from its own namespace only"
                continue
            if listener.kinds is not None and m.kind not in listener.kinds:
                reason = "the listener does not allow HTTPRoutes"
                continue
            for host in own_set:
                both = intersect_hosts(host, listener.hostname)
                if both is False:
                    continue
                attached = True
                ports.add(listener.port if listener.protocol == "HTTP" else None)
                if both is None:
                    any_host = True
                else:
                    hosts.add(both)
        if not attached:
            ref.warn(f"the route is not attached to Gateway {name!r}: {reason}")
    if not attached:
        ctx.warn(m, "spec.parentRefs", "is attached to no listener: it routes nothing")
        return False, None
    port = ports.pop() if len(ports) == 1 else None
    return (None if any_host else frozenset(hosts)), port


def _host_groups(hosts: frozenset[str] | None
                 ) -> list[tuple[tuple[int, int], tuple[str, ...]]]:
    """Hosts by precedence class: exact names, each wildcard length, any host."""
    if hosts is None:
        return [((2, 0), ())]
    exact = tuple(sorted(h for h in hosts if not h.startswith("*.")))
    groups = [((0, 0), exact)] if exact else []
    by_length: dict[int, list[str]] = {}
    for host in hosts:
        if host.startswith("*."):
            by_length.setdefault(len(host) - 1, []).append(host)
    groups += [((1, -length), tuple(sorted(names)))
               for length, names in sorted(by_length.items(), reverse=True)]
    return groups


def _rule(ctx: ImportContext, m: Manifest, base: str, index: int, rule: Node,
          hosts: frozenset[str] | None, port: int | None, created: tuple[int, str],
          grants: list[tuple[Manifest, _Grant]]) -> list[_Entry]:
    fields = rule.fields(["name", "matches", "filters", "backendRefs", "timeouts", "retry",
                          "sessionPersistence"])
    label = f"{base}-{fields['name'].text() if 'name' in fields else index}"
    matches = _matches(fields["matches"]) if "matches" in fields and fields[
        "matches"].items() else [(Match(path=PathMatch("segment_prefix", "/")), "PathPrefix")]
    action = _action(ctx, m, fields, matches, port, grants)
    entries = []
    for group_index, (host_key, group_hosts) in enumerate(_host_groups(hosts)):
        for match_index, (match, kind) in enumerate(matches):
            path = match.path
            assert path is not None  # _matches gives every match a path (PathPrefix / at least)
            if kind == "Exact":
                path_key = (0, -len(path.value))
            elif kind == "RegularExpression":
                path_key = (1, -len(path.value))
            else:
                path_key = (2, -len(path.value.rstrip("/") or "/"))
            key = (host_key, path_key, 0 if match.methods else 1, -len(match.headers),
                   -len(match.query), created, f"{m.namespace}/{m.name}", index, match_index,
                   group_index)
            entries.append(_Entry(key, m, index, match_index, group_index, group_hosts, match,
                                  action, label))
    return entries


def _emit(ctx: ImportContext, entries: list[_Entry], first: Manifest) -> None:
    """Native routes from the sorted entries: adjacent entries of one rule and host class
    share a route."""
    chunks: list[list[_Entry]] = []
    for entry in entries:
        last = chunks[-1][-1] if chunks else None
        if last is not None and (last.route, last.rule, last.host_group) == (
                entry.route, entry.rule, entry.host_group):
            chunks[-1].append(entry)
        else:
            chunks.append([entry])
    per_rule: dict[tuple[int, int], list[list[_Entry]]] = {}
    for chunk in chunks:
        per_rule.setdefault((id(chunk[0].route), chunk[0].rule), []).append(chunk)
    for chunk in chunks:
        head = chunk[0]
        siblings = per_rule[(id(head.route), head.rule)]
        name = head.label
        if len(siblings) > 1:
            if len({c[0].match_index for c in siblings}) > 1:
                name += f"-m{head.match_index}"
            if len({c[0].host_group for c in siblings}) > 1:
                name += f"-h{head.host_group}"
        try:
            name = ctx.route_name(head.route, f"spec.rules[{head.rule}]", name)
        except Invalid:
            continue
        route = Route(name=name, hosts=head.hosts,
                      matches=tuple(entry.match for entry in chunk), **head.action)
        ctx.add_route(route, head.route, f"spec.rules[{head.rule}]", first)


# ---------------------------------------------------------------------------- matches


def _matches(node: Node) -> list[tuple[Match, str]]:
    return [_match(item) for item in node.items()]


def _match(node: Node) -> tuple[Match, str]:
    fields = node.fields(["path", "headers", "queryParams", "method"])
    kind, value = "PathPrefix", "/"
    if "path" in fields:
        path = fields["path"].fields(["type", "value"])
        if "type" in path:
            kind = path["type"].choice("Exact", "PathPrefix", "RegularExpression")
        if "value" in path:
            value = (path["value"].regex() if kind == "RegularExpression"
                     else path["value"].url_path())
    kinds: dict[str, PathMatchKind] = {"Exact": "exact", "PathPrefix": "segment_prefix",
                                       "RegularExpression": "regex"}
    model_kind = kinds[kind]
    headers = _pairs(fields.get("headers"), lower=True)
    query = _pairs(fields.get("queryParams"), lower=False)
    methods = (fields["method"].method(),) if "method" in fields else ()
    return Match(path=PathMatch(model_kind, value), methods=methods, headers=headers,
                 query=query), kind


def _pairs(node: Node | None, lower: bool) -> tuple[tuple[str, StringMatch], ...]:
    """Header or query parameter matches; a repeated name: only the first counts (spec)."""
    if node is None:
        return ()
    pairs: dict[str, StringMatch] = {}
    for item in node.items():
        fields = item.fields(["type", "name", "value"])
        if "name" not in fields or "value" not in fields:
            raise item.error("needs a name and a value")
        name = fields["name"].header_name() if lower else fields["name"].text()
        kind = fields["type"].choice("Exact", "RegularExpression") if "type" in fields \
            else "Exact"
        value = fields["value"].regex() if kind == "RegularExpression" else fields[
            "value"].text(empty=True)
        if name in pairs:
            item.warn(f"{name!r} is matched already: only the first match for a name counts")
            continue
        pairs[name] = StringMatch("exact" if kind == "Exact" else "regex", value)
    return tuple(pairs.items())


# ---------------------------------------------------------------------------- actions


def _action(ctx: ImportContext, m: Manifest, fields: dict[str, Node],
            matches: list[tuple[Match, str]], port: int | None,
            grants: list[tuple[Manifest, _Grant]]) -> dict[str, Any]:
    action: dict[str, Any] = {}
    request, response = HeaderChanges(), HeaderChanges()
    seen: set[str] = set()
    mirrors = []
    failed_filter = False
    for item in (fields["filters"].items() if "filters" in fields else []):
        spec = item.fields(["type", "requestHeaderModifier", "responseHeaderModifier",
                            "requestRedirect", "urlRewrite", "requestMirror", "extensionRef",
                            "cors", "externalAuth"])
        if "type" not in spec:
            raise item.error("needs a type")
        kind = spec["type"].text()
        if kind in seen and kind != "RequestMirror":
            raise item.error(f"{kind} is given twice; each filter may appear once per rule")
        seen.add(kind)
        body = spec.get(kind[0].lower() + kind[1:]) if kind != "URLRewrite" else spec.get(
            "urlRewrite")
        if body is None and kind in ("RequestHeaderModifier", "ResponseHeaderModifier",
                                     "RequestRedirect", "URLRewrite", "RequestMirror"):
            raise item.error(f"type {kind} needs its {kind[0].lower() + kind[1:]} field"
                             if kind != "URLRewrite" else "type URLRewrite needs urlRewrite")
        if kind == "RequestHeaderModifier" and body is not None:
            request = _header_filter(body)
        elif kind == "ResponseHeaderModifier" and body is not None:
            response = _header_filter(body)
        elif kind == "RequestRedirect" and body is not None:
            action["redirect"] = _redirect(body, matches, port)
        elif kind == "URLRewrite" and body is not None:
            action["rewrite"] = _rewrite(body, matches)
        elif kind == "RequestMirror" and body is not None:
            mirror = _mirror(ctx, m, body, grants)
            if mirror is not None:
                mirrors.append(mirror)
        elif kind in ("CORS", "ExternalAuth"):
            item.warn(f"filter {kind} is not honoured: pyproxy has no "
                      f"{'CORS handling' if kind == 'CORS' else 'external authorization'}; "
                      "requests are routed as if it were absent")
        else:
            item.warn(f"filter {kind} is not honoured: pyproxy cannot run it, so (as the spec "
                      "requires for a filter that cannot be resolved) the rule answers 500")
            failed_filter = True
    if "redirect" in action and "rewrite" in action:
        raise fields["filters"].error("RequestRedirect and URLRewrite cannot be combined")
    if request != HeaderChanges() or response != HeaderChanges():
        action["headers"] = HeaderRules(request, response)
    if mirrors:
        action["mirrors"] = tuple(mirrors)
    refs = fields["backendRefs"].items() if "backendRefs" in fields else []
    if failed_filter:
        action.pop("redirect", None)
        action["direct_response"] = DirectResponse(500)
    elif "redirect" in action:
        if refs:
            fields["backendRefs"].warn("are not used: the rule's RequestRedirect answers "
                                       "every request")
    elif not refs:
        action["direct_response"] = DirectResponse(500)  # the spec: no backend → 500
    else:
        action["backends"] = _backends(ctx, m, fields["backendRefs"], grants, matches, port,
                                       rule_rewrite="rewrite" in action)
    if "timeouts" in fields:
        action.update(_timeouts(fields["timeouts"]))
    if "retry" in fields:
        action["retries"] = _retry(fields["retry"], action.get("retries"),
                                   "timeouts" in fields and "backendRequest" in fields[
                                       "timeouts"].value)
    if "sessionPersistence" in fields:
        sticky = _session_persistence(fields["sessionPersistence"], m)
        if sticky is not None:
            action["sticky"] = sticky
    return action


def _header_filter(node: Node) -> HeaderChanges:
    fields = node.fields(["set", "add", "remove"])

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        out = []
        for item in (fields[key].items() if key in fields else []):
            spec = item.fields(["name", "value"])
            if "name" not in spec:
                raise item.error("needs a name")
            out.append((spec["name"].header_name(),
                        spec["value"].header_value() if "value" in spec else ""))
        return tuple(out)

    remove = tuple(item.header_name() for item in fields["remove"].items()) \
        if "remove" in fields else ()
    return HeaderChanges(set=pairs("set"), add=pairs("add"), remove=remove)


def _path_modifier(node: Node, matches: list[tuple[Match, str]]) -> tuple[str, str]:
    """("full" | "prefix", value) from ``{type: ReplaceFullPath|ReplacePrefixMatch, ...}``."""
    fields = node.fields(["type", "replaceFullPath", "replacePrefixMatch"])
    kind = fields["type"].choice("ReplaceFullPath", "ReplacePrefixMatch") if "type" in fields \
        else None
    if kind == "ReplaceFullPath" and "replaceFullPath" in fields:
        return "full", fields["replaceFullPath"].url_path()
    if kind == "ReplacePrefixMatch" and "replacePrefixMatch" in fields:
        if any(kind != "PathPrefix" for _, kind in matches):
            raise node.error("ReplacePrefixMatch needs every match of the rule to be a "
                             "PathPrefix match")
        return "prefix", fields["replacePrefixMatch"].text(empty=True) or "/"
    raise node.error("needs type ReplaceFullPath with replaceFullPath, or ReplacePrefixMatch "
                     "with replacePrefixMatch")


def _redirect(node: Node, matches: list[tuple[Match, str]], port: int | None) -> Redirect:
    fields = node.fields(["scheme", "hostname", "path", "port", "statusCode"])
    values: dict[str, Any] = {"status": 302}
    if "scheme" in fields:
        values["scheme"] = fields["scheme"].choice("http", "https")
    if "hostname" in fields:
        values["host"] = fields["hostname"].host()
    if "port" in fields:
        values["port"] = fields["port"].integer(1, 65535)
    elif "scheme" not in fields and port is not None and port != 80:
        values["port"] = port  # the spec: without scheme and port, the listener's port
    if "path" in fields:
        kind, value = _path_modifier(fields["path"], matches)
        values["path" if kind == "full" else "path_prefix"] = value
    if "statusCode" in fields:
        code = fields["statusCode"].integer()
        if code not in _REDIRECT_CODES:
            raise fields["statusCode"].error(f"must be one of "
                                             f"{', '.join(map(str, _REDIRECT_CODES))}, got {code}")
        values["status"] = code
    return Redirect(**values)  # a status alone redirects to the same URL (303: POST → GET)


def _rewrite(node: Node, matches: list[tuple[Match, str]]) -> Rewrite:
    fields = node.fields(["hostname", "path"])
    values: dict[str, Any] = {}
    if "hostname" in fields:
        values["host"] = fields["hostname"].host()
    if "path" in fields:
        kind, value = _path_modifier(fields["path"], matches)
        values["path_full" if kind == "full" else "path_prefix"] = value
    if not values:
        raise node.error("needs hostname or path")
    return Rewrite(**values)


def _reference(ctx: ImportContext, m: Manifest, node: Node,
               grants: list[tuple[Manifest, _Grant]]) -> tuple[str | None, str, str | None]:
    """(native service or None, a name for it, why it is invalid or None)."""
    fields = node.fields(["group", "kind", "name", "namespace", "port", "weight", "filters"])
    if "name" not in fields:
        raise node.error("needs a name")
    name = fields["name"].text()
    group = fields["group"].text(empty=True) if "group" in fields else ""
    kind = fields["kind"].text() if "kind" in fields else "Service"
    namespace = fields["namespace"].text() if "namespace" in fields else m.namespace
    if group not in ("", "core") or kind != "Service":
        return None, f"{kind}:{name}", (f"kind {group + '/' if group else ''}{kind} is not a "
                                        "Service (InvalidKind)")
    if namespace != m.namespace and not _granted(grants, m, namespace, name):
        return None, f"{name}.{namespace}", (
            f"service {name!r} is in namespace {namespace} and no ReferenceGrant there allows "
            f"references from {m.kind}s in {m.namespace} (RefNotPermitted)")
    service = ctx.resolve(name, namespace)
    if service is None:
        if ctx.declared(name, namespace):
            raise Invalid  # the native service has errors of its own
        return None, name.lower(), f"{ctx.missing_service(name)} (BackendNotFound)"
    return service, service, None


def _backends(ctx: ImportContext, m: Manifest, node: Node, grants: list[tuple[Manifest, _Grant]],
              matches: list[tuple[Match, str]], port: int | None, rule_rewrite: bool
              ) -> tuple[Backend, ...]:
    backends: list[Backend] = []
    for item in node.items():
        _, name, problem = _reference(ctx, m, item, grants)
        weight = float(item.key("weight").integer(0, 1_000_000)) if item.key(
            "weight").value is not None else 1.0
        backend = Backend(name, weight=weight, direct_status=500 if problem is not None
                          else None)
        if problem is not None:
            item.warn(f"backendRef {name!r} is invalid, so its share of the traffic gets 500: "
                      f"{problem}")
        else:
            backend = _backend_filters(item, backend, matches, port, rule_rewrite)
        for index, known in enumerate(backends):
            if known.name == backend.name:
                item.warn(f"backend {name} is listed twice: pyproxy sends it the sum of the "
                          "weights, with the first one's filters")
                backends[index] = replace(known, weight=known.weight + weight)
                break
        else:
            backends.append(backend)
    if all(b.weight == 0 for b in backends):
        node.warn("every backendRef has weight 0: the rule answers 503 until a weight is "
                  "raised")
    return tuple(backends)


def _backend_filters(item: Node, backend: Backend, matches: list[tuple[Match, str]],
                     port: int | None, rule_rewrite: bool) -> Backend:
    """A backendRef's ``filters``: the spec applies them only to requests forwarded to that
    backend, so they live on the native backend (its share of the traffic)."""
    values: dict[str, Any] = {}
    for filter_node in item.key("filters").items():
        spec = filter_node.fields(["type", "requestHeaderModifier", "responseHeaderModifier",
                                   "requestRedirect", "urlRewrite"],
                                  {key: "pyproxy runs this filter per rule, not per backend"
                                   for key in ("requestMirror", "cors", "extensionRef",
                                               "externalAuth")})
        kind = spec["type"].text() if "type" in spec else ""
        if kind == "RequestHeaderModifier" and "requestHeaderModifier" in spec:
            values["headers"] = _header_filter(spec["requestHeaderModifier"])
        elif kind == "ResponseHeaderModifier" and "responseHeaderModifier" in spec:
            values["response_headers"] = _header_filter(spec["responseHeaderModifier"])
        elif kind == "RequestRedirect" and "requestRedirect" in spec:
            values["redirect"] = _redirect(spec["requestRedirect"], matches, port)
        elif kind == "URLRewrite" and "urlRewrite" in spec:
            if rule_rewrite:
                filter_node.warn("the backend's URLRewrite takes the place of the rule's for "
                                 "this backend (pyproxy applies one rewrite)")
            values["rewrite"] = _rewrite(spec["urlRewrite"], matches)
        else:
            filter_node.warn(f"backend filter {kind or '(no type)'} is not honoured: pyproxy "
                             "applies header modifiers, RequestRedirect and URLRewrite per "
                             "backend, other filters per rule")
    if "redirect" in values and "rewrite" in values:
        raise item.key("filters").error("RequestRedirect and URLRewrite cannot be combined")
    return replace(backend, **values)


def _mirror(ctx: ImportContext, m: Manifest, node: Node,
            grants: list[tuple[Manifest, _Grant]]) -> Mirror | None:
    fields = node.fields(["backendRef", "percent", "fraction"])
    if "backendRef" not in fields:
        raise node.error("needs a backendRef")
    service, name, problem = _reference(ctx, m, fields["backendRef"], grants)
    if problem is not None or service is None:
        node.warn(f"mirror to {name!r} is dropped: {problem}")
        return None
    percent = 100.0
    if "percent" in fields and "fraction" in fields:
        raise fields["fraction"].error("cannot be combined with percent: give one")
    if "percent" in fields:
        percent = float(fields["percent"].integer(0, 100))
    if "fraction" in fields:
        fraction = fields["fraction"].fields(["numerator", "denominator"])
        if "numerator" not in fraction:
            raise fields["fraction"].error("needs a numerator")
        denominator = fraction["denominator"].integer(1) if "denominator" in fraction else 100
        numerator = fraction["numerator"].integer(0, denominator)
        percent = 100.0 * numerator / denominator
    return Mirror(service, None, percent)


def _timeouts(node: Node) -> dict[str, Any]:
    fields = node.fields(["request", "backendRequest"])
    values: dict[str, Any] = {}
    request = fields["request"].duration(zero=True) if "request" in fields else None
    backend = fields["backendRequest"].duration(zero=True) if "backendRequest" in fields else None
    if request is not None:
        values["timeout"] = request  # 0: no timeout at all
    if backend:
        if request and backend > request:
            raise fields["backendRequest"].error("must not be longer than request")
        values["retries"] = Retries(attempts=0, per_try_timeout=backend)
    return values


def _retry(node: Node, timeouts: Retries | None, backend_timeout: bool) -> Retries:
    fields = node.fields(["codes", "attempts", "backoff"])
    codes = tuple(dict.fromkeys(item.integer(400, 599) for item in fields["codes"].items())) \
        if "codes" in fields else ()
    attempts = fields["attempts"].integer(0) if "attempts" in fields else 1
    if codes:
        retry_on = ["connect-failure", "reset", "retriable-status-codes"]
        if {502, 503, 504} <= set(codes):
            retry_on.append("gateway-error")  # adds nothing but retrying a per-try timeout
        elif backend_timeout:
            fields["codes"].warn("a backendRequest timeout is retried only when codes include "
                                 "502, 503 and 504 (pyproxy retries a timeout as a gateway error)")
    else:
        # Unspecified codes are implementation-specific: Envoy's default, 503 and timeouts.
        retry_on = ["connect-failure", "reset", "gateway-error"]
    values: dict[str, Any] = {"attempts": attempts, "retry_on": tuple(retry_on),
                              "status_codes": codes}
    if timeouts is not None:
        values["per_try_timeout"] = timeouts.per_try_timeout
    if "backoff" in fields:
        base = fields["backoff"].duration(zero=True)
        values["backoff"] = Backoff(base=base, max=max(base * 10, Backoff().max))
    return Retries(**values)


def _session_persistence(node: Node, m: Manifest) -> Sticky | None:
    fields = node.fields(["type", "cookie", "header", "absoluteTimeout", "sessionName",
                          "cookieConfig"], {
        "idleTimeout": "a pinned session lasts until absoluteTimeout (or 1h)",
    })
    kind = fields["type"].choice("Cookie", "Header") if "type" in fields else "Cookie"
    ttl = fields["absoluteTimeout"].duration() if "absoluteTimeout" in fields else 3600.0
    if kind == "Header":
        header = fields["header"].fields(["name"]) if "header" in fields else {}
        name_node = header.get("name") or fields.get("sessionName")
        if name_node is None:
            raise node.error("needs header.name for type Header")
        return Sticky(header=name_node.header_name())
    cookie = (fields.get("cookie") or fields.get("cookieConfig"))
    spec = cookie.fields(["name", "lifetimeType"], {
        "path": "pyproxy's sticky cookie has Path=/"}) if cookie is not None else {}
    name_node = spec.get("name") or fields.get("sessionName")
    name = name_node.text() if name_node is not None else f"pyproxy-{m.name}"
    if "lifetimeType" in spec and spec["lifetimeType"].choice("Session", "Permanent") == \
            "Session":
        max_age = "absoluteTimeout" if "absoluteTimeout" in fields else "1h"
        spec["lifetimeType"].warn("Session is not honoured: pyproxy's sticky cookie has a "
                                  f"Max-Age ({max_age})")
    if any(c in name for c in "/ ;=,"):
        raise (name_node or node).error(f"must be a cookie name, got {name!r}")
    return Sticky(cookie=StickyCookie(name, ttl))

