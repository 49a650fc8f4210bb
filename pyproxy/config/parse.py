"""Native config blocks → the config model, with every problem reported by key path.

The schemas of ``listen``, ``services``, ``routes``, ``canaries`` and the other native
keys (docs/configuration.md), read from plain values: :class:`~pyproxy.config.document.Document`
values that ``config.load`` made from YAML. It does no I/O and knows nothing of YAML or of
mesh manifests; ``config.assemble`` calls the section readers here in dependency order and
hands manifests to ``config.compat``.

Each mapping's keys are declared once, in a :class:`Schema`: the parser rejects every key
not in it, and :func:`key_paths` lists them all (the docs test checks that
docs/configuration.md names each one, and no other).

Parsing never stops at the first problem: every key of every document is checked, and
:class:`~pyproxy.config.document.ConfigInvalid` carries all the errors at once. The rules
of the format:

- ``${VAR}`` and ``${VAR:-default}`` (default also when VAR is empty) are substituted in
  every string value before it is read, so numbers, durations and booleans may come from
  the environment too (``weight: "${CANARY_WEIGHT:-10}"``); ``$$`` is a literal ``$``.
- A key whose value is null counts as absent (``timeout:`` means "not set").
- Durations need a unit: ``250ms``, ``2.5s``, ``1m``, ``1h30m``. Percentages are numbers in
  [0, 100] (``0.1`` is one in a thousand). Weights are relative non-negative numbers or
  SMI milli-quantities (``500m`` = 0.5).
- Status codes of responses pyproxy makes up (abort, direct_response) and retried status
  codes are 200–599: a 1xx is not a final response. Redirects are 301/302/303/307/308.
- Services are merged by name over all documents, routes and canaries concatenated in
  file then document order; a top-level setting (``listen``, ``timeouts``...) may be given
  by one document only.
"""

from __future__ import annotations

import difflib
import ipaddress
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pyproxy.config.document import (
    ConfigIssue,
    Document,
    describe,
    item_path,
    key_path,
)
from pyproxy.config.model import (
    DURATION,
    AbortFault,
    AccessLog,
    Address,
    AdminConfig,
    Backend,
    Backoff,
    Canary,
    CanaryChecks,
    ConnectionPool,
    ConsistentHash,
    DelayFault,
    DirectResponse,
    DnsDiscovery,
    Endpoint,
    Fault,
    HeaderChanges,
    HeaderRules,
    HealthCheck,
    KubernetesConfig,
    Limits,
    ListenerTLS,
    LoadBalancer,
    LoadBalancerKind,
    Match,
    MetricsConfig,
    Mirror,
    OutlierDetection,
    PathMatch,
    PathMatchKind,
    Redirect,
    Retries,
    Rewrite,
    Route,
    Service,
    Sticky,
    StickyCookie,
    StringMatch,
    StringMatchKind,
    Timeouts,
    UpstreamTLS,
    Webhook,
    parse_duration,
)

__all__ = [
    "TOP_LEVEL",
    "At",
    "Context",
    "Schema",
    "key_paths",
    "parse_duration",
    "read_canaries",
    "read_routes",
    "read_services",
    "read_settings",
    "unknown_key",
]


@dataclass(frozen=True)
class At:
    """Where a value sits: its document and key path."""

    doc: Document
    path: str = ""

    def key(self, name: object) -> At:
        return At(self.doc, key_path(self.path, name))

    def item(self, index: int) -> At:
        return At(self.doc, item_path(self.path, index))

    @property
    def where(self) -> str:
        """``file:line``, for messages that point at a second place."""
        line = self.doc.line(self.path)
        return self.doc.source if line is None else f"{self.doc.source}:{line}"


# ---------------------------------------------------------------------------- reading


class _Reject(Exception):
    """A value is unusable; the message says why (``Context.read`` adds where)."""


class _Reported(Exception):
    """Issues were already recorded: unwind to the enclosing collection and carry on there."""


# Config values are untrusted plain YAML values (dicts, lists, str, int, float, bool, None,
# dates): a reader checks the shape itself, so its input is typed Any on purpose.
Reader = Callable[["Context", Any, At], Any]


@dataclass(frozen=True)
class Schema:
    """The keys one kind of mapping may have, each with the reader of its value.

    The one table per mapping: ``Context.fields`` rejects every other key, and
    :func:`key_paths` walks these tables to list every key the parser accepts.
    """

    keys: Mapping[str, Reader]
    required: tuple[str, ...] = ()
    one_of: tuple[tuple[str, ...], ...] = ()  # exactly one key of each group
    exclusive: tuple[tuple[str, ...], ...] = ()  # at most one key of each group


@dataclass(frozen=True)
class _ListShape:
    item: Reader


@dataclass(frozen=True)
class _MapShape:
    """A mapping from names the user chooses (services, headers...) to values."""

    value: Reader


# What each composite reader reads, for key_paths: a reader that takes a mapping has its
# Schema here (also readers that take a scalar or a mapping, such as endpoints).
_SHAPES: dict[Reader, Schema | _ListShape | _MapShape] = {}
_R = TypeVar("_R", bound=Reader)


def _reads(shape: Schema | _ListShape | _MapShape) -> Callable[[_R], _R]:
    """Register what ``reader`` reads (a decorator)."""

    def register(reader: _R) -> _R:
        _SHAPES[reader] = shape
        return reader

    return register


class Context:
    """The issues found so far, the environment, and what later sections look up."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.issues: list[ConfigIssue] = []
        self.services: dict[str, Service] = {}
        # Every name a document declares, also those whose definition failed to parse, so a
        # broken service or route is reported once and not again by each reference to it.
        self.declared_services: set[str] = set()
        self.routes: dict[str, Route] = {}
        self.declared_routes: set[str] = set()

    def error(self, at: At, message: str) -> None:
        self.issues.append(at.doc.issue(at.path, message))

    def warn(self, at: At, message: str) -> None:
        self.issues.append(at.doc.issue(at.path, message, "warning"))

    def read(self, reader: Reader, value: Any, at: At) -> Any:
        """``reader(value)``, recording a rejection at ``at``."""
        try:
            return reader(self, value, at)
        except _Reject as rejection:
            self.error(at, str(rejection))
            raise _Reported from None

    def fields(self, value: Any, at: At, schema: Schema) -> dict[str, Any]:
        """Read a mapping whose keys are those of ``schema``.

        Reports unknown and missing keys, reads every present key, and enforces the
        ``one_of`` groups (exactly one key of each) and ``exclusive`` groups (at most one).
        Returns the read values of the present keys; raises _Reported after recording
        everything that is wrong.
        """
        if not isinstance(value, dict):
            self.error(at, f"must be a mapping, got {describe(value)}")
            raise _Reported
        readers = schema.keys
        failed = False
        present = {}
        for key, item in value.items():
            if key not in readers:
                self.error(at.key(key), unknown_key(key, readers))
                failed = True
            elif item is not None:
                present[key] = item
        for key in schema.required:
            if key not in present:
                self.error(at.key(key), "is required")
                failed = True
        for group in (*schema.one_of, *schema.exclusive):
            given = [key for key in group if key in present]
            if len(given) > 1:
                how_many = "exactly" if group in schema.one_of else "at most"
                self.error(at.key(given[1]), f"cannot be combined with {given[0]!r}: give "
                                             f"{how_many} one of {_alternatives(group)}")
                failed = True
            elif not given and group in schema.one_of:
                self.error(at, f"needs one of {_alternatives(group)}")
                failed = True
        result = {}
        for key, item in present.items():
            try:
                result[key] = self.read(readers[key], item, at.key(key))
            except _Reported:
                failed = True
        if failed:
            raise _Reported
        return result


def unknown_key(key: object, known: Iterable[str]) -> str:
    """The message for a key that is not one of ``known``, with the closest as a hint."""
    known = list(known)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(known)}"
    return f"unknown key {key!r}; {hint}"


def _alternatives(names: Sequence[str]) -> str:
    quoted = [repr(name) for name in names]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


# ---------------------------------------------------------------------------- scalars

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


def _substitute(text: str, env: Mapping[str, str]) -> str:
    """``${VAR}``, ``${VAR:-default}`` and ``$$`` in ``text``."""

    def replace(found: re.Match[str]) -> str:
        if found[0] == "$$":
            return "$"
        name, default = found[1], found[2]
        if name is None:
            raise _Reject("'${' must start ${NAME} or ${NAME:-default} (write $$ for a literal $)")
        value = env.get(name)
        if default is not None and not value:
            return default
        if value is None:
            raise _Reject(f"environment variable {name} is not set "
                          f"(write ${{{name}:-default}} to give a default)")
        return value

    return _VARIABLE.sub(replace, text)


def _resolved(ctx: Context, value: Any) -> Any:
    """``value`` with variables substituted when it is a string."""
    return _substitute(value, ctx.env) if isinstance(value, str) else value


def _text(ctx: Context, value: Any, at: At) -> str:
    """A string (an integer is taken as its digits)."""
    if isinstance(value, str):
        return _substitute(value, ctx.env)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    hint = " (put it in quotes)" if isinstance(value, (bool, float)) else ""
    raise _Reject(f"must be a string, got {describe(value)}{hint}")


def _name(ctx: Context, value: Any, at: At) -> str:
    return _checked_name(_text(ctx, value, at))


def _checked_name(name: str) -> str:
    # '/' separates service and subset in backend names, so no name may contain one.
    if not name or "/" in name or any(c.isspace() for c in name):
        raise _Reject(f"must be a non-empty name without '/' or spaces, got {name!r}")
    return name


def _name_key(ctx: Context, key: Any, at: At) -> str:
    if not isinstance(key, str):
        raise _Reject(f"names must be strings, got {describe(key)}")
    return _checked_name(key)


def _bool(ctx: Context, value: Any, at: At) -> bool:
    value = _resolved(ctx, value)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _Reject(f"must be true or false, got {describe(value)}")


def _true(ctx: Context, value: Any, at: At) -> bool:
    if _bool(ctx, value, at) is not True:
        raise _Reject("must be true (leave the key out otherwise)")
    return True


def _choice(*choices: str) -> Callable[[Context, Any, At], str]:
    def read(ctx: Context, value: Any, at: At) -> str:
        value = _resolved(ctx, value)
        if isinstance(value, str) and value in choices:
            return value
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise _Reject(f"must be one of {', '.join(choices)}, got {describe(value)}{hint}")

    return read


def _number(value: Any, expected: str) -> float:
    """A finite number, from a number or a numeric string (already substituted)."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value)
    except (ValueError, OverflowError):
        raise _Reject(f"must be {expected}, got {describe(value)}") from None
    if not math.isfinite(number):
        raise _Reject(f"must be {expected}, got {describe(value)}")
    return number


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Context, Any, At], int]:
    expected = (f"a whole number from {minimum} to {maximum}" if maximum is not None
                else f"a whole number, {minimum} or more")

    def read(ctx: Context, value: Any, at: At) -> int:
        value = _resolved(ctx, value)
        if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
            number = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raise _Reject(f"must be {expected}, got {describe(value)}")
        if number < minimum or (maximum is not None and number > maximum):
            raise _Reject(f"must be {expected}, got {number}")
        return number

    return read


def _percent(ctx: Context, value: Any, at: At) -> float:
    expected = "a percentage from 0 to 100"
    percent = _number(_resolved(ctx, value), expected)
    if not 0 <= percent <= 100:
        raise _Reject(f"must be {expected}, got {describe(value)}")
    return percent


def _step_percent(ctx: Context, value: Any, at: At) -> float:
    percent = _percent(ctx, value, at)
    if percent == 0:
        raise _Reject("must be more than 0")
    return percent


_MILLI = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)m\s*")


def _weight(ctx: Context, value: Any, at: At) -> float:
    expected = "a non-negative number (or a milli-quantity such as '500m')"
    value = _resolved(ctx, value)
    milli = _MILLI.fullmatch(value) if isinstance(value, str) else None
    weight = float(milli[1]) / 1000 if milli else _number(value, expected)
    if weight < 0:
        raise _Reject(f"must be {expected}, got {describe(value)}")
    return weight




def _duration(ctx: Context, value: Any, at: At) -> float:
    """Seconds, from a string with units: ``250ms``, ``2.5s``, ``1m``, ``1h30m``."""
    value = _resolved(ctx, value)
    if isinstance(value, str):
        text = value.strip()
        if DURATION.fullmatch(text):
            try:
                return parse_duration(text)
            except ValueError:
                raise _Reject(f"is too long, got {describe(value)}") from None
        try:
            float(text)
        except ValueError:
            raise _Reject(f"must be a duration such as '250ms', '2.5s', '1m' or '1h30m', "
                          f"got {describe(value)}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Reject(f"must be a duration such as '2s', got {describe(value)}")
    raise _Reject(f"durations need a unit, e.g. '2s' or '250ms', got {describe(value)}")


def _timeout(ctx: Context, value: Any, at: At) -> float:
    """A duration that must be more than zero (timeouts, intervals)."""
    seconds = _duration(ctx, value, at)
    if seconds <= 0:
        raise _Reject(f"must be more than 0s, got {describe(value)}")
    return seconds


_status = _integer(200, 599)
_port = _integer(1, 65535)


def _redirect_status(ctx: Context, value: Any, at: At) -> int:
    status = _integer(300, 399)(ctx, value, at)
    if status not in (301, 302, 303, 307, 308):
        raise _Reject(f"must be one of 301, 302, 303, 307, 308, got {status}")
    return status


def _path(ctx: Context, value: Any, at: At) -> str:
    path = _text(ctx, value, at)
    if not path.startswith("/"):
        raise _Reject(f"must start with '/', got {path!r}")
    return path


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as problem:
        raise _Reject(f"is not a valid regular expression: {problem}") from None


def _regex(ctx: Context, value: Any, at: At) -> str:
    pattern = _text(ctx, value, at)
    _compile(pattern)
    return pattern


_HOST_PORT = re.compile(r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:/\[\]@]+)):(?P<port>[0-9]+)")


def _host_port(text: str) -> tuple[str, int]:
    found = _HOST_PORT.fullmatch(text)
    if not found:
        if text.isdigit():
            raise _Reject(f"must be host:port, e.g. '0.0.0.0:{text}', got {text!r}")
        if ":" not in text:
            raise _Reject(f"needs a port: host:port, e.g. '{text or 'localhost'}:8080'")
        raise _Reject(f"must be host:port, got {text!r}")
    port = int(found["port"])
    if not 1 <= port <= 65535:
        raise _Reject(f"has port {port}; ports are 1 to 65535")
    return found["ip6"] or found["host"], port


def _listen(ctx: Context, value: Any, at: At) -> Address:
    """``host:port``; ``:port`` listens on every interface."""
    text = _text(ctx, value, at).strip()
    return Address(*_host_port("0.0.0.0" + text if text.startswith(":") else text))


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: header names, methods


def _header_key(ctx: Context, key: Any, at: At) -> str:
    if not isinstance(key, str) or not _TOKEN.fullmatch(key):
        raise _Reject(f"must be a header name, got {describe(key)}")
    return key.lower()


def _header_name(ctx: Context, value: Any, at: At) -> str:
    return _header_key(ctx, _text(ctx, value, at), at)


def _header_value(ctx: Context, value: Any, at: At) -> str:
    text = _text(ctx, value, at)
    if "\r" in text or "\n" in text or "\0" in text:
        raise _Reject("header values must not contain line breaks or NUL")
    return text


def _plain_key(ctx: Context, key: Any, at: At) -> str:
    if not isinstance(key, str) or not key:
        raise _Reject(f"names must be non-empty strings, got {describe(key)}")
    return key


# ---------------------------------------------------------------------------- collections


def _list_of(reader: Reader, *, non_empty: bool = False) -> Reader:
    def read(ctx: Context, value: Any, at: At) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Reject(f"must be a list, got {describe(value)}")
        if non_empty and not value:
            raise _Reject("must not be empty")
        items, failed = [], False
        for index, item in enumerate(value):
            try:
                items.append(ctx.read(reader, item, at.item(index)))
            except _Reported:
                failed = True
        if failed:
            raise _Reported
        return tuple(items)

    _SHAPES[read] = _ListShape(reader)
    return read


def _map_of(key_reader: Reader, reader: Reader) -> Reader:
    """A mapping from names the user chooses (headers, labels...) to values: (name, value) pairs."""

    def read(ctx: Context, value: Any, at: At) -> tuple[tuple[str, Any], ...]:
        if not isinstance(value, dict):
            raise _Reject(f"must be a mapping, got {describe(value)}")
        pairs, failed = [], False
        for key, item in value.items():
            try:
                pairs.append((ctx.read(key_reader, key, at.key(key)),
                              ctx.read(reader, item, at.key(key))))
            except _Reported:
                failed = True
        if failed:
            raise _Reported
        return tuple(pairs)

    _SHAPES[read] = _MapShape(reader)
    return read


_label_pairs = _map_of(_plain_key, _text)


def _labels(ctx: Context, value: Any, at: At) -> dict[str, str]:
    return dict(_label_pairs(ctx, value, at))


_T = TypeVar("_T")


def _record(cls: Callable[..., _T], readers: Mapping[str, Reader],
            required: tuple[str, ...] = ()) -> Callable[[Context, Any, At], _T]:
    """A reader for a mapping of ``cls``'s fields; those left out keep the model's default."""
    schema = Schema(readers, required)

    def read(ctx: Context, value: Any, at: At) -> _T:
        return cls(**ctx.fields(value, at, schema))

    _SHAPES[read] = schema
    return read


def _any_of(fields: Mapping[str, Any], names: Sequence[str]) -> None:
    if not any(name in fields for name in names):
        raise _Reject(f"needs at least one of {_alternatives(names)}")


# ---------------------------------------------------------------------------- services


def _address(ctx: Context, value: Any, at: At) -> Endpoint:
    text = _text(ctx, value, at).strip()
    scheme, separator, rest = text.partition("://")
    if separator and scheme not in ("http", "https"):
        raise _Reject(f"only http:// and https:// endpoints are supported, got {text!r}")
    host, port = _host_port(rest.removesuffix("/") if separator else text)
    return Endpoint(host, port, tls=scheme == "https")


_ENDPOINT = Schema({"address": _address, "labels": _labels}, required=("address",))


@_reads(_ENDPOINT)
def _endpoint(ctx: Context, value: Any, at: At) -> Endpoint:
    """``host:port``, ``http(s)://host:port`` or ``{address: ..., labels: {...}}``."""
    if isinstance(value, dict):
        fields = ctx.fields(value, at, _ENDPOINT)
        endpoint: Endpoint = replace(fields["address"], labels=fields.get("labels", {}))
        return endpoint
    return _address(ctx, value, at)


_CONSISTENT_HASH = Schema({"header": _header_name, "cookie": _text, "source_ip": _true},
                          one_of=(("header", "cookie", "source_ip"),))


@_reads(_CONSISTENT_HASH)
def _consistent_hash(ctx: Context, value: Any, at: At) -> ConsistentHash:
    return ConsistentHash(**ctx.fields(value, at, _CONSISTENT_HASH))


_LOAD_BALANCER = Schema({"consistent_hash": _consistent_hash}, required=("consistent_hash",))


@_reads(_LOAD_BALANCER)
def _load_balancer(ctx: Context, value: Any, at: At) -> LoadBalancer:
    """``round_robin`` | ``least_request`` | ``random`` | ``{consistent_hash: {...}}``."""
    if isinstance(value, dict):
        fields = ctx.fields(value, at, _LOAD_BALANCER)
        return LoadBalancer("consistent_hash", fields["consistent_hash"])
    if _resolved(ctx, value) == "consistent_hash":
        raise _Reject("consistent_hash needs a key: {consistent_hash: {header: NAME}} "
                      "(or cookie: NAME, or source_ip: true)")
    name = _choice(*_SIMPLE_BALANCERS)(ctx, value, at)
    return LoadBalancer(next(kind for kind in _SIMPLE_BALANCERS if kind == name))


_SIMPLE_BALANCERS: tuple[LoadBalancerKind, ...] = ("round_robin", "least_request", "random")


def _subsets(ctx: Context, value: Any, at: At) -> dict[str, dict[str, str]]:
    """Subset name → the labels its endpoints must have (as Istio)."""
    return dict(_map_of(_name_key, _labels)(ctx, value, at))


_DISCOVERY = Schema({"type": _choice("dns"), "interval": _timeout}, required=("type",))


@_reads(_DISCOVERY)
def _discovery(ctx: Context, value: Any, at: At) -> DnsDiscovery:
    """``dns`` or ``{type: dns, interval: 5s}``: each endpoint name of the service stands
    for every address it resolves to (docs/operations.md, DNS discovery)."""
    if isinstance(value, dict):
        fields = ctx.fields(value, at, _DISCOVERY)
        return DnsDiscovery(**{k: v for k, v in fields.items() if k != "type"})
    _choice("dns")(ctx, value, at)
    return DnsDiscovery()


_SERVICE = Schema({
    "endpoints": _list_of(_endpoint, non_empty=True),
    "subsets": _subsets,
    "load_balancer": _load_balancer,
    "connection_pool": _record(ConnectionPool, {
        "max_connections": _integer(1),
        "max_pending_requests": _integer(0),
        "max_requests": _integer(1),
        "max_retries": _integer(0),
        "connect_timeout": _timeout,
        "idle_timeout": _timeout,
        "pending_timeout": _duration,
    }),
    "outlier_detection": _record(OutlierDetection, {
        "consecutive_5xx": _integer(0),
        "consecutive_gateway_errors": _integer(0),
        "interval": _timeout,
        "base_ejection_time": _timeout,
        "max_ejection_time": _timeout,
        "max_ejection_percent": _percent,
        "min_healthy_endpoints": _integer(0),
        "panic_threshold": _percent,
    }),
    "health_check": _record(HealthCheck, {
        "path": _path,
        "interval": _timeout,
        "timeout": _timeout,
        "healthy_threshold": _integer(1),
        "unhealthy_threshold": _integer(1),
        "jitter": _duration,
    }),
    "tls": _record(UpstreamTLS, {"ca": _text, "verify": _bool, "server_name": _text}),
    "discovery": _discovery,
}, required=("endpoints",))


@_reads(_SERVICE)
def _service(ctx: Context, value: Any, at: At) -> Service:
    """One service, still unnamed: its name is its key, which the caller checks."""
    fields = ctx.fields(value, at, _SERVICE)
    service = Service(name="", **fields)
    failed = False
    seen: set[str] = set()
    for index, endpoint in enumerate(service.endpoints):
        if endpoint.address in seen:
            ctx.error(at.key("endpoints").item(index),
                      f"endpoint {endpoint.address} is listed twice")
            failed = True
        seen.add(endpoint.address)
    for subset, selector in service.subsets.items():
        if not service.subset_endpoints(subset):
            wanted = ", ".join(f"{k}={v}" for k, v in selector.items())
            ctx.error(at.key("subsets").key(subset),
                      f"selects no endpoint: none has labels {wanted}")
            failed = True
    if failed:
        raise _Reported
    return service


def read_services(ctx: Context, documents: Sequence[At]) -> dict[str, Service]:
    """``services`` of every document, merged by name."""
    defined_at: dict[str, At] = {}
    for doc in documents:
        section = doc.doc.value.get("services")
        at = doc.key("services")
        if section is None:
            continue
        if not isinstance(section, dict):
            ctx.error(at, f"must be a mapping of service name to service, got {describe(section)}")
            continue
        for name, value in section.items():
            try:
                name = ctx.read(_name_key, name, at.key(name))
            except _Reported:
                continue
            if name in defined_at:
                ctx.error(at.key(name),
                          f"service {name!r} is already defined at {defined_at[name].where}")
                continue
            defined_at[name] = at.key(name)
            ctx.declared_services.add(name)
            try:
                ctx.services[name] = replace(_service(ctx, value, at.key(name)), name=name)
            except _Reported:
                pass
    return ctx.services


# ---------------------------------------------------------------------------- routes

_STRING_MATCH_KINDS: tuple[StringMatchKind, ...] = (
    "exact", "prefix", "suffix", "regex", "present", "absent")
# segment_prefix is Gateway API's element-wise PathPrefix (/foo matches /foo/bar, not /foobar).
_PATH_MATCH_KINDS: tuple[PathMatchKind, ...] = ("exact", "prefix", "regex", "segment_prefix")


_STRING_MATCH = Schema({
    "exact": _text, "prefix": _text, "suffix": _text, "regex": _regex,
    "present": _true, "absent": _true, "ignore_case": _bool,
    "invert": _bool,  # negate the test (Istio withoutHeaders); an absent field then matches
}, one_of=(_STRING_MATCH_KINDS,))


@_reads(_STRING_MATCH)
def _string_match(ctx: Context, value: Any, at: At) -> StringMatch:
    """A plain string (an exact match) or ``{exact|prefix|suffix|regex|present|absent: ...}``."""
    if not isinstance(value, dict):
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return StringMatch("exact", _text(ctx, value, at))
        raise _Reject(f"must be a string (an exact match) or a mapping with one of "
                      f"{', '.join(_STRING_MATCH_KINDS)}; got {describe(value)}")
    fields = ctx.fields(value, at, _STRING_MATCH)
    kind = next(kind for kind in _STRING_MATCH_KINDS if kind in fields)
    text = "" if kind in ("present", "absent") else fields[kind]
    return StringMatch(kind, text, fields.get("ignore_case", False), fields.get("invert", False))


_PATH_MATCH = Schema({"exact": _path, "prefix": _path, "regex": _regex,
                      "segment_prefix": _path, "ignore_case": _bool},
                     one_of=(_PATH_MATCH_KINDS,))


@_reads(_PATH_MATCH)
def _path_match(ctx: Context, value: Any, at: At) -> PathMatch:
    if isinstance(value, str):
        raise _Reject(f"must be a mapping such as {{prefix: {value}}} or {{exact: {value}}}")
    fields = ctx.fields(value, at, _PATH_MATCH)
    kind = next(kind for kind in _PATH_MATCH_KINDS if kind in fields)
    return PathMatch(kind, fields[kind], fields.get("ignore_case", False))


def _method(ctx: Context, value: Any, at: At) -> str:
    method = _text(ctx, value, at).upper()
    if not _TOKEN.fullmatch(method):
        raise _Reject(f"must be an HTTP method such as GET, got {describe(value)}")
    return method


def _methods(ctx: Context, value: Any, at: At) -> tuple[str, ...]:
    """One method or a list of them."""
    methods = _list_of(_method)(ctx, value, at) if isinstance(value, list) else (
        _method(ctx, value, at),)
    return tuple(dict.fromkeys(methods))


_MATCH = Schema({
    "path": _path_match,
    "method": _methods,
    "headers": _map_of(_header_key, _string_match),
    "query": _map_of(_plain_key, _string_match),
    "cookies": _map_of(_plain_key, _string_match),
})


@_reads(_MATCH)
def _match(ctx: Context, value: Any, at: At) -> Match:
    fields = ctx.fields(value, at, _MATCH)
    return Match(path=fields.get("path"), methods=fields.get("method", ()),
                 headers=fields.get("headers", ()), query=fields.get("query", ()),
                 cookies=fields.get("cookies", ()))


_HOST = re.compile(r"(?:\*\.)?[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\]")


def _host(ctx: Context, value: Any, at: At) -> str:
    host = _text(ctx, value, at).strip().lower()
    if host != "*" and not _HOST.fullmatch(host):
        raise _Reject(f"must be a host name (without port), optionally '*.' for any "
                      f"subdomain, got {describe(value)}")
    return host


def _hosts(ctx: Context, value: Any, at: At) -> tuple[str, ...]:
    hosts = _list_of(_host)(ctx, value, at)
    for index, host in enumerate(hosts):
        if host in hosts[:index]:
            ctx.warn(at.item(index), f"host {host!r} is listed twice")
    # "*" is how Istio says "any host"; the model says it with no hosts at all.
    return () if "*" in hosts else tuple(dict.fromkeys(hosts))


def _service_name(ctx: Context, name: str) -> str | None:
    """The native service ``name`` refers to: ``NAME``, ``NAME.NS``, ``NAME.NS.svc`` or
    ``NAME.NS.svc.cluster.local``."""
    if name in ctx.declared_services:
        return name
    short, _, namespace = name.partition(".")
    if short in ctx.declared_services and re.fullmatch(
            r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.svc(\.cluster\.local)?)?", namespace):
        return short
    return None


def _destination(ctx: Context, fields: dict[str, Any], at: At) -> tuple[str, str | None]:
    """The (service, subset) a backend or mirror sends to, checked against ``services``."""
    service, subset = _service_name(ctx, fields["service"]), fields.get("subset")
    if service is None:
        name = fields["service"]
        close = difflib.get_close_matches(name, sorted(ctx.declared_services), n=1)
        if name.partition(".")[0] in ctx.declared_services:
            hint = "; a Kubernetes name is NAME.NS, NAME.NS.svc or NAME.NS.svc.cluster.local"
        elif close:
            hint = f"; did you mean {close[0]!r}?"
        else:
            hint = f"; services are: {', '.join(sorted(ctx.declared_services)) or 'none'}"
        ctx.error(at.key("service"), f"unknown service {name!r}{hint}")
        raise _Reported
    known = ctx.services.get(service)
    if subset is not None and known is not None and subset not in known.subsets:
        subsets = ", ".join(known.subsets) or "none"
        ctx.error(at.key("subset"),
                  f"service {service!r} has no subset {subset!r} (subsets: {subsets})")
        raise _Reported
    return service, subset


_header_changes = _record(HeaderChanges, {
    "set": _map_of(_header_key, _header_value),
    "add": _map_of(_header_key, _header_value),
    "remove": _list_of(_header_name),
})


_MIRROR = Schema({"service": _text, "subset": _name, "percent": _percent},
                  required=("service",))


@_reads(_MIRROR)
def _mirror(ctx: Context, value: Any, at: At) -> Mirror:
    fields = ctx.fields(value, at, _MIRROR)
    service, subset = _destination(ctx, fields, at)
    return Mirror(service, subset, fields.get("percent", 100.0))


_STICKY = Schema({
    "cookie": _record(StickyCookie, {"name": _name, "ttl": _duration}, required=("name",)),
    "header": _header_name,
}, one_of=(("cookie", "header"),))


@_reads(_STICKY)
def _sticky(ctx: Context, value: Any, at: At) -> Sticky:
    return Sticky(**ctx.fields(value, at, _STICKY))


_FAULT = Schema({
    "delay": _record(DelayFault, {"fixed": _duration, "percent": _percent},
                     required=("fixed",)),
    "abort": _record(AbortFault, {"status": _status, "percent": _percent},
                     required=("status",)),
    "scope": _choice("request", "attempt"),
    "header_secret": _text,
})


@_reads(_FAULT)
def _fault(ctx: Context, value: Any, at: At) -> Fault:
    fields = ctx.fields(value, at, _FAULT)
    _any_of(fields, ("delay", "abort", "header_secret"))
    return Fault(**fields)


_RETRY_ON = ("5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes")


_RETRIES = Schema({
    "attempts": _integer(0),
    "per_try_timeout": _timeout,
    "retry_on": _list_of(_choice(*_RETRY_ON)),
    "status_codes": _list_of(_status),
    "backoff": _record(Backoff, {"base": _duration, "max": _duration}),
    "buffer_bytes": _integer(0),
})


@_reads(_RETRIES)
def _retries(ctx: Context, value: Any, at: At) -> Retries:
    fields = ctx.fields(value, at, _RETRIES)
    retries = Retries(**fields)
    if retries.status_codes and "retriable-status-codes" not in retries.retry_on:
        # Listing status codes is asking to retry on them; don't make users say it twice.
        retries = replace(retries, retry_on=(*retries.retry_on, "retriable-status-codes"))
    if "retriable-status-codes" in retries.retry_on and not retries.status_codes:
        ctx.error(at.key("retry_on"), "retriable-status-codes needs status_codes, e.g. [503]")
        raise _Reported
    if retries.backoff.base > retries.backoff.max:
        ctx.error(at.key("backoff"), "base must not be longer than max")
        raise _Reported
    return retries


_PATH_REGEX = Schema({"pattern": _regex, "substitution": _text},
                     required=("pattern", "substitution"))


@_reads(_PATH_REGEX)
def _path_regex(ctx: Context, value: Any, at: At) -> tuple[str, str]:
    fields = ctx.fields(value, at, _PATH_REGEX)
    pattern, substitution = _compile(fields["pattern"]), fields["substitution"]
    # A bad group reference would only fail on the first matching request; catch it here.
    for number, name in re.findall(r"\\(\d+)|\\g<([^>]*)>", substitution):
        group = number or name
        valid = (int(group) <= pattern.groups) if group.isdigit() else group in pattern.groupindex
        if not valid:
            ctx.error(at.key("substitution"),
                      f"refers to group {group!r}, which the pattern does not have")
            raise _Reported
    return fields["pattern"], substitution


_REWRITE = Schema({"path_prefix": _path, "path_full": _path, "path_regex": _path_regex,
                   "host": _host}, exclusive=(("path_prefix", "path_full", "path_regex"),))


@_reads(_REWRITE)
def _rewrite(ctx: Context, value: Any, at: At) -> Rewrite:
    fields = ctx.fields(value, at, _REWRITE)
    _any_of(fields, ("path_prefix", "path_full", "path_regex", "host"))
    return Rewrite(**fields)


_REDIRECT = Schema({
    "scheme": _choice("http", "https"), "host": _host, "port": _port,
    "path": _path, "path_prefix": _path, "status": _redirect_status,
}, exclusive=(("path", "path_prefix"),))


@_reads(_REDIRECT)
def _redirect(ctx: Context, value: Any, at: At) -> Redirect:
    fields = ctx.fields(value, at, _REDIRECT)
    if "status" not in fields:  # a status alone redirects to the same URL (303: POST → GET)
        _any_of(fields, ("scheme", "host", "port", "path", "path_prefix"))
    return Redirect(**fields)


_BACKEND = Schema({"service": _text, "subset": _name, "weight": _weight,
                   "headers": _header_changes, "response_headers": _header_changes,
                   "rewrite": _rewrite, "redirect": _redirect, "status": _status},
                  required=("service",), exclusive=(("rewrite", "redirect", "status"),))


@_reads(_BACKEND)
def _backend(ctx: Context, value: Any, at: At) -> Backend:
    """``{service, subset, weight}``; ``headers`` / ``response_headers`` change the request
    / response of this backend's share only, ``rewrite`` its upstream URL; ``redirect`` and
    ``status`` answer the share themselves instead of forwarding (the service then only
    names it: Gateway API's 500 for an invalid backendRef, a backendRef's RequestRedirect)."""
    fields = ctx.fields(value, at, _BACKEND)
    if "status" in fields or "redirect" in fields:
        service, subset = ctx.read(_name, fields["service"], at.key("service")), fields.get(
            "subset")
    else:
        service, subset = _destination(ctx, fields, at)
    return Backend(service, subset, fields.get("weight", 1.0), headers=fields.get("headers"),
                   response_headers=fields.get("response_headers"),
                   rewrite=fields.get("rewrite"), redirect=fields.get("redirect"),
                   direct_status=fields.get("status"))


_backend_list = _list_of(_backend, non_empty=True)


@_reads(_ListShape(_backend))
def _backends(ctx: Context, value: Any, at: At) -> tuple[Backend, ...]:
    backends: tuple[Backend, ...] = _backend_list(ctx, value, at)
    names = [backend.name for backend in backends]
    for index, name in enumerate(names):
        if name in names[:index]:
            # Metrics, stickiness and set-weight address a backend by name: it must be unique.
            ctx.error(at.item(index), f"backend {name!r} is listed twice; give it one weight")
            raise _Reported
    if all(backend.weight == 0 for backend in backends):
        ctx.warn(at, "every backend has weight 0: the route answers 503 until a weight is raised")
    return backends


_ROUTE = Schema({
    "name": _name,
    "hosts": _hosts,
    "match": _list_of(_match),
    "backends": _backends,
    "sticky": _sticky,
    "fault": _fault,
    "timeout": _duration,  # 0s: no timeout at all (Istio's default, Gateway API's "0s")
    "retries": _retries,
    "mirror": _mirror,
    "mirrors": _list_of(_mirror),
    "headers": _record(HeaderRules, {"request": _header_changes, "response": _header_changes}),
    "rewrite": _rewrite,
    "redirect": _redirect,
    "direct_response": _record(DirectResponse, {"status": _status, "body": _text},
                               required=("status",)),
    "websocket": _bool,
    "when_backend_unavailable": _choice("failover", "panic", "fail"),
}, required=("name",), one_of=(("backends", "redirect", "direct_response"),),
   exclusive=(("mirror", "mirrors"),))


@_reads(_ROUTE)
def _route(ctx: Context, value: Any, at: At) -> Route:
    fields = ctx.fields(value, at, _ROUTE)
    fields["matches"] = fields.pop("match", ())
    if "mirror" in fields:
        fields["mirrors"] = (fields.pop("mirror"),)
    return Route(**fields)


def read_routes(ctx: Context, documents: Sequence[At]) -> tuple[Route, ...]:
    """``routes`` of every document, in order; names must be unique."""
    parsed: list[tuple[Route, At]] = []
    defined_at: dict[str, At] = {}
    for doc in documents:
        section, at = doc.doc.value.get("routes"), doc.key("routes")
        if section is None:
            continue
        if not isinstance(section, list):
            ctx.error(at, f"must be a list of routes, got {describe(section)}")
            continue
        for index, value in enumerate(section):
            if isinstance(value, dict) and isinstance(value.get("name"), str):
                ctx.declared_routes.add(value["name"])
            try:
                route = ctx.read(_route, value, at.item(index))
            except _Reported:
                continue
            if route.name in defined_at:
                ctx.error(at.item(index).key("name"), f"route {route.name!r} is already "
                                                      f"defined at {defined_at[route.name].where}")
                continue
            defined_at[route.name] = at.item(index)
            ctx.routes[route.name] = route
            parsed.append((route, at.item(index)))
    _warn_unreachable(ctx, parsed)
    return tuple(route for route, _ in parsed)


def _warn_unreachable(ctx: Context, routes: Sequence[tuple[Route, At]]) -> None:
    """Warn about routes hidden behind an earlier catch-all route for the same hosts."""
    for index, (route, at) in enumerate(routes):
        for earlier, _ in routes[:index]:
            catches_all = not earlier.matches or Match() in earlier.matches
            same_hosts = not earlier.hosts or (
                route.hosts and set(route.hosts) <= set(earlier.hosts))
            if catches_all and same_hosts:
                ctx.warn(at, f"never matches: route {earlier.name!r} before it matches every "
                             "request for these hosts (first match wins)")
                break


# ---------------------------------------------------------------------------- canaries

def _url(ctx: Context, value: Any, at: At) -> str:
    url = _text(ctx, value, at)
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        raise _Reject(f"must be an http:// or https:// URL, got {describe(value)}")
    return url


_CANARY = Schema({
    "name": _name,
    "route": _text,
    "primary": _text,
    "candidate": _text,
    "interval": _timeout,
    "step_weight": _step_percent,
    "step_weights": _list_of(_step_percent, non_empty=True),
    "max_weight": _step_percent,
    "threshold": _integer(1),
    "min_requests": _integer(0),
    "checks": _record(CanaryChecks, {"success_rate_min": _percent, "latency_p99_max": _timeout,
                                     "relative_to_primary": _bool}),
    "webhooks": _list_of(_record(Webhook, {
        "type": _choice("pre-rollout", "rollout", "confirm-promotion", "post-rollout", "rollback"),
        "url": _url,
        "timeout": _timeout,
    }, required=("type", "url"))),
}, required=("name", "route", "primary", "candidate"),
   exclusive=(("step_weight", "step_weights"),))


@_reads(_CANARY)
def _canary(ctx: Context, value: Any, at: At) -> Canary:
    fields = ctx.fields(value, at, _CANARY)
    canary = Canary(**fields)
    steps = canary.step_weights
    if any(later <= earlier for earlier, later in itertools.pairwise(steps)):
        ctx.error(at.key("step_weights"), "must increase step by step, e.g. [5, 10, 25, 50]")
        raise _Reported
    route = ctx.routes.get(canary.route)
    if route is None:
        if canary.route not in ctx.declared_routes:  # else the route's own errors say it all
            ctx.error(at.key("route"), f"unknown route {canary.route!r}")
        raise _Reported
    backends = [backend.name for backend in route.backends]
    failed = False
    for role in ("primary", "candidate"):
        name = getattr(canary, role)
        if name not in backends:
            ctx.error(at.key(role), f"{name!r} is not a backend of route {route.name!r} "
                                    f"(backends: {', '.join(backends) or 'none'})")
            failed = True
    if canary.primary == canary.candidate:
        ctx.error(at.key("candidate"), "must differ from primary")
        failed = True
    if failed:
        raise _Reported
    return canary


def read_canaries(ctx: Context, documents: Sequence[At]) -> tuple[Canary, ...]:
    """``canaries`` of every document, in order; names must be unique. Runs after the
    routes (imported ones too): a canary names a route and two of its backends."""
    canaries: list[Canary] = []
    defined_at: dict[str, At] = {}
    for doc in documents:
        section, at = doc.doc.value.get("canaries"), doc.key("canaries")
        if section is None:
            continue
        if not isinstance(section, list):
            ctx.error(at, f"must be a list of canaries, got {describe(section)}")
            continue
        for index, value in enumerate(section):
            try:
                canary = ctx.read(_canary, value, at.item(index))
            except _Reported:
                continue
            if canary.name in defined_at:
                ctx.error(at.item(index).key("name"), f"canary {canary.name!r} is already "
                                                      f"defined at {defined_at[canary.name].where}")
                continue
            defined_at[canary.name] = at.item(index)
            canaries.append(canary)
    return tuple(canaries)


# ---------------------------------------------------------------------------- top level


# The kinds ``kubernetes.kinds`` may name (docs/kubernetes-combining.md): the Gateway API's,
# SMI's and Istio's routing kinds, and the Services and EndpointSlices behind them.
KUBERNETES_KINDS = ("GatewayClass", "Gateway", "HTTPRoute", "ReferenceGrant", "TrafficSplit",
                    "HTTPRouteGroup", "VirtualService", "DestinationRule", "Service",
                    "EndpointSlice")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _kube_namespace(ctx: Context, value: Any, at: At) -> str:
    """A namespace name, or ``*`` for every namespace."""
    text = _text(ctx, value, at)
    if text != "*" and (len(text) > 63 or not _DNS_LABEL.fullmatch(text)):
        raise _Reject(f"must be a Kubernetes namespace name or '*', got {text!r}")
    return text


def _kube_object_name(ctx: Context, value: Any, at: At) -> str:
    """``NAME`` or ``NAMESPACE/NAME`` of a Gateway."""
    text = _text(ctx, value, at)
    parts = text.split("/")
    if len(parts) > 2 or not all(part and len(part) <= 253 and re.fullmatch(
            r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", part) for part in parts):
        raise _Reject(f"must be NAME or NAMESPACE/NAME, got {text!r}")
    return text


def _controller_name(ctx: Context, value: Any, at: At) -> str:
    """A domain-prefixed path, as GatewayClass ``spec.controllerName`` requires."""
    text = _text(ctx, value, at)
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+",
                        text):
        raise _Reject(f"must be a domain-prefixed path such as pyproxy.dev/gateway-controller, "
                      f"got {text!r}")
    return text


_KUBERNETES = Schema({
    "kubeconfig": _text,
    "token_file": _text,
    "namespaces": _list_of(_kube_namespace, non_empty=True),
    "controller_name": _controller_name,
    "kinds": _list_of(_choice(*KUBERNETES_KINDS), non_empty=True),
    "gateway": _list_of(_kube_object_name, non_empty=True),
    "watch_timeout": _timeout,
    "idle_timeout": _timeout,
    "batch_delay": _duration,
})


@_reads(_KUBERNETES)
def _kubernetes(ctx: Context, value: Any, at: At) -> KubernetesConfig:
    """``kubernetes: {}`` (or ``true``) turns in-cluster mode on with every default."""
    if _resolved(ctx, value) is True:
        return KubernetesConfig()
    fields = ctx.fields(value, at, _KUBERNETES)
    if "gateway" in fields:
        fields["gateways"] = fields.pop("gateway")
    namespaces = fields.get("namespaces", ())
    if "*" in namespaces and len(namespaces) > 1:
        ctx.error(at.key("namespaces"), "'*' (every namespace) cannot be listed with others")
        raise _Reported
    return KubernetesConfig(**fields)


def _log_format(ctx: Context, value: Any, at: At) -> str:
    """json | text | off — YAML reads an unquoted ``off`` as false, which means off too."""
    if _resolved(ctx, value) is False:
        return "off"
    return _choice("json", "text", "off")(ctx, value, at)

def _network(ctx: Context, value: Any, at: At) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address (``10.0.0.7``) or a CIDR block (``10.0.0.0/8``, ``fd00::/8``)."""
    text = _text(ctx, value, at).strip()
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        raise _Reject(f"must be an IP address or CIDR block such as 10.0.0.0/8, got {text!r} "
                      "(host bits set, or not an address)") from None


_SETTINGS: dict[str, Reader] = {
    "listen": _listen,
    "tls": _record(ListenerTLS, {"cert": _text, "key": _text}, required=("cert", "key")),
    "admin": _record(AdminConfig, {"listen": _listen, "token": _text}),
    "debug_headers": _bool,
    "timeouts": _record(Timeouts, {
        "request_header": _timeout,
        "body_idle": _timeout,
        "keep_alive": _timeout,
        "tunnel_idle": _timeout,
        "drain_delay": _duration,
        "drain_timeout": _duration,
    }),
    "limits": _record(Limits, {
        "max_request_line": _integer(1),
        "max_header_bytes": _integer(1),
        "max_headers": _integer(1),
        "max_body_bytes": _integer(0),
        "max_connections": _integer(1),
    }),
    "access_log": _record(AccessLog, {"format": _log_format}),
    "metrics": _record(MetricsConfig, {"linkerd_compat": _bool}),
    "trusted_proxies": _list_of(_network),
    "kubernetes": _kubernetes,
}

# The top level of a native document: the settings, then the sections that are merged
# over all documents (read by read_services, read_routes and read_canaries).
# TOP_LEVEL is what assemble checks the keys of a document against, and what key_paths
# starts from.
TOP_LEVEL = Schema({
    **_SETTINGS,
    "services": _map_of(_name_key, _service),
    "routes": _list_of(_route),
    "canaries": _list_of(_canary),
})


def read_settings(ctx: Context, documents: Sequence[At]) -> dict[str, Any]:
    """Top-level settings (Config keyword arguments); each may come from one document only."""
    settings: dict[str, Any] = {}
    set_at: dict[str, At] = {}
    for doc in documents:
        for key, reader in _SETTINGS.items():
            value = doc.doc.value.get(key)
            if value is None:
                continue
            if key in set_at:
                ctx.error(doc.key(key), f"{key!r} is already set at {set_at[key].where}; "
                                        "set it in one document only")
                continue
            set_at[key] = doc.key(key)
            try:
                settings[key] = ctx.read(reader, value, doc.key(key))
            except _Reported:
                pass
    admin = settings.get("admin")
    if admin and not admin.token and not _is_loopback(admin.listen.host):
        # docs/admin-api.md: the server refuses this; only a warning here, as --admin may
        # override it.
        ctx.warn(set_at["admin"], f"the admin API on {admin.listen} is reachable from other "
                                  "hosts but has no token; set admin.token")
    return settings


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


# ---------------------------------------------------------------------------- key paths


def key_paths() -> list[str]:
    """Every key path the parser accepts, in schema order: ``routes[].retries.attempts``.

    ``[]`` stands for any item of a list, ``<name>`` for a name the user chooses (a
    service, a header...). Read from the same Schema tables the parser enforces.
    """
    return list(_walk(TOP_LEVEL, ""))


def _walk(shape: Schema | _ListShape | _MapShape, prefix: str) -> Iterator[str]:
    if isinstance(shape, Schema):
        for key, reader in shape.keys.items():
            path = key_path(prefix, key)
            yield path
            yield from _walk_reader(reader, path)
    elif isinstance(shape, _ListShape):
        yield from _walk_reader(shape.item, prefix + "[]")
    else:
        yield from _walk_reader(shape.value, key_path(prefix, "<name>"))


def _walk_reader(reader: Reader, path: str) -> Iterator[str]:
    shape = _SHAPES.get(reader)
    if shape is not None:
        yield from _walk(shape, path)
