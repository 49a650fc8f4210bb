"""The resource types the fake API server serves, as its discovery documents describe them.

Each kind is one row: its API group, the versions it is served at, the plural used in
URLs, whether it lives in a namespace, whether it has a ``/status`` subresource, and
whether it comes from a CRD (a CRD group can be "uninstalled" so that tests can check a
client that looks for a group's CRDs before watching it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KindInfo:
    group: str  # "" for the core group
    versions: tuple[str, ...]  # served versions, preferred first
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool = False
    from_crd: bool = False
    # Built-in kinds accept a PUT without metadata.resourceVersion (an unconditional
    # update); custom resources reject it as Invalid (AllowUnconditionalUpdate is false).
    unconditional_update: bool = True
    short_names: tuple[str, ...] = ()

    def api_version(self, version: str | None = None) -> str:
        v = version or self.versions[0]
        return f"{self.group}/{v}" if self.group else v

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


GATEWAY_GROUP = "gateway.networking.k8s.io"
SMI_SPLIT_GROUP = "split.smi-spec.io"
SMI_SPECS_GROUP = "specs.smi-spec.io"
ISTIO_GROUP = "networking.istio.io"


def _crd(group: str, versions: tuple[str, ...], plural: str, kind: str, *,
         namespaced: bool = True, status: bool = False) -> KindInfo:
    return KindInfo(group, versions, plural, kind, namespaced, status_subresource=status,
                    from_crd=True, unconditional_update=False)


KINDS: tuple[KindInfo, ...] = (
    KindInfo("", ("v1",), "namespaces", "Namespace", namespaced=False, short_names=("ns",)),
    KindInfo("", ("v1",), "services", "Service", namespaced=True, short_names=("svc",)),
    KindInfo("discovery.k8s.io", ("v1",), "endpointslices", "EndpointSlice", namespaced=True),
    KindInfo("coordination.k8s.io", ("v1",), "leases", "Lease", namespaced=True),
    _crd(GATEWAY_GROUP, ("v1",), "gatewayclasses", "GatewayClass", namespaced=False,
         status=True),
    _crd(GATEWAY_GROUP, ("v1",), "gateways", "Gateway", status=True),
    _crd(GATEWAY_GROUP, ("v1",), "httproutes", "HTTPRoute", status=True),
    # ReferenceGrant is served at v1beta1 (the version every Gateway API release serves).
    _crd(GATEWAY_GROUP, ("v1beta1",), "referencegrants", "ReferenceGrant"),
    _crd(SMI_SPLIT_GROUP, ("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"), "trafficsplits",
         "TrafficSplit"),
    _crd(SMI_SPECS_GROUP, ("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"), "httproutegroups",
         "HTTPRouteGroup"),
    _crd(ISTIO_GROUP, ("v1beta1",), "virtualservices", "VirtualService"),
    _crd(ISTIO_GROUP, ("v1beta1",), "destinationrules", "DestinationRule"),
)

# Groups whose CRDs are installed in a fresh fake: everything but Istio, which tests turn on
# with FakeKube.install_group(ISTIO_GROUP) to check "Istio kinds only where their CRDs exist".
DEFAULT_INSTALLED_GROUPS = frozenset({GATEWAY_GROUP, SMI_SPLIT_GROUP, SMI_SPECS_GROUP})

BY_KIND: dict[str, KindInfo] = {k.kind: k for k in KINDS}
BY_GROUP_PLURAL: dict[tuple[str, str], KindInfo] = {(k.group, k.plural): k for k in KINDS}


def groups() -> list[str]:
    """Every non-core group, in a stable order."""
    seen: list[str] = []
    for k in KINDS:
        if k.group and k.group not in seen:
            seen.append(k.group)
    return seen
