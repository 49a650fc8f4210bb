"""Istio, SMI and Gateway API manifests → the native model (docs/compat.md).

``config.assemble`` hands every document with ``apiVersion`` and ``kind`` to
:func:`import_manifests`, after the native ``services:`` and ``routes:`` are read: a
manifest names Kubernetes services, and their endpoints come from the native ``services:``
block (``NAME`` also answers ``NAME.NS``, ``NAME.NS.svc`` and ``NAME.NS.svc.cluster.local``;
endpoint labels are the pod labels that subsets select on). One module per family:

- :mod:`.istio`: ``VirtualService`` (first match wins, in ``http[]`` order),
  ``DestinationRule`` (subsets and policies added to the native service), ``Gateway``
  (server hosts narrow the hosts of VirtualServices bound to it);
- :mod:`.smi`: ``TrafficSplit`` (apex service → weighted leaf services; with ``matches``,
  other requests go to the apex service itself) and ``HTTPRouteGroup``;
- :mod:`.gateway_api`: ``HTTPRoute`` (ordered by the spec's precedence rules), ``Gateway``
  listener hostnames, ``ReferenceGrant``.

Whatever pyproxy cannot honour is a warning naming the file, line, manifest and field;
``docs/compat.md`` lists each such field and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyproxy.config.compat import gateway_api, istio, smi
from pyproxy.config.compat.common import (
    ImportContext,
    ImportedRoute,
    Manifest,
    Report,
)
from pyproxy.config.document import Document, describe
from pyproxy.config.model import Service

__all__ = ["ImportResult", "ImportedRoute", "import_manifests"]

ISTIO_NETWORKING = "networking.istio.io"
SMI_SPLIT = "split.smi-spec.io"
SMI_SPECS = "specs.smi-spec.io"
GATEWAY_API = "gateway.networking.k8s.io"
LINKERD_POLICY = "policy.linkerd.io"  # Linkerd's own HTTPRoute: Gateway API's schema

# Kinds of the families pyproxy reads, but which it cannot use: why, for the warning.
_NOT_ROUTING = {
    (ISTIO_NETWORKING, "ServiceEntry"): "pyproxy reaches external hosts through a native "
                                        "service with their address as endpoint",
    (ISTIO_NETWORKING, "Sidecar"): "pyproxy is not a sidecar; it proxies what it is sent",
    (ISTIO_NETWORKING, "EnvoyFilter"): "pyproxy is not Envoy",
    (ISTIO_NETWORKING, "WorkloadEntry"): "endpoints come from the native services: block",
    (ISTIO_NETWORKING, "WorkloadGroup"): "endpoints come from the native services: block",
    (ISTIO_NETWORKING, "ProxyConfig"): "pyproxy is not Envoy",
    ("access.smi-spec.io", "TrafficTarget"): "access control is not enforced: every client "
                                             "is allowed",
    (SMI_SPECS, "TCPRoute"): "pyproxy routes HTTP only",
    (SMI_SPECS, "UDPRoute"): "pyproxy routes HTTP only",
    ("metrics.smi-spec.io", "TrafficMetrics"): "metrics are pyproxy's own (docs/metrics.md)",
    (GATEWAY_API, "GatewayClass"): "pyproxy itself is the gateway implementation",
    (GATEWAY_API, "GRPCRoute"): "pyproxy routes HTTP/1.1, not gRPC",
    (GATEWAY_API, "TCPRoute"): "pyproxy routes HTTP only",
    (GATEWAY_API, "TLSRoute"): "pyproxy routes HTTP only (no TLS passthrough)",
    (GATEWAY_API, "UDPRoute"): "pyproxy routes HTTP only",
    (GATEWAY_API, "BackendTLSPolicy"): "set upstream TLS on the native service (tls: and "
                                       "https:// endpoints)",
    (GATEWAY_API, "ListenerSet"): "listeners are pyproxy's own (listen:, tls:)",
    (LINKERD_POLICY, "Server"): "authorization policy is not enforced",
    (LINKERD_POLICY, "ServerAuthorization"): "authorization policy is not enforced",
    (LINKERD_POLICY, "AuthorizationPolicy"): "authorization policy is not enforced",
    (LINKERD_POLICY, "HTTPLocalRateLimitPolicy"): "pyproxy has no rate limiting",
}


@dataclass(frozen=True)
class ImportResult:
    routes: list[ImportedRoute]  # in the order each family defines
    services: dict[str, Service]  # the native services, with DestinationRule changes


def import_manifests(
    documents: Sequence[Document], *, services: Mapping[str, Service],
    declared_services: set[str], taken_route_names: set[str], report: Report,
    route_cache: dict[object, object] | None = None,
) -> ImportResult:
    """``route_cache``: a dict kept between calls, so unchanged HTTPRoutes (the same
    Documents) are not imported again (gateway_api)."""
    ctx = ImportContext(dict(services), set(declared_services), set(taken_route_names), report,
                        route_cache=route_cache)
    families: dict[str, list[Manifest]] = {"istio": [], "smi": [], "gateway_api": []}
    manifests = [m for m in (_manifest(ctx, document) for document in documents) if m]
    # One object per kind, namespace and name, as in Kubernetes: a later document replaces
    # an earlier one (kubectl apply -f all-v1.yaml -f test-v2.yaml).
    last = {(m.group, m.kind, m.namespace, m.name): m for m in manifests}
    for m in manifests:
        latest = last[(m.group, m.kind, m.namespace, m.name)]
        if latest is not m:
            where = f"{latest.doc.source}:{latest.doc.line('')}"
            ctx.warn(m, "metadata.name", f"is replaced by the {m.kind} of the same name and "
                                         f"namespace at {where} (as kubectl apply would)")
    for m in manifests:
        if last[(m.group, m.kind, m.namespace, m.name)] is not m:
            continue
        if m.group == ISTIO_NETWORKING and m.kind in ("VirtualService", "DestinationRule",
                                                       "Gateway"):
            families["istio"].append(m)
        elif (m.group, m.kind) in ((SMI_SPLIT, "TrafficSplit"), (SMI_SPECS, "HTTPRouteGroup")):
            families["smi"].append(m)
        elif (m.group == GATEWAY_API and m.kind in ("HTTPRoute", "Gateway", "ReferenceGrant")) \
                or (m.group == LINKERD_POLICY and m.kind == "HTTPRoute"):
            families["gateway_api"].append(m)
        elif (m.group, m.kind) in _NOT_ROUTING:
            ctx.warn(m, "kind", f"is not imported: {_NOT_ROUTING[m.group, m.kind]}")
        elif m.group == "" and m.kind == "Service":
            ctx.warn(m, "kind", "is not imported: a Kubernetes Service has no addresses here; "
                                "give its endpoints in a native services: block "
                                f"(services: {{{m.name}: {{endpoints: [...]}}}})")
        elif m.group in ("", "apps", "batch", "rbac.authorization.k8s.io", "policy",
                         "autoscaling", "networking.k8s.io"):
            ctx.warn(m, "kind", f"is not imported: {m.api_version} {m.kind} is not routing "
                                "config pyproxy reads")
        else:
            ctx.warn(m, "kind", f"is not imported: pyproxy reads Istio VirtualService, "
                                "DestinationRule and Gateway; SMI TrafficSplit and "
                                "HTTPRouteGroup; Gateway API HTTPRoute, Gateway and "
                                f"ReferenceGrant, not {m.api_version} {m.kind}")
    # DestinationRules first: their subsets and policies are what the routes then name.
    istio.import_istio(ctx, families["istio"])
    smi.import_smi(ctx, families["smi"])
    gateway_api.import_gateway_api(ctx, families["gateway_api"])
    return ImportResult(ctx.routes, ctx.services)


_VERSIONS = {
    ISTIO_NETWORKING: ("v1alpha3", "v1beta1", "v1"),
    SMI_SPLIT: ("v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"),
    SMI_SPECS: ("v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"),
    GATEWAY_API: ("v1alpha2", "v1beta1", "v1"),
    LINKERD_POLICY: ("v1alpha1", "v1beta1", "v1beta2", "v1beta3"),
}


def _manifest(ctx: ImportContext, document: Document) -> Manifest | None:
    value = document.value
    api_version, kind = value.get("apiVersion"), value.get("kind")
    bad = None
    if not isinstance(api_version, str) or not api_version:
        bad = ("apiVersion", f"must be a string such as networking.istio.io/v1, got "
                             f"{describe(api_version)}")
    elif not isinstance(kind, str) or not kind:
        bad = ("kind", f"must be a string such as VirtualService, got {describe(kind)}")
    metadata = value.get("metadata")
    if bad is None and not isinstance(metadata, dict):
        bad = ("metadata", "must be a mapping with at least a name")
    elif bad is None and (not isinstance(metadata.get("name"), str) or not metadata["name"]):
        bad = ("metadata.name", f"must be a non-empty string, got "
                                f"{describe(metadata.get('name'))}")
    elif bad is None and metadata.get("namespace") is not None and not isinstance(
            metadata.get("namespace"), str):
        bad = ("metadata.namespace", f"must be a string, got "
                                     f"{describe(metadata.get('namespace'))}")
    if bad is not None:
        report_path, message = bad
        ctx.report("error", document, report_path, message)
        return None
    group, _, version = api_version.rpartition("/")
    created = metadata.get("creationTimestamp")
    m = Manifest(document, api_version, group, version, kind, metadata["name"],
                 metadata.get("namespace") or "default",
                 None if created is None else str(created))
    known = _VERSIONS.get(group)
    if known is not None and version not in known:
        ctx.warn(m, "apiVersion", f"version {version} of {group} is not one pyproxy knows "
                                  f"({', '.join(known)}); read as {known[-1]}")
    return m

