"""API objects → one Config, through the same importers as manifests in a file.

Pure: plain dicts in, a Config and a per-object report out (the provider does the I/O).

- **Which objects are ours**: GatewayClasses whose ``spec.controllerName`` is ours;
  Gateways of those classes (narrowed by ``kubernetes.gateway``); HTTPRoutes with a
  ``parentRef`` to one of those Gateways or to a Service (GAMMA) — other parentRefs are
  removed from the copy that is imported, so a route is served only through its parents
  here; every ReferenceGrant, TrafficSplit, HTTPRouteGroup, VirtualService and
  DestinationRule in the watched namespaces.
- **Routes**: each object becomes a :class:`~pyproxy.config.document.Document` and goes
  through ``config.assemble`` with the file's documents, so a route means the same from a
  file and from the API. The API's documents come first: their routes take precedence over
  the file's (first match wins; docs/kubernetes-combining.md).
- **Endpoints**: every Service (one port: the one named ``http``, else the first) becomes a
  native service whose endpoints are its pods from all of its EndpointSlices, merged and
  deduplicated: ``ready`` ones (a missing ``ready`` counts as ready); when none is ready,
  those ``serving`` and ``terminating`` (still able to answer, as kube-proxy does).
- **An object that does not import** (an error from the importers) is left out and the
  rest built again without it; its error is its report. An error in the file itself fails
  the whole build, and the last good config keeps serving.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pyproxy.config.assemble import assemble
from pyproxy.config.document import ConfigInvalid, ConfigIssue, Document
from pyproxy.config.model import (
    Config,
    Endpoint,
    KubernetesConfig,
    Service,
    kubernetes_short_name,
)
from pyproxy.discovery.kubernetes.report import (
    Conflict,
    ImportResult,
    ObjectKey,
    ParentKey,
    parent_key,
)
from pyproxy.discovery.kubernetes.resources import Object

__all__ = [
    "Built",
    "Selection",
    "build",
    "claimed_classes",
    "endpoints_of",
    "generation",
    "manifest_documents",
    "native_service_name",
    "object_key",
    "object_source",
    "settings_documents",
    "with_kubernetes",
]

GATEWAY_GROUP = "gateway.networking.k8s.io"
# Kinds that go through config.compat's importers, in the order their documents are given.
IMPORTED_KINDS = ("Gateway", "ReferenceGrant", "HTTPRoute", "DestinationRule", "VirtualService",
                  "HTTPRouteGroup", "TrafficSplit")
# Importer messages naming a Gateway API ResolvedRefs reason (config/compat/gateway_api.py).
_UNRESOLVED = re.compile(r"\((BackendNotFound|RefNotPermitted|InvalidKind)\)")
_NOT_ATTACHED = "is attached to no listener"


@dataclass(frozen=True)
class Selection:
    """What this proxy serves: from the ``kubernetes:`` block."""

    controller_name: str
    gateways: tuple[str, ...] = ()  # "NS/NAME" or "NAME"; (): all of our classes
    qualified_services: bool = False  # several namespaces: services are named NAME.NS


def object_source(kind: str, namespace: str, name: str) -> str:
    """The "file" of an API object's document, as messages show it."""
    return f"kubernetes:{kind}/{namespace}/{name}" if namespace else f"kubernetes:{kind}/{name}"


def _metadata(obj: Object) -> dict[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def object_key(obj: Object) -> ObjectKey:
    metadata = _metadata(obj)
    return ObjectKey(str(obj.get("kind") or ""), str(metadata.get("namespace") or ""),
                     str(metadata.get("name") or ""))


def generation(obj: Object) -> int:
    generation = _metadata(obj).get("generation")
    return generation if isinstance(generation, int) else 0


def _spec(obj: Object) -> dict[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


# ---------------------------------------------------------------------------- endpoints


def native_service_name(namespace: str, name: str, qualified: bool) -> str:
    """The native service a Kubernetes Service becomes: ``NAME``, or ``NAME.NS`` when
    several namespaces are watched (the importers resolve both forms)."""
    return f"{name}.{namespace}" if qualified else name


def _service_port(service: Object) -> dict[str, Any] | None:
    ports = [p for p in _spec(service).get("ports") or [] if isinstance(p, dict)
             and str(p.get("protocol") or "TCP") == "TCP"]
    for port in ports:
        if port.get("name") == "http" or str(port.get("appProtocol") or "").lower() in (
                "http", "kubernetes.io/h2c"):
            return port
    return ports[0] if ports else None


def _slice_port(slice_: Object, port: Mapping[str, Any]) -> int | None:
    """The endpoint port in ``slice_`` that serves the Service ``port``: matched by name
    (the slice's port names are the Service's), else by number (a numeric targetPort)."""
    name = port.get("name") or ""
    ports = [p for p in slice_.get("ports") or [] if isinstance(p, dict)]
    for candidate in ports:
        if (candidate.get("name") or "") == name and isinstance(candidate.get("port"), int):
            return int(candidate["port"])
    target = port.get("targetPort", port.get("port"))
    for candidate in ports:
        if isinstance(target, int) and candidate.get("port") == target:
            return target
    return None


_SLICE_LABEL_PREFIXES = ("kubernetes.io/", "endpointslice.kubernetes.io/")


def endpoints_of(service: Object, slices: Iterable[Object]) -> tuple[Endpoint, ...]:
    """The pods behind ``service``, from all its EndpointSlices, deduplicated.

    Ready endpoints (``conditions.ready`` true or missing); when none is ready, those that
    are serving and terminating. Labels: the slice's own (the Service's labels, which the
    EndpointSlice controller copies), plus ``pod``, ``node`` and ``zone`` where known.
    """
    spec = _spec(service)
    if spec.get("type") == "ExternalName" and spec.get("externalName"):
        port = _service_port(service)
        if port is None or not isinstance(port.get("port"), int):
            return ()
        return (Endpoint(str(spec["externalName"]), int(port["port"])),)
    port = _service_port(service)
    if port is None:
        return ()
    ready: dict[tuple[str, int], Endpoint] = {}
    fallback: dict[tuple[str, int], Endpoint] = {}
    for slice_ in sorted(slices, key=lambda s: str(_metadata(s).get("name"))):
        number = _slice_port(slice_, port)
        if number is None:
            continue
        labels = {k: str(v) for k, v in (_metadata(slice_).get("labels") or {}).items()
                  if isinstance(k, str) and not k.startswith(_SLICE_LABEL_PREFIXES)}
        for item in slice_.get("endpoints") or []:
            if not isinstance(item, dict):
                continue
            conditions = item.get("conditions") or {}
            is_ready = conditions.get("ready") is not False
            serving = conditions.get("serving", is_ready) is not False
            terminating = conditions.get("terminating") is True
            if not is_ready and not (serving and terminating):
                continue
            own = dict(labels)
            target = item.get("targetRef") or {}
            if target.get("kind") == "Pod" and target.get("name"):
                own["pod"] = str(target["name"])
            if item.get("nodeName"):
                own["node"] = str(item["nodeName"])
            if item.get("zone"):
                own["zone"] = str(item["zone"])
            for address in item.get("addresses") or []:
                key = (str(address), number)
                chosen = ready if is_ready else fallback
                if key not in ready and key not in chosen:
                    chosen[key] = Endpoint(str(address), number, own)
    found = ready or fallback
    return tuple(found[key] for key in sorted(found))


# ---------------------------------------------------------------------------- ours


def claimed_classes(classes: Iterable[Object], controller_name: str) -> set[str]:
    return {object_key(c).name for c in classes
            if _spec(c).get("controllerName") == controller_name}


def served_gateways(gateways: Iterable[Object], classes: set[str], selection: Selection
                    ) -> list[Object]:
    chosen = set(selection.gateways)
    found = []
    for gateway in gateways:
        key = object_key(gateway)
        if _spec(gateway).get("gatewayClassName") not in classes:
            continue
        if chosen and key.name not in chosen and f"{key.namespace}/{key.name}" not in chosen:
            continue
        found.append(gateway)
    return found


def our_parents(route: Object, gateways: frozenset[tuple[str, str]]) -> list[dict[str, Any]]:
    """The route's parentRefs that name a Gateway we serve, or a Service (GAMMA)."""
    namespace = object_key(route).namespace
    refs = []
    for ref in _spec(route).get("parentRefs") or []:
        if not isinstance(ref, dict):
            continue
        parent = parent_key(ref, namespace)
        if (parent.group, parent.kind) == (GATEWAY_GROUP, "Gateway") and (
                parent.namespace, parent.name) in gateways:
            refs.append(ref)
        elif parent.kind == "Service" and parent.group in ("", "core"):
            refs.append(ref)
    return refs


@dataclass(frozen=True)
class ApiManifest:
    """One API object as the importers will read it."""

    key: ObjectKey
    document: Document
    parents: tuple[ParentKey, ...]  # HTTPRoute: the parentRefs it is served through
    generation: int


def manifest_documents(objects: Mapping[str, Sequence[Object]], selection: Selection,
                       cache: dict[tuple[ObjectKey, object], ApiManifest] | None = None
                       ) -> list[ApiManifest]:
    """The objects of ``objects`` (kind → objects) that are ours, as documents.

    ``cache`` maps (object, revision) to the document made before, so an unchanged object
    keeps its Document (which lets the importer skip it too); entries not used this time
    are dropped from it.
    """
    classes = claimed_classes(objects.get("GatewayClass", ()), selection.controller_name)
    gateways = served_gateways(objects.get("Gateway", ()), classes, selection)
    gateway_keys = frozenset((object_key(g).namespace, object_key(g).name) for g in gateways)
    used: dict[tuple[ObjectKey, object], ApiManifest] = {}
    found = []
    for kind in IMPORTED_KINDS:
        for obj in (gateways if kind == "Gateway" else objects.get(kind, ())):
            key = object_key(obj)
            version: tuple[ObjectKey, object] = (key, _revision(obj))
            if kind == "HTTPRoute":  # which parentRefs are ours depends on the Gateways
                version = (key, (version[1], gateway_keys))
            manifest = cache.get(version) if cache is not None else None
            if manifest is None:
                manifest = _manifest(obj, key, gateway_keys)
                if manifest is None:
                    continue
            used[version] = manifest
            found.append(manifest)
    if cache is not None:
        cache.clear()
        cache.update(used)
    return found


def _revision(obj: Object) -> object:
    """What changes when an object's import can: its uid and ``metadata.generation`` (every
    kind imported is a custom resource, whose generation moves with each change of its
    spec — and not with a write to its status, such as pyproxy's own); else its
    resourceVersion."""
    metadata = _metadata(obj)
    if isinstance(metadata.get("generation"), int):
        return metadata.get("uid"), metadata["generation"], metadata.get("creationTimestamp")
    return metadata.get("resourceVersion") or id(obj)


def _manifest(obj: Object, key: ObjectKey, gateways: frozenset[tuple[str, str]]
              ) -> ApiManifest | None:
    metadata = _metadata(obj)
    spec = dict(_spec(obj))
    parents: tuple[ParentKey, ...] = ()
    if key.kind == "HTTPRoute":
        refs = our_parents(obj, gateways)
        if not refs:
            return None  # another controller's route
        spec["parentRefs"] = refs
        parents = tuple(parent_key(ref, key.namespace) for ref in refs)
    value = {
        "apiVersion": obj.get("apiVersion"),
        "kind": key.kind,
        "metadata": {k: metadata[k] for k in ("name", "namespace", "creationTimestamp")
                     if metadata.get(k) is not None},
        "spec": spec,
    }
    return ApiManifest(key, Document(object_source(*key), value), parents, generation(obj))


# ---------------------------------------------------------------------------- combining


@dataclass
class Built:
    """A build's outcome: the config (None when the file itself is invalid), its
    warnings, the per-object results, the conflicts, and the file's errors."""

    config: Config | None
    warnings: tuple[ConfigIssue, ...] = ()
    results: dict[ObjectKey, dict[ParentKey | None, ImportResult]] = field(default_factory=dict)
    conflicts: tuple[Conflict, ...] = ()
    errors: tuple[ConfigIssue, ...] = ()
    # config service name → Kubernetes Service (native name) its endpoints come from
    endpoint_sources: dict[str, str] = field(default_factory=dict)


def combine_services(file_documents: Sequence[Document],
                     api: Mapping[str, tuple[Endpoint, ...]],
                     ) -> tuple[list[Document], dict[str, Service], list[Conflict],
                                dict[str, str]]:
    """The file's documents and the API's services, combined (docs/kubernetes-combining.md).

    A file service named like a Kubernetes Service (``NAME`` or ``NAME.NS``) without
    ``endpoints`` gets the Service's pods as its endpoints, keeping its own policies; one
    with ``endpoints`` of its own wins over the Service (a conflict, reported). Every other
    Kubernetes Service is a native service with default policies. The last value maps each
    service whose endpoints come from the API to its Kubernetes Service's native name.
    """
    services = {name: Service(name, endpoints) for name, endpoints in api.items()}
    sources = {name: name for name in api}
    conflicts: list[Conflict] = []
    documents = []
    for document in file_documents:
        section = document.value.get("services") if isinstance(document.value, dict) and (
            "apiVersion" not in document.value) else None
        if not isinstance(section, dict):
            documents.append(document)
            continue
        changed = dict(section)
        for name, value in section.items():
            target = _api_name(name, services)
            if target is None:
                continue
            own = value.get("endpoints") if isinstance(value, dict) else None
            if own is not None:
                conflicts.append(Conflict("service", str(name), (
                    f"service {name!r} in {document.source} has endpoints of its own: they "
                    f"are used, not the EndpointSlices of Kubernetes Service {target!r}")))
                del services[target]
                del sources[target]
            elif isinstance(value, dict):
                endpoints = services.pop(target).endpoints
                del sources[target]
                sources[str(name)] = target
                if endpoints:
                    changed[name] = {**value, "endpoints": [
                        {"address": _address(ep), "labels": dict(ep.labels)}
                        for ep in endpoints]}
                else:
                    # No pod ready yet: the Service without the file's policies answers 503
                    # until one is (a native service needs at least one endpoint).
                    del changed[name]
                    services[str(name)] = Service(str(name), ())
        documents.append(Document(document.source, {**document.value, "services": changed},
                                  document.lines))
    return documents, services, conflicts, sources


def _api_name(name: object, services: Mapping[str, Service]) -> str | None:
    if not isinstance(name, str):
        return None
    if name in services:
        return name
    short = kubernetes_short_name(name)
    if short is not None:
        qualified = ".".join(name.split(".")[:2])
        if qualified in services:
            return qualified
        if short in services:
            return short
    return None


def _address(endpoint: Endpoint) -> str:
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{host}:{endpoint.port}"


def build(file_documents: Sequence[Document], env: Mapping[str, str],
          manifests: Sequence[ApiManifest], api_services: Mapping[str, tuple[Endpoint, ...]],
          route_cache: dict[object, object] | None = None) -> Built:
    """Assemble the file and the API objects; objects with errors are left out.
    ``route_cache``, kept between builds, spares unchanged HTTPRoutes the importer."""
    documents, services, conflicts, sources = combine_services(file_documents, api_services)
    by_source = {m.document.source: m for m in manifests}
    rejected: dict[str, list[ConfigIssue]] = {}
    while True:
        kept = [m.document for m in manifests if m.document.source not in rejected]
        try:
            config, warnings = assemble([*kept, *documents], env, services=services,
                                        route_cache=route_cache)
        except ConfigInvalid as invalid:
            from_api = [i for i in invalid.issues if i.file in by_source]
            others = [i for i in invalid.issues if i.file not in by_source]
            if others or not from_api:
                return Built(None, invalid.warnings, _results(manifests, rejected,
                                                              invalid.warnings),
                             tuple(conflicts), tuple(others))
            for issue in from_api:
                rejected.setdefault(issue.file, []).append(issue)
            continue
        conflicts += _route_conflicts(rejected)
        return Built(config, warnings, _results(manifests, rejected, warnings),
                     tuple(conflicts), endpoint_sources=sources)


def _route_conflicts(rejected: Mapping[str, list[ConfigIssue]]) -> list[Conflict]:
    return [Conflict("route", source, issue.message) for source, issues in rejected.items()
            for issue in issues if "a native route of that name exists" in issue.message]


def _results(manifests: Sequence[ApiManifest], rejected: Mapping[str, list[ConfigIssue]],
             warnings: Sequence[ConfigIssue]
             ) -> dict[ObjectKey, dict[ParentKey | None, ImportResult]]:
    warned: dict[str, list[ConfigIssue]] = {}
    for issue in warnings:
        warned.setdefault(issue.file, []).append(issue)
    results: dict[ObjectKey, dict[ParentKey | None, ImportResult]] = {}
    for m in manifests:
        errors = rejected.get(m.document.source, [])
        notes = warned.get(m.document.source, [])
        if errors:
            result = ImportResult(False, False, "UnsupportedValue", _message(errors),
                                  m.generation)
        elif any(_NOT_ATTACHED in issue.message for issue in notes):
            result = ImportResult(False, True, "NotAllowedByListeners", _message(notes),
                                  m.generation)
        else:
            unresolved = next((found[1] for issue in notes
                               if (found := _UNRESOLVED.search(issue.message))), None)
            result = ImportResult(True, unresolved is None, unresolved or "Accepted",
                                  _message(notes), m.generation)
        parents: tuple[ParentKey | None, ...] = m.parents or (None,)
        results[m.key] = dict.fromkeys(parents, result)
    return results


def _message(issues: Sequence[ConfigIssue]) -> str:
    """The issues as one status message (the API caps messages at 32768 characters)."""
    text = "; ".join(f"{issue.path}: {issue.message}" if issue.path else issue.message
                     for issue in issues)
    return text if len(text) <= 4096 else text[:4093] + "..."


def replace_endpoints(config: Config, api: Mapping[str, tuple[Endpoint, ...]],
                      changed: set[str], sources: Mapping[str, str]) -> Config | None:
    """``config`` with new endpoints for the services fed by the ``changed`` Kubernetes
    Services — the fast path for pod churn, which changes no route — or None when that is
    not safe (a Service appears or goes, a service empties or fills, or a subset would
    select nothing): then build again."""
    fed = {api_name for api_name in sources.values()}
    if not changed <= fed or not changed <= set(api):
        return None
    services = dict(config.services)
    for name, api_name in sources.items():
        old = services.get(name)
        if api_name not in changed:
            continue
        if old is None:
            return None
        new = replace(old, endpoints=api[api_name])
        if bool(new.endpoints) != bool(old.endpoints):
            return None  # emptied or refilled: let the importers say so
        if any(not new.subset_endpoints(subset) for subset in new.subsets):
            return None
        services[name] = new
    return replace(config, services=services)


# The document keys that are combined with the API's objects; the rest are settings.
_COMBINED_KEYS = ("services", "routes", "canaries")


def settings_documents(documents: Sequence[Document]) -> list[Document]:
    """The files' documents with only their top-level settings (listen, admin,
    kubernetes...): what in-cluster mode starts with, before the API is read (the file's
    routes and services may name Kubernetes Services not known yet)."""
    return [Document(d.source, {k: v for k, v in d.value.items() if k not in _COMBINED_KEYS},
                     d.lines)
            for d in documents if isinstance(d.value, dict) and "apiVersion" not in d.value]


def with_kubernetes(settings: KubernetesConfig | None, flag: bool) -> KubernetesConfig | None:
    """``--kubernetes`` turns in-cluster mode on with the file's ``kubernetes:`` block, or
    every default."""
    if settings is not None or not flag:
        return settings
    return KubernetesConfig()
