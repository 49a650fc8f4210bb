"""What the mesh importers share: manifests, reading fields with located issues, names.

Every field of a manifest is either read, or reported: ``Node.fields`` takes the keys an
importer handles and the reasons for those it cannot honour, and warns about every other
key (an upstream field pyproxy does not know), so nothing in a manifest is silently
dropped. A value that cannot be used at all is an error; ``Invalid`` then unwinds to the
enclosing object (a rule, a route, a manifest), which is skipped while reading goes on, so
one run reports every problem.

Messages start with the manifest (``VirtualService reviews: ...``); the issue's key path
(``spec.http[0].fault``) and line place them in the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pyproxy.config.document import Document, Severity, describe
from pyproxy.config.model import Route, Service, kubernetes_short_name

Report = Callable[[Severity, Document, str, str], None]  # severity, document, key path, message


class Invalid(Exception):
    """An error was reported: skip the enclosing object and carry on with the next."""


# ---------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object: where it is, what it is, and its identity."""

    doc: Document
    api_version: str
    group: str  # "" for the core API ("v1")
    version: str
    kind: str
    name: str
    namespace: str  # "default" when the manifest names none, as kubectl would apply it
    created: str | None  # metadata.creationTimestamp (Gateway API precedence), if given

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    def root(self, ctx: ImportContext) -> Node:
        return Node(self, self.doc.value, "", ctx)

    def spec(self, ctx: ImportContext) -> Node:
        """``spec`` as a node (an empty mapping when absent)."""
        value = self.doc.value.get("spec")
        return Node(self, {} if value is None else value, "spec", ctx)


@dataclass(frozen=True)
class ImportedRoute:
    route: Route
    position: Document  # where the route goes among the documents (first match wins)
    origin: Document  # the manifest it came from
    label: str  # "VirtualService reviews"
    path: str = ""  # the key path of the rule it came from ("spec.http[0]")


@dataclass
class ImportContext:
    """The native services the manifests refer to, the routes made so far, and the issues."""

    services: dict[str, Service]
    declared_services: set[str]  # also native services whose definition failed to parse
    taken_route_names: set[str]
    report: Report
    routes: list[ImportedRoute] = field(default_factory=list)
    # DestinationRule subsets that select no endpoint: service → {subset: labels}. Kept out
    # of the service (where a subset must select something); backends naming one answer 503.
    empty_subsets: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    imported_names: set[str] = field(default_factory=set)  # route names the importers chose
    # Imports kept from one build to the next (in-cluster mode): what gateway_api's route
    # cache holds, by its own keys. None: import everything.
    route_cache: dict[object, object] | None = None

    def error(self, m: Manifest, path: str, message: str) -> None:
        self.report("error", m.doc, path, f"{m.label}: {message}")

    def warn(self, m: Manifest, path: str, message: str) -> None:
        self.report("warning", m.doc, path, f"{m.label}: {message}")

    def fail(self, m: Manifest, path: str, message: str) -> Invalid:
        """Report an error; ``raise ctx.fail(...)`` then skips the enclosing object."""
        self.error(m, path, message)
        return Invalid()

    # ------------------------------------------------------------------ services

    def resolve(self, name: str, namespace: str | None = None) -> str | None:
        """The native service a Kubernetes name means: ``NAME``, ``NAME.NS``, ``NAME.NS.svc``
        or ``NAME.NS.svc.cluster.local`` is the native service ``NAME.NS`` when there is
        one (services of the same name in several namespaces), else ``NAME``."""
        for candidate in _candidates(name.lower(), namespace):
            if candidate in self.services:
                return candidate
        return None

    def declared(self, name: str, namespace: str | None = None) -> bool:
        """Whether a native service of that name was declared (even if it failed to parse)."""
        return any(candidate in self.declared_services
                   for candidate in _candidates(name.lower(), namespace))

    def missing_service(self, name: str) -> str:
        """Why a name has no endpoints, and how to give it some."""
        name = name.lower()
        short = kubernetes_short_name(name) if ".svc" in name else None
        short = short or name
        return (f"no native service {short!r}: manifests name Kubernetes services, whose "
                f"endpoints come from a native services: block next to them, e.g. "
                f"services: {{{short}: {{endpoints: [{{address: 'HOST:PORT', labels: "
                f"{{version: v1}}}}]}}}} (subsets select on the labels)")

    # ------------------------------------------------------------------ routes

    def route_name(self, m: Manifest, path: str, name: str) -> str:
        """``name`` made a valid, unused route name. A native route's name is the user's to
        change (an error); another manifest's gets this one a ``-2``, ``-3``... (a warning)."""
        name = re.sub(r"[\s/]+", "-", name) or "route"
        if name in self.taken_route_names and name not in self.imported_names:
            raise self.fail(m, path, f"makes a route named {name!r}, but a native route of that "
                                     "name exists; rename one of them")
        if name in self.taken_route_names:
            wanted, number = name, 2
            while f"{wanted}-{number}" in self.taken_route_names:
                number += 1
            name = f"{wanted}-{number}"
            self.warn(m, path, f"makes a route named {name!r}: {wanted!r} is another "
                               "manifest's route")
        self.taken_route_names.add(name)
        self.imported_names.add(name)
        return name

    def add_route(self, route: Route, m: Manifest, path: str = "spec",
                  position: Manifest | None = None) -> None:
        self.routes.append(ImportedRoute(route, (position or m).doc, m.doc, m.label, path))


def _candidates(name: str, namespace: str | None) -> list[str]:
    labels = name.split(".")
    found = [name]
    if namespace is not None and len(labels) == 1:
        found.insert(0, f"{name}.{namespace}")
    if kubernetes_short_name(name) is not None:
        found += [".".join(labels[:2]), labels[0]]
    return list(dict.fromkeys(found))


def qualified_names(manifests: Iterable[Manifest]) -> dict[tuple[str, str], str]:
    """A route-name base per manifest: its name, or ``name.namespace`` when another manifest
    of the same kind has the same name in another namespace."""
    manifests = list(manifests)
    seen: dict[str, set[str]] = {}
    for m in manifests:
        seen.setdefault(m.name, set()).add(m.namespace)
    return {m.key: m.name if len(seen[m.name]) == 1 else f"{m.name}.{m.namespace}"
            for m in manifests}


# ---------------------------------------------------------------------------- hosts

_HOST = re.compile(r"(?:\*\.)?[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\]")


def is_host(host: str) -> bool:
    return host == "*" or _HOST.fullmatch(host) is not None


def intersect_hosts(route: str | None, listener: str | None) -> str | Literal[False] | None:
    """The hostname both allow: ``route`` (a route's or VirtualService's hostname) against a
    listener's (a Gateway's). ``None`` means "any host"; ``False``: they do not intersect."""
    if listener is None or listener == "*":
        return route
    if route is None or route == "*":
        return listener
    if route == listener:
        return route
    if listener.startswith("*.") and not route.startswith("*."):
        return route if route.endswith(listener[1:]) else False
    if route.startswith("*.") and not listener.startswith("*."):
        return listener if listener.endswith(route[1:]) else False
    if route.startswith("*.") and listener.startswith("*."):
        if route.endswith(listener[1:]):
            return route
        if listener.endswith(route[1:]):
            return listener
    return False


# ---------------------------------------------------------------------------- values

# Go's time.ParseDuration syntax, which Istio documents ("1h/1m/1s/1ms") and which covers
# protobuf's JSON form ("1.5s") and Gateway API's GEP-2257 durations ("1h30m", "500ms").
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|ms|s|m|h)")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float | None:
    text = text.strip()
    if text == "0":
        return 0.0
    if not re.fullmatch(f"(?:{_DURATION.pattern})+", text):
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text))




_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: header names, methods


class Node:
    """A value inside a manifest, with its key path, for reading and for messages."""

    __slots__ = ("ctx", "m", "path", "value")

    def __init__(self, m: Manifest, value: Any, path: str, ctx: ImportContext):
        self.m, self.value, self.path, self.ctx = m, value, path, ctx

    def key(self, name: str) -> Node:
        value = self.value.get(name) if isinstance(self.value, dict) else None
        return Node(self.m, value, f"{self.path}.{name}" if self.path else name, self.ctx)

    def error(self, message: str) -> Invalid:
        return self.ctx.fail(self.m, self.path, message)

    def warn(self, message: str) -> None:
        self.ctx.warn(self.m, self.path, message)

    # ------------------------------------------------------------------ structure

    def fields(self, handled: Iterable[str], unsupported: Mapping[str, str] | None = None,
               ignored: Iterable[str] = ()) -> dict[str, Node]:
        """The present keys among ``handled``. A key of ``unsupported`` gets a warning with
        its reason; ``ignored`` keys are accepted without effect (documented); any other key
        is warned about as unknown. Null values count as absent."""
        if not isinstance(self.value, dict):
            raise self.error(f"must be a mapping, got {describe(self.value)}")
        handled, unsupported, ignored = set(handled), unsupported or {}, set(ignored)
        present: dict[str, Node] = {}
        for key, value in self.value.items():
            # Protobuf's JSON names are camelCase, but its parsers (Istio's) also accept the
            # proto field names: prefix_rewrite is prefixRewrite.
            name = key
            if isinstance(key, str) and "_" in key:
                camel = re.sub(r"_([a-z0-9])", lambda found: found[1].upper(), key)
                if camel in handled or camel in unsupported or camel in ignored:
                    name = camel
            if value is None or name in ignored:
                continue
            if name in handled:
                present[name] = self.key(key)
            elif name in unsupported:
                self.key(key).warn(f"{name} is not honoured: {unsupported[name]}")
            else:
                self.key(key).warn(f"unknown field {key!r} is ignored (not part of the API "
                                   "pyproxy reads; a newer version?)")
        return present

    def items(self) -> list[Node]:
        if self.value is None:
            return []
        if not isinstance(self.value, list):
            raise self.error(f"must be a list, got {describe(self.value)}")
        return [Node(self.m, item, f"{self.path}[{index}]", self.ctx)
                for index, item in enumerate(self.value)]

    def entries(self) -> list[tuple[str, Node]]:
        """A mapping whose keys the user chooses (headers, labels...)."""
        if self.value is None:
            return []
        if not isinstance(self.value, dict):
            raise self.error(f"must be a mapping, got {describe(self.value)}")
        return [(str(key), self.key(key)) for key in self.value]

    # ------------------------------------------------------------------ scalars

    def text(self, *, empty: bool = False) -> str:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(f"must be a string, got {describe(value)}")
        text = value if isinstance(value, str) else str(value)
        if not text and not empty:
            raise self.error("must not be empty")
        return text

    def labels(self) -> dict[str, str]:
        return {key: node.text(empty=True) for key, node in self.entries()}

    def integer(self, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.value
        if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"must be a whole number, got {describe(self.value)}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = (f"from {minimum} to {maximum}" if maximum is not None
                      else f"{minimum} or more")
            raise self.error(f"must be a whole number {bounds}, got {value}")
        return value

    def number(self, minimum: float | None = None, maximum: float | None = None) -> float:
        value = self.value
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            number = float(value)
        except ValueError:
            raise self.error(f"must be a number, got {describe(value)}") from None
        if number != number or (minimum is not None and number < minimum) or (
                maximum is not None and number > maximum):
            raise self.error(f"must be a number from {minimum} to {maximum}, got {describe(value)}")
        return number

    def boolean(self) -> bool:
        if isinstance(self.value, bool):
            return self.value
        if isinstance(self.value, str) and self.value.lower() in ("true", "false"):
            return self.value.lower() == "true"
        raise self.error(f"must be true or false, got {describe(self.value)}")

    def duration(self, *, zero: bool = False) -> float:
        """Seconds from a duration such as ``2.5s``, ``100ms`` or ``1h30m``."""
        seconds = parse_go_duration(self.value) if isinstance(self.value, str) else None
        if seconds is None:
            raise self.error(f"must be a duration such as '2.5s' or '100ms', got "
                             f"{describe(self.value)}")
        if seconds <= 0 and not zero:
            raise self.error(f"must be more than 0s, got {describe(self.value)}")
        return seconds

    def choice(self, *choices: str) -> str:
        for choice in choices:
            if self.value == choice:
                return choice
        raise self.error(f"must be one of {', '.join(choices)}, got {describe(self.value)}")

    def header_name(self) -> str:
        name = self.text()
        if not _TOKEN.fullmatch(name):
            raise self.error(f"must be a header name, got {describe(name)}")
        return name.lower()

    def header_value(self) -> str:
        value = self.text(empty=True)
        if any(c in value for c in "\r\n\0"):
            raise self.error("header values must not contain line breaks or NUL")
        return value

    def method(self) -> str:
        method = self.text().upper()
        if not _TOKEN.fullmatch(method):
            raise self.error(f"must be an HTTP method such as GET, got {describe(self.value)}")
        return method

    def regex(self) -> str:
        pattern = self.text(empty=True)
        try:
            re.compile(pattern)
        except (re.error, OverflowError, RecursionError) as problem:
            raise self.error(f"is not a regular expression pyproxy can use: {problem}") from None
        return pattern

    def url_path(self) -> str:
        path = self.text()
        if not path.startswith("/"):
            raise self.error(f"must start with '/', got {describe(path)}")
        return path

    def host(self) -> str:
        host = self.text().strip().lower().rstrip(".")
        if not is_host(host):
            raise self.error(f"must be a host name (without port), optionally '*.' for any "
                             f"subdomain, got {describe(self.value)}")
        return host
