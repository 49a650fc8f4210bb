"""SMI ``TrafficSplit`` (split.smi-spec.io v1alpha1–v1alpha4) and ``HTTPRouteGroup``
(specs.smi-spec.io v1alpha1–v1alpha4) → the native model.

A TrafficSplit becomes a route named after it for its apex (root) service's host, whose
backends are the leaf services with their weights (v1alpha1 milli-quantities such as
``500m`` included; weights are relative). With ``matches`` (v1alpha3+), only requests
matching one of the referenced HTTPRouteGroups' matches are split; a second route,
``<name>-apex``, sends every other request for the apex host to the apex service itself,
"the Kubernetes service with the same name as spec.service" (traffic-split v1alpha4). A
backend service without endpoints (Flagger's canary before its first pod) is a warning,
and its share answers 503 UH.

HTTPRouteGroup matches (``smi-spec`` traffic-specs): ``pathRegex`` is anchored at the
start of the path only (``/api`` also matches ``/api/v1``), ``methods`` lists methods or
``*`` for any, ``headers`` maps a header name to a regular expression that must match the
whole value. Several matches are ORed; conditions inside one match are ANDed.
"""

from __future__ import annotations

from dataclasses import replace

from pyproxy.config.compat.common import (
    ImportContext,
    Invalid,
    Manifest,
    Node,
    qualified_names,
)
from pyproxy.config.model import (
    NO_ENDPOINTS_STATUS,
    Backend,
    Match,
    PathMatch,
    Route,
    StringMatch,
    kubernetes_short_name,
)


def import_smi(ctx: ImportContext, manifests: list[Manifest]) -> None:
    groups: dict[tuple[str, str], tuple[Match, ...] | None] = {}
    for m in manifests:
        if m.kind == "HTTPRouteGroup":
            try:
                groups[m.key] = _route_group(ctx, m)
            except Invalid:
                groups[m.key] = None  # reported; splits naming it are skipped quietly
    splits = [m for m in manifests if m.kind == "TrafficSplit"]
    names = qualified_names(splits)
    for m in splits:
        try:
            _traffic_split(ctx, m, names[m.key], groups)
        except Invalid:
            pass


def _route_group(ctx: ImportContext, m: Manifest) -> tuple[Match, ...]:
    # v1alpha1/v1alpha2 put matches at the top level, v1alpha3+ under spec.
    root = m.root(ctx)
    node = root.key("spec").key("matches") if isinstance(m.doc.value.get("spec"), dict) \
        else root.key("matches")
    if isinstance(m.doc.value.get("spec"), dict):
        m.spec(ctx).fields(["matches"])
    matches = []
    for item in node.items():
        fields = item.fields(["name", "pathRegex", "methods", "headers"])
        path = None
        if "pathRegex" in fields:
            pattern = fields["pathRegex"].regex()
            if pattern not in ("", ".*", "^.*", "/.*", "^/.*"):
                # Anchored at the start only: the native regex is a full match.
                path = PathMatch("regex", f"(?:{pattern}).*")
        methods: tuple[str, ...] = ()
        if "methods" in fields:
            listed = [node.method() for node in fields["methods"].items()]
            if "*" not in listed:
                methods = tuple(dict.fromkeys(listed))
        headers = []
        if "headers" in fields:
            headers = _headers(fields["headers"])
        matches.append(Match(path=path, methods=methods, headers=tuple(headers)))
    if not matches:
        ctx.warn(m, node.path, "has no matches: a TrafficSplit naming it splits nothing")
    return tuple(matches)


def _headers(node: Node) -> list[tuple[str, StringMatch]]:
    """``{name: regex}`` (v1alpha2+); a list of such mappings is read the same way."""
    pairs = []
    entries = node.entries() if isinstance(node.value, dict) else [
        pair for item in node.items() for pair in item.entries()]
    for name, value in entries:
        key = Node(value.m, name, value.path, value.ctx).header_name()
        pairs.append((key, StringMatch("regex", value.regex())))
    return pairs


def _traffic_split(ctx: ImportContext, m: Manifest, base: str,
                   groups: dict[tuple[str, str], tuple[Match, ...] | None]) -> None:
    spec = m.spec(ctx).fields(["service", "backends", "matches"])
    if "service" not in spec:
        raise ctx.fail(m, "spec.service", "is required: the apex (root) service clients call")
    apex = spec["service"].host()
    host = kubernetes_short_name(apex) if apex.count(".") >= 2 else apex
    host = host or apex
    backends = _backends(ctx, spec.get("backends") or m.spec(ctx).key("backends"))
    matches: tuple[Match, ...] = ()
    if "matches" in spec:
        for ref in spec["matches"].items():
            fields = ref.fields(["kind", "name", "apiGroup"])
            kind = fields["kind"].text() if "kind" in fields else "HTTPRouteGroup"
            if kind != "HTTPRouteGroup":
                ref.warn(f"kind {kind} is not honoured: pyproxy splits HTTP requests only "
                         "(HTTPRouteGroup)")
                continue
            if "name" not in fields:
                raise ref.error("needs the name of an HTTPRouteGroup")
            key = (m.namespace, fields["name"].text())
            if key not in groups:
                raise ref.error(f"HTTPRouteGroup {key[1]!r} (namespace {key[0]}) is not among "
                                "the manifests")
            group = groups[key]
            if group is None:
                raise Invalid
            matches += group
        if not matches:
            spec["matches"].warn("no usable match: the split applies to no request; every "
                                 "request goes to the apex service")
    name = ctx.route_name(m, "metadata.name", base)
    if "matches" in spec:
        apex_service = ctx.resolve(apex, m.namespace)
        if apex_service is None:
            raise spec["service"].error(f"apex service {apex!r} has no endpoints, and requests "
                                        f"that match no route group go to it: "
                                        f"{ctx.missing_service(apex)}")
        if matches:
            ctx.add_route(Route(name=name, hosts=(host,), matches=matches, backends=backends), m)
        fallback = ctx.route_name(m, "spec.service", f"{base}-apex")
        ctx.add_route(Route(name=fallback, hosts=(host,),
                            backends=(Backend(apex_service, weight=1.0),)), m)
    else:
        ctx.add_route(Route(name=name, hosts=(host,), backends=backends), m)


def _backends(ctx: ImportContext, node: Node) -> tuple[Backend, ...]:
    items = node.items()
    if not items:
        raise node.error("needs at least one backend service")
    backends: list[Backend] = []
    failed = False
    for item in items:
        try:
            fields = item.fields(["service", "weight"])
            if "service" not in fields:
                raise item.error("needs a service")
            name = fields["service"].text()
            weight = _weight(fields["weight"]) if "weight" in fields else 0.0
            service = ctx.resolve(name, item.m.namespace)
            if service is None:
                if ctx.declared(name):
                    raise Invalid
                # Flagger writes the split before the canary has a pod (weight 0): the rest
                # of the split must keep serving, and this share answers 503 UH.
                fields["service"].warn(f"backend service {name!r} has no endpoints: its share "
                                       f"of the traffic gets 503 (UH) until it has some; "
                                       f"{ctx.missing_service(name)}")
        except Invalid:
            failed = True
            continue
        backend = Backend(service, weight=weight) if service is not None else Backend(
            name.lower(), weight=weight, direct_status=NO_ENDPOINTS_STATUS)
        for index, known in enumerate(backends):
            if known.service == backend.service:
                item.warn(f"backend {backend.service} is listed twice: pyproxy sends it the "
                          "sum of the weights")
                backends[index] = replace(known, weight=known.weight + weight)
                break
        else:
            backends.append(backend)
    if failed:
        raise Invalid
    if all(backend.weight == 0 for backend in backends):
        node.warn("every backend has weight 0: the split answers 503 until a weight is raised")
    return tuple(backends)


def _weight(node: Node) -> float:
    """A whole number (v1alpha2+) or a Kubernetes quantity (v1alpha1: ``1 = 1000m``)."""
    value = node.value
    if isinstance(value, str) and value.strip().endswith("m"):
        number = Node(node.m, value.strip()[:-1], node.path, node.ctx).number(0)
        return number / 1000
    return node.number(0)
