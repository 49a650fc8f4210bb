"""The Kubernetes API resources pyproxy reads and writes, as plain constants.

A :class:`Resource` says where a kind lives in the API (``/apis/GROUP/VERSION/...PLURAL``);
the client builds every URL from it. The versions are the ones the CRDs serve as their
storage version today; :meth:`pyproxy.discovery.kubernetes.client.KubeClient.discover`
switches to another served version of the same group when a cluster has only that one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CORE_KINDS",
    "DESTINATION_RULE",
    "ENDPOINT_SLICE",
    "GATEWAY",
    "GATEWAY_CLASS",
    "HTTP_ROUTE",
    "HTTP_ROUTE_GROUP",
    "LEASE",
    "READ_KINDS",
    "REFERENCE_GRANT",
    "SERVICE",
    "TRAFFIC_SPLIT",
    "VIRTUAL_SERVICE",
    "Object",
    "Resource",
]


Object = dict[str, Any]  # one Kubernetes object (or Status) as decoded JSON


@dataclass(frozen=True)
class Resource:
    """One API resource: ``group`` is "" for the core API (``/api/v1``)."""

    group: str
    version: str
    plural: str
    namespaced: bool = True
    kind: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        """The URL path of the collection (no ``name``) or of one object. A namespaced
        resource with ``namespace=None`` is the collection across all namespaces."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
            if subresource is not None:
                base += f"/{subresource}"
        return base

    def with_version(self, version: str) -> Resource:
        return Resource(self.group, version, self.plural, self.namespaced, self.kind)


GATEWAY_API = "gateway.networking.k8s.io"

GATEWAY_CLASS = Resource(GATEWAY_API, "v1", "gatewayclasses", False, "GatewayClass")
GATEWAY = Resource(GATEWAY_API, "v1", "gateways", True, "Gateway")
HTTP_ROUTE = Resource(GATEWAY_API, "v1", "httproutes", True, "HTTPRoute")
REFERENCE_GRANT = Resource(GATEWAY_API, "v1beta1", "referencegrants", True, "ReferenceGrant")
TRAFFIC_SPLIT = Resource("split.smi-spec.io", "v1alpha2", "trafficsplits", True, "TrafficSplit")
HTTP_ROUTE_GROUP = Resource("specs.smi-spec.io", "v1alpha4", "httproutegroups", True,
                            "HTTPRouteGroup")
VIRTUAL_SERVICE = Resource("networking.istio.io", "v1", "virtualservices", True,
                           "VirtualService")
DESTINATION_RULE = Resource("networking.istio.io", "v1", "destinationrules", True,
                            "DestinationRule")
SERVICE = Resource("", "v1", "services", True, "Service")
ENDPOINT_SLICE = Resource("discovery.k8s.io", "v1", "endpointslices", True, "EndpointSlice")
LEASE = Resource("coordination.k8s.io", "v1", "leases", True, "Lease")

# What the provider reads: every Kubernetes cluster serves these two ...
CORE_KINDS = (SERVICE, ENDPOINT_SLICE)
# ... and these where their CRDs are installed (the ``kinds:`` setting names them by kind).
READ_KINDS = (GATEWAY_CLASS, GATEWAY, HTTP_ROUTE, REFERENCE_GRANT, TRAFFIC_SPLIT,
              HTTP_ROUTE_GROUP, VIRTUAL_SERVICE, DESTINATION_RULE, *CORE_KINDS)
