"""Documents → one Config: native blocks, mesh manifests and canaries, in one place.

A config is any number of YAML documents in any number of files. Each document is either
native (``listen``, ``services``, ``routes``...; read by ``config.parse``) or a Kubernetes
manifest (``apiVersion`` and ``kind``; Istio, SMI and Gateway API, read by
``config.compat``). This module sorts them, calls the readers in dependency order and
merges the results:

1. top-level settings, each from one document only;
2. native services, merged by name (manifests and routes name them);
3. native routes, then the routes imported from manifests, placed among the native
   documents' routes in document order (first match wins);
4. canaries, which name routes, imported ones too.

Every problem of every step is collected; errors raise :class:`ConfigInvalid` at the end,
in reading order (file, then line).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pyproxy.config import compat, parse
from pyproxy.config.document import (
    ConfigInvalid,
    ConfigIssue,
    Document,
    Severity,
    describe,
    item_path,
)
from pyproxy.config.model import Config, Route, Service

__all__ = ["RouteOrigin", "assemble"]


class RouteOrigin(NamedTuple):
    """Where a route was written: for ``pyproxy convert``'s comments."""

    file: str
    line: int | None
    label: str  # "Kind name" of the manifest it was imported from; "" for a native route
    path: str  # its key path in that document ("routes[0]", "spec.http[1]")


def assemble(
    documents: Sequence[Document], env: Mapping[str, str], *,
    origins: dict[str, RouteOrigin] | None = None,
    services: Mapping[str, Service] | None = None,
    route_cache: dict[object, object] | None = None,
) -> tuple[Config, tuple[ConfigIssue, ...]]:
    """Merge and check ``documents`` into one Config; returns it with its warnings.

    Raises ConfigInvalid with every error (and the warnings) when anything is wrong.
    ``origins``, when given, is filled with where each route came from (by route name).
    ``services`` are services known besides the documents' (in-cluster mode: Kubernetes
    Services with their pods); a native service of the same name replaces one.
    ``route_cache`` (kept by the caller between calls) spares unchanged HTTPRoutes from
    being imported again.
    """
    ctx = parse.Context(env)
    native: list[parse.At] = []
    manifests: list[parse.At] = []
    for document in documents:
        at = parse.At(document)
        if document.value is None:  # an empty document, such as after a trailing '---'
            continue
        if not isinstance(document.value, dict):
            ctx.error(at, "a config document must be a mapping with keys such as listen, "
                          f"services and routes; got {describe(document.value)}")
        elif _is_manifest(document.value):
            manifests.append(at)
        else:
            for key in document.value:
                if key not in parse.TOP_LEVEL.keys:
                    ctx.error(at.key(key), parse.unknown_key(key, parse.TOP_LEVEL.keys))
            native.append(at)

    # Sections in dependency order: backends name services, manifests name services and
    # routes, canaries name routes (imported ones too).
    settings = parse.read_settings(ctx, native)
    parse.read_services(ctx, native)
    for name, service in (services or {}).items():
        if name not in ctx.declared_services:
            ctx.services[name] = service
            ctx.declared_services.add(name)
    native_routes = parse.read_routes(ctx, native)
    routes, services = _with_manifests(ctx, documents, native, native_routes, manifests,
                                       origins, route_cache)
    canaries = parse.read_canaries(ctx, native)
    if native and not routes and not any(doc.doc.value.get("routes") or
                                         doc.doc.value.get("services") for doc in native):
        ctx.warn(native[0], "no routes and no services: every request gets 404")

    # Report in reading order (files, then lines), not in the order the sections were checked.
    file_order = {doc.source: index for index, doc in reversed(list(enumerate(documents)))}
    issues = sorted(ctx.issues, key=lambda issue: (file_order.get(issue.file, 0), issue.line or 0))
    errors = [issue for issue in issues if issue.severity == "error"]
    warnings = tuple(issue for issue in issues if issue.severity == "warning")
    if errors:
        raise ConfigInvalid(errors, warnings)
    return Config(services=services, routes=routes, canaries=canaries, **settings), warnings


def _is_manifest(value: dict[Any, Any]) -> bool:
    return "apiVersion" in value and "kind" in value


def _with_manifests(ctx: parse.Context, documents: Sequence[Document],
                    native: Sequence[parse.At], native_routes: tuple[Route, ...],
                    manifests: Sequence[parse.At], origins: dict[str, RouteOrigin] | None,
                    route_cache: dict[object, object] | None = None,
                    ) -> tuple[tuple[Route, ...], dict[str, Service]]:
    """Every route in document order, and the services with DestinationRule changes.

    Runs after the native services and routes are read: manifests name Kubernetes services,
    whose endpoints come from the native ``services:`` block (DestinationRules add subsets
    and policies to them). A manifest's routes take its place among the native documents'
    (all HTTPRoutes together, at the first one: Gateway API orders them by its own
    precedence rules).
    """
    position = {id(document): index for index, document in enumerate(documents)}
    placed: list[tuple[int, Route]] = []
    remaining = list(native_routes)
    for at in native:  # a document's routes, in order (all parsed unless there are errors)
        section = at.doc.value.get("routes")
        count = len(section) if isinstance(section, list) else 0
        for index, route in enumerate(remaining[:count]):
            placed.append((position[id(at.doc)], route))
            if origins is not None:
                path = item_path("routes", index)
                origins[route.name] = RouteOrigin(at.doc.source, at.doc.line(path), "", path)
        remaining = remaining[count:]
    placed += [(len(documents), route) for route in remaining]
    if not manifests:
        return tuple(route for _, route in placed), ctx.services

    def report(severity: Severity, document: Document, path: str, message: str) -> None:
        ctx.issues.append(document.issue(path, message, severity))

    imported = compat.import_manifests(
        [at.doc for at in manifests], services=ctx.services,
        declared_services=ctx.declared_services,
        taken_route_names=set(ctx.routes) | ctx.declared_routes, report=report,
        route_cache=route_cache)
    for item in imported.routes:
        placed.append((position[id(item.position)], item.route))
        ctx.routes[item.route.name] = item.route
        ctx.declared_routes.add(item.route.name)
        if origins is not None:
            origins[item.route.name] = RouteOrigin(item.origin.source, item.origin.line(""),
                                                   item.label, item.path)
    placed.sort(key=lambda pair: pair[0])  # stable: each document's own order is kept
    ctx.services = dict(imported.services)
    return tuple(route for _, route in placed), ctx.services
