"""The native configuration model (docs/configuration.md): frozen values, already validated.

``config.parse`` builds these from YAML (with ``file:line`` errors); the mesh importers in
``config.compat`` build the same values from Istio / SMI / Gateway API manifests. Nothing
here does I/O. Durations are float seconds, percentages are floats in [0, 100], weights
are non-negative floats (relative).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


def kubernetes_short_name(host: str) -> str | None:
    """``name`` for ``name.ns``, ``name.ns.svc`` and ``name.ns.svc.cluster.local``
    (docs/configuration.md: those forms of a host or backend name all mean the service
    ``name``)."""
    labels = host.split(".")
    if len(labels) == 2 or (len(labels) == 3 and labels[2] == "svc") or (
            len(labels) == 5 and labels[2:] == ["svc", "cluster", "local"]):
        return labels[0]
    return None


# ---------------------------------------------------------------------------- durations

DURATION = re.compile(r"(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ms|h|m|s))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from a duration string such as ``250ms``, ``2.5s``, ``1m`` or ``1h30m``
    (for the admin API and CLI, which take durations outside a config file)."""
    text = text.strip()
    if not DURATION.fullmatch(text):
        raise ValueError("durations look like '250ms', '2.5s', '1m' or '1h30m'")
    seconds = sum(float(number) * _UNIT_SECONDS[unit]
                  for number, unit in _DURATION_PART.findall(text))
    if not math.isfinite(seconds):
        raise ValueError("duration is too long")
    return seconds


# ---------------------------------------------------------------------------- matching

StringMatchKind = Literal["exact", "prefix", "suffix", "regex", "present", "absent"]
# "segment_prefix" is Gateway API's PathPrefix: element-wise, so /foo matches /foo and
# /foo/bar but not /foobar (a trailing slash in the value is ignored).
PathMatchKind = Literal["exact", "prefix", "regex", "segment_prefix"]
LoadBalancerKind = Literal["round_robin", "least_request", "random", "consistent_hash"]


@dataclass(frozen=True)
class StringMatch:
    """How one header, query parameter or cookie value must look.

    ``regex`` is a full match; ``present``/``absent`` ignore ``value``.
    ``ignore_case`` is for importers (Istio ``ignoreUriCase``) and applies to exact/prefix/suffix.
    ``invert`` negates the test (Istio ``withoutHeaders``): an absent field then matches.
    """

    kind: StringMatchKind
    value: str = ""
    ignore_case: bool = False
    invert: bool = False


@dataclass(frozen=True)
class PathMatch:
    kind: PathMatchKind
    value: str
    ignore_case: bool = False


@dataclass(frozen=True)
class Match:
    """One entry of a route's ``match`` list: every given condition must hold (AND)."""

    path: PathMatch | None = None
    methods: tuple[str, ...] = ()  # upper-case; empty = any
    headers: tuple[tuple[str, StringMatch], ...] = ()  # names lower-case
    query: tuple[tuple[str, StringMatch], ...] = ()
    cookies: tuple[tuple[str, StringMatch], ...] = ()


# ---------------------------------------------------------------------------- routes


# A backend share with nothing to serve it yet (an SMI backend whose Service has no
# pods): answered "no healthy upstream" with flag UH, as Envoy answers a weighted cluster
# without endpoints.
NO_ENDPOINTS_STATUS = 503


@dataclass(frozen=True)
class Backend:
    """A weighted entry of a route's split: a service, or one subset of it."""

    service: str
    subset: str | None = None
    weight: float = 1.0
    # Per-backend header changes (Istio destination headers, Gateway API backendRef filters):
    # applied only to the requests this backend draws, and to their responses.
    headers: HeaderChanges | None = None
    response_headers: HeaderChanges | None = None
    # The upstream URL for this backend's share (taking the place of the route's rewrite).
    rewrite: Rewrite | None = None
    # Answer this backend's share with a redirect instead of forwarding (``service`` then
    # only names it): a Gateway API backendRef's RequestRedirect filter.
    redirect: Redirect | None = None
    # Answer this status instead of forwarding: Gateway API requires 500 for the share of
    # an invalid or unresolvable backendRef. ``service`` then only names it. 503
    # (NO_ENDPOINTS_STATUS) answers "no healthy upstream", flag UH.
    direct_status: int | None = None

    @property
    def name(self) -> str:
        """``service`` or ``service/subset``: the ``backend`` label everywhere."""
        return f"{self.service}/{self.subset}" if self.subset else self.service


@dataclass(frozen=True)
class StickyCookie:
    name: str
    ttl: float = 3600.0


@dataclass(frozen=True)
class Sticky:
    """Pin a client to the backend it drew: by a cookie pyproxy sets, or by a request header."""

    cookie: StickyCookie | None = None
    header: str | None = None  # lower-case


@dataclass(frozen=True)
class DelayFault:
    fixed: float  # seconds
    percent: float = 100.0


@dataclass(frozen=True)
class AbortFault:
    status: int
    percent: float = 100.0


@dataclass(frozen=True)
class Fault:
    delay: DelayFault | None = None
    abort: AbortFault | None = None
    # "request": drawn once per request, an injected abort is not retried (client-side fault).
    # "attempt": drawn again for every attempt, so retries can recover from it.
    scope: Literal["request", "attempt"] = "request"
    # Header-triggered faults (docs/responses.md) are honoured only when the request carries
    # this secret in ``x-pyproxy-fault-secret``; None disables them.
    header_secret: str | None = None


RetryOn = Literal["5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes"]


@dataclass(frozen=True)
class Backoff:
    base: float = 0.025
    max: float = 0.250


@dataclass(frozen=True)
class Retries:
    attempts: int = 1  # retries after the first try (Istio semantics: attempts=2 → up to 3 tries)
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = ("connect-failure", "reset", "gateway-error")
    status_codes: tuple[int, ...] = ()
    backoff: Backoff = Backoff()
    buffer_bytes: int = 64 * 1024  # a request body larger than this is streamed and not retried


@dataclass(frozen=True)
class Mirror:
    service: str
    subset: str | None = None
    percent: float = 100.0

    @property
    def name(self) -> str:
        return f"{self.service}/{self.subset}" if self.subset else self.service


@dataclass(frozen=True)
class HeaderChanges:
    """set replaces, add appends, remove deletes (names lower-case)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeaderRules:
    request: HeaderChanges = HeaderChanges()
    response: HeaderChanges = HeaderChanges()


@dataclass(frozen=True)
class Rewrite:
    """``path_prefix`` replaces the matched prefix (or the whole path for exact/regex matches);
    ``path_regex`` = (pattern, substitution) rewrites with a regex; ``host`` replaces Host."""

    path_prefix: str | None = None
    path_full: str | None = None
    path_regex: tuple[str, str] | None = None
    host: str | None = None


@dataclass(frozen=True)
class Redirect:
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    path_prefix: str | None = None  # replace the matched prefix (Gateway API ReplacePrefixMatch)
    status: int = 302


@dataclass(frozen=True)
class DirectResponse:
    status: int
    body: str = ""


@dataclass(frozen=True)
class Route:
    name: str
    backends: tuple[Backend, ...] = ()
    hosts: tuple[str, ...] = ()  # empty = any host
    matches: tuple[Match, ...] = ()  # empty = match everything
    sticky: Sticky | None = None
    fault: Fault | None = None
    timeout: float | None = None  # whole request, retries included
    retries: Retries | None = None
    mirrors: tuple[Mirror, ...] = ()
    headers: HeaderRules | None = None
    rewrite: Rewrite | None = None
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    websocket: bool = True  # allow `Upgrade: websocket` on this route
    # A backend with no endpoint to send to: fail over to the route's other backends,
    # panic (its ejected/unhealthy endpoints anyway) or fail (503 UH); traffic/failover.py.
    when_backend_unavailable: Literal["failover", "panic", "fail"] = "failover"


# ---------------------------------------------------------------------------- services


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    tls: bool = False  # https:// endpoint
    # The DNS name this endpoint's address was resolved from (the service's DNS discovery,
    # docs/configuration.md); None for an endpoint as configured.
    hostname: str | None = None

    @property
    def address(self) -> str:
        """``host:port``: the ``endpoint`` label everywhere."""
        return f"{self.host}:{self.port}"

    def __hash__(self) -> int:
        return hash((self.host, self.port, self.tls))


@dataclass(frozen=True)
class ConsistentHash:
    header: str | None = None
    cookie: str | None = None
    source_ip: bool = False


@dataclass(frozen=True)
class LoadBalancer:
    kind: LoadBalancerKind = "round_robin"
    hash_on: ConsistentHash | None = None


@dataclass(frozen=True)
class ConnectionPool:
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 0  # hard cap on concurrent retries; 0 = none (the retry budget applies)
    connect_timeout: float = 2.0
    idle_timeout: float = 60.0
    pending_timeout: float = 1.0  # how long a request may wait for a connection slot


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx: int = 5
    consecutive_gateway_errors: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 50.0
    min_healthy_endpoints: int = 1
    panic_threshold: float = 0.0  # percent healthy below which traffic spreads over all endpoints


@dataclass(frozen=True)
class HealthCheck:
    path: str = "/health"
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 3
    jitter: float = 0.0


@dataclass(frozen=True)
class UpstreamTLS:
    """How ``https://`` endpoints are verified: the system CAs by default, or ``ca``."""

    ca: str | None = None  # PEM bundle to trust instead of the system store
    verify: bool = True  # False turns verification off (never the default)
    server_name: str | None = None  # SNI and the name checked; default: the endpoint host


@dataclass(frozen=True)
class DnsDiscovery:
    """Resolve the service's endpoint names on an interval: one endpoint per address."""

    interval: float = 5.0  # Envoy's STRICT_DNS dns_refresh_rate default


@dataclass(frozen=True)
class Service:
    name: str
    endpoints: tuple[Endpoint, ...]
    subsets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name → labels
    load_balancer: LoadBalancer = LoadBalancer()
    connection_pool: ConnectionPool = ConnectionPool()
    outlier_detection: OutlierDetection | None = None
    health_check: HealthCheck | None = None
    tls: UpstreamTLS = UpstreamTLS()
    discovery: DnsDiscovery | None = None  # None: endpoint names are connected to by name

    def subset_endpoints(self, subset: str | None) -> tuple[Endpoint, ...]:
        """The endpoints a backend ``service/subset`` sends to (all of them without a subset)."""
        if subset is None:
            return self.endpoints
        selector = self.subsets[subset]
        return tuple(
            ep for ep in self.endpoints if all(ep.labels.get(k) == v for k, v in selector.items())
        )


# ---------------------------------------------------------------------------- canaries


@dataclass(frozen=True)
class CanaryChecks:
    success_rate_min: float | None = 99.0  # percent
    latency_p99_max: float | None = None  # seconds
    relative_to_primary: bool = False


@dataclass(frozen=True)
class Webhook:
    type: Literal["pre-rollout", "rollout", "confirm-promotion", "post-rollout", "rollback"]
    url: str
    timeout: float = 5.0


@dataclass(frozen=True)
class Canary:
    name: str
    route: str
    primary: str  # backend name
    candidate: str
    interval: float = 30.0
    step_weight: float = 10.0
    step_weights: tuple[float, ...] = ()
    max_weight: float = 50.0
    threshold: int = 3
    min_requests: int = 20
    checks: CanaryChecks = CanaryChecks()
    webhooks: tuple[Webhook, ...] = ()


# ---------------------------------------------------------------------------- top level


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ListenerTLS:
    """Serve HTTPS: the files are watched and re-read when they change (rotation)."""

    cert: str
    key: str


@dataclass(frozen=True)
class AdminConfig:
    listen: Address = Address("127.0.0.1", 9901)
    token: str = ""


@dataclass(frozen=True)
class Timeouts:
    """Downstream (client-side) timeouts and the SIGTERM drain (docs/operations.md)."""

    request_header: float = 10.0  # whole header block, from the first byte (slowloris)
    body_idle: float = 30.0  # longest pause between request body bytes
    keep_alive: float = 60.0  # idle downstream connection
    tunnel_idle: float = 3600.0  # a WebSocket tunnel with no bytes either way (Envoy: 1 h)
    drain_delay: float = 5.0
    drain_timeout: float = 20.0


@dataclass(frozen=True)
class Limits:
    max_request_line: int = 8192  # → 414
    max_header_bytes: int = 65536  # whole header block → 431
    max_headers: int = 100  # → 431
    max_body_bytes: int = 0  # 0 = unlimited; larger streamed bodies → 413
    max_connections: int = 10000  # downstream connections per listener


@dataclass(frozen=True)
class AccessLog:
    format: Literal["json", "text", "off"] = "json"


@dataclass(frozen=True)
class MetricsConfig:
    linkerd_compat: bool = False


DEFAULT_CONTROLLER_NAME = "pyproxy.dev/gateway-controller"


@dataclass(frozen=True)
class KubernetesConfig:
    """In-cluster mode (docs/kubernetes.md): routes and endpoints from the Kubernetes API."""

    kubeconfig: str | None = None  # None: the pod's service account
    token_file: str | None = None  # None: the service account's (or the kubeconfig's)
    namespaces: tuple[str, ...] = ()  # (): the pod's own; ("*",): every namespace
    controller_name: str = DEFAULT_CONTROLLER_NAME
    kinds: tuple[str, ...] = ()  # (): every kind pyproxy reads whose CRD is installed
    gateways: tuple[str, ...] = ()  # "NS/NAME" or "NAME"; (): every Gateway of our classes
    watch_timeout: float = 300.0  # the server's timeoutSeconds for one watch request
    idle_timeout: float | None = None  # a stream silent this long is stalled; None: +30s
    batch_delay: float = 0.2  # changes within this window make one snapshot


@dataclass(frozen=True)
class Config:
    listen: Address = Address("0.0.0.0", 8080)
    tls: ListenerTLS | None = None
    admin: AdminConfig = AdminConfig()
    debug_headers: bool = False
    services: Mapping[str, Service] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    canaries: tuple[Canary, ...] = ()
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    access_log: AccessLog = AccessLog()
    metrics: MetricsConfig = MetricsConfig()
    # Peers whose X-Forwarded-For (and -Proto, -Host) are believed: the load balancers in
    # front (docs/responses.md, "Behind a load balancer"). Empty: only the direct peer.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    kubernetes: KubernetesConfig | None = None  # in-cluster mode; None: files only
