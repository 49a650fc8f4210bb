"""What ``pyproxy demo`` starts: the fake services, one proxy in front of each, and their configs.

The layout is the storefront → stockmanager → zipkin lab from the Linkerd and Istio guides,
with a pyproxy where the mesh's sidecar would be::

    load ─▶ storefront proxy ─▶ storefront ─▶ stockmanager proxy
        ─┬─▶ stockmanager-v1 (0.0.1) ─┐
         └─▶ stockmanager-v2 (0.0.2) ─┴─▶ zipkin proxy ─▶ zipkin

In the scenarios about failure (canary, circuit-breaker) stockmanager 0.0.2 is the lab's
broken release: it fails half of its requests; elsewhere it is healthy. A scenario changes
the stockmanager and zipkin proxies' routes and policies; everything else stays.

Every proxy's admin port is fixed (``admin_ports``): the proxy the scenario is about gets
9901, the port the CLI asks by default.

Configs are plain dicts in the native schema (docs/configuration.md), which the runner
writes as YAML.
Nothing here does I/O, so every scenario's config can be validated in a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCENARIOS = {
    "canary": "stockmanager 0.0.1 takes 90% of the traffic, the failing 0.0.2 canary 10%",
    "chaos": "the zipkin proxy aborts 50% of the calls with 503; stockmanager stays on 0.0.1",
    "dark-launch": "requests with `end-user: tester` go to stockmanager 0.0.2, the rest to 0.0.1",
    "blue-green": "blue (0.0.1) is live, green (0.0.2) answers on its own host until you flip",
    "circuit-breaker": "stockmanager 50/50 behind a 1-connection pool and 5xx outlier ejection",
}

BROKEN_ERROR_RATE = 0.5  # stockmanager 0.0.2, as in the labs
TESTER_EVERY = 10  # dark-launch: one load request in ten claims to be the tester
# The scenarios about a failing 0.0.2. Elsewhere 0.0.2 is healthy: "try green" or the
# tester's request must not meet an error the scenario is not about.
V2_FAILS = frozenset({"canary", "circuit-breaker"})

PROXY_NAMES = ("storefront", "stockmanager", "zipkin")
# The proxy each scenario is about. It gets the first admin port (9901, the CLI's default),
# so the first dashboard URL the demo prints and a bare `pyproxy status` show its routes.
FOCUS = {"canary": "stockmanager", "chaos": "zipkin", "dark-launch": "stockmanager",
         "blue-green": "stockmanager", "circuit-breaker": "stockmanager"}
FRONTS = {"storefront": "storefront (where the load goes)",
          "stockmanager": "stockmanager-v1 and -v2",
          "zipkin": "zipkin"}


def admin_ports(scenario: str, first: int) -> dict[str, int]:
    """Each proxy's fixed admin port: the scenario's proxy on ``first``, then the storefront's,
    then the remaining one's (``first + 1``, ``first + 2``)."""
    focus = FOCUS[scenario]
    order = [focus, *(name for name in PROXY_NAMES if name != focus)]
    return {name: first + index for index, name in enumerate(order)}


@dataclass(frozen=True)
class Ports:
    """Every port the demo listens on (all on 127.0.0.1)."""

    storefront_proxy: int
    storefront_admin: int
    stockmanager_proxy: int
    stockmanager_admin: int
    zipkin_proxy: int
    zipkin_admin: int
    storefront: int
    stockmanager_v1: int
    stockmanager_v2: int
    zipkin: int


@dataclass(frozen=True)
class FakeServiceSpec:
    name: str
    port: int
    description: str = ""
    latency: str = "0s"
    error_rate: float = 0.0
    upstreams: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """``pyproxy`` arguments that start it."""
        args = ["fake-service", "--name", self.name, "--port", str(self.port),
                "--latency", self.latency]
        if self.error_rate:
            args += ["--error-rate", str(self.error_rate)]
        for url in self.upstreams:
            args += ["--upstream", url]
        return args


@dataclass(frozen=True)
class ProxySpec:
    name: str
    port: int
    admin_port: int
    config_path: Path
    config: dict[str, Any]
    fronts: str = ""  # what it stands in front of, for the banner

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def argv(self) -> list[str]:
        return ["run", "-c", str(self.config_path),
                "--listen", f"127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{self.admin_port}"]


@dataclass(frozen=True)
class Plan:
    scenario: str
    description: str
    fake_services: tuple[FakeServiceSpec, ...]
    proxies: tuple[ProxySpec, ...]  # storefront's first: it is the one users and the load hit
    focus: str  # the proxy the scenario is about (on the first admin port)
    try_next: tuple[str, ...]  # commands printed at start, one per line
    tester_every: int = 0  # every Nth load request also sends `end-user: tester` (0 = never)


def build_plan(scenario: str, ports: Ports, config_dir: Path) -> Plan:
    """The processes and configs for ``scenario``; config files go into ``config_dir``."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    stockmanager_latency = "15ms:5ms"
    zipkin_url = f"http://127.0.0.1:{ports.zipkin_proxy}/api/v2/spans"
    fake_services = (
        FakeServiceSpec("storefront", ports.storefront, latency="5ms:2ms",
                        upstreams=(f"http://127.0.0.1:{ports.stockmanager_proxy}/stocklevel",)),
        FakeServiceSpec("stockmanager-v1", ports.stockmanager_v1, "version 0.0.1",
                        latency=stockmanager_latency, upstreams=(zipkin_url,)),
        _stockmanager_v2(scenario, ports.stockmanager_v2, stockmanager_latency, zipkin_url),
        FakeServiceSpec("zipkin", ports.zipkin, latency="1ms"),
    )
    proxies = (
        ProxySpec("storefront", ports.storefront_proxy, ports.storefront_admin,
                  config_dir / "storefront.yaml",
                  _proxy_config(ports.storefront_proxy, ports.storefront_admin,
                                {"storefront": _single_endpoint(ports.storefront)},
                                [{"name": "storefront", "hosts": _hosts("storefront"),
                                  "backends": [{"service": "storefront"}]}]),
                  FRONTS["storefront"]),
        ProxySpec("stockmanager", ports.stockmanager_proxy, ports.stockmanager_admin,
                  config_dir / "stockmanager.yaml",
                  _proxy_config(ports.stockmanager_proxy, ports.stockmanager_admin,
                                {"stockmanager": _stockmanager_service(scenario, ports)},
                                _stockmanager_routes(scenario)),
                  FRONTS["stockmanager"]),
        ProxySpec("zipkin", ports.zipkin_proxy, ports.zipkin_admin,
                  config_dir / "zipkin.yaml",
                  _proxy_config(ports.zipkin_proxy, ports.zipkin_admin,
                                {"zipkin": _single_endpoint(ports.zipkin)},
                                [_zipkin_route(scenario)]),
                  FRONTS["zipkin"]),
    )
    return Plan(
        scenario=scenario,
        description=SCENARIOS[scenario],
        fake_services=fake_services,
        proxies=proxies,
        focus=FOCUS[scenario],
        try_next=_try_next(scenario, proxies),
        tester_every=TESTER_EVERY if scenario == "dark-launch" else 0,
    )


def _stockmanager_v2(scenario: str, port: int, latency: str, zipkin_url: str) -> FakeServiceSpec:
    if scenario in V2_FAILS:
        return FakeServiceSpec("stockmanager-v2", port,
                               f"version 0.0.2, fails {BROKEN_ERROR_RATE:.0%} of requests",
                               latency=latency, error_rate=BROKEN_ERROR_RATE,
                               upstreams=(zipkin_url,))
    return FakeServiceSpec("stockmanager-v2", port, "version 0.0.2", latency=latency,
                           upstreams=(zipkin_url,))


# ------------------------------------------------------------------------------ configs


def _proxy_config(port: int, admin_port: int, services: dict[str, Any],
                  routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{port}",
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "debug_headers": True,  # x-pyproxy-backend & co. show which version answered
        "access_log": {"format": "off"},  # the demo prints its own summary instead
        # No load balancer needs time to notice a stopping proxy here: Ctrl-C acts at once.
        "timeouts": {"drain_delay": "0s"},
        "services": services,
        "routes": routes,
    }


def _hosts(service: str) -> list[str]:
    """The hosts a service's main route answers for.

    The service's own name must be listed: a host that no route names goes straight to the
    service of that name, past a route without ``hosts`` and its split. The callers in the
    demo have no DNS and reach a proxy by address, hence 127.0.0.1 and localhost.
    """
    return [service, "127.0.0.1", "localhost"]


def _single_endpoint(port: int) -> dict[str, Any]:
    return {"endpoints": [{"address": f"127.0.0.1:{port}"}]}


def _stockmanager_service(scenario: str, ports: Ports) -> dict[str, Any]:
    service: dict[str, Any] = {
        "endpoints": [
            {"address": f"127.0.0.1:{ports.stockmanager_v1}", "labels": {"version": "0.0.1"}},
            {"address": f"127.0.0.1:{ports.stockmanager_v2}", "labels": {"version": "0.0.2"}},
        ],
        "subsets": {"v1": {"version": "0.0.1"}, "v2": {"version": "0.0.2"}},
    }
    if scenario == "circuit-breaker":
        # One connection and one waiting request for the whole service: a burst overflows
        # (503, flag UO),
        # and three 5xx in a row eject 0.0.2 for 15 s.
        service["connection_pool"] = {"max_connections": 1, "max_pending_requests": 1}
        service["outlier_detection"] = {"consecutive_5xx": 3, "interval": "5s",
                                        "base_ejection_time": "15s"}
    return service


def _split(v1: float, v2: float) -> list[dict[str, Any]]:
    return [{"service": "stockmanager", "subset": "v1", "weight": v1},
            {"service": "stockmanager", "subset": "v2", "weight": v2}]


def _stockmanager_routes(scenario: str) -> list[dict[str, Any]]:
    # Splits keep both backends even at weight 0, so `pyproxy set-weight` can move traffic.
    hosts = _hosts("stockmanager")
    if scenario == "canary":
        return [{"name": "stockmanager", "hosts": hosts, "backends": _split(90, 10)}]
    if scenario == "chaos":
        return [{"name": "stockmanager", "hosts": hosts, "backends": _split(100, 0)}]
    if scenario == "dark-launch":
        return [
            {"name": "stockmanager-tester", "hosts": hosts,
             "match": [{"headers": {"end-user": {"exact": "tester"}}}],
             "backends": [{"service": "stockmanager", "subset": "v2"}]},
            {"name": "stockmanager", "hosts": hosts,
             "backends": [{"service": "stockmanager", "subset": "v1"}]},
        ]
    if scenario == "blue-green":
        return [
            {"name": "stockmanager-blue", "hosts": ["blue.stockmanager"],
             "backends": [{"service": "stockmanager", "subset": "v1"}]},
            {"name": "stockmanager-green", "hosts": ["green.stockmanager"],
             "backends": [{"service": "stockmanager", "subset": "v2"}]},
            # The live colour: blue to start with.
            {"name": "stockmanager", "hosts": hosts, "backends": _split(100, 0)},
        ]
    assert scenario == "circuit-breaker", scenario
    return [{"name": "stockmanager", "hosts": hosts, "backends": _split(50, 50)}]


def _zipkin_route(scenario: str) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "zipkin", "hosts": _hosts("zipkin"),
                             "backends": [{"service": "zipkin"}]}
    if scenario == "chaos":
        # The Linkerd lab split zipkin 50/50 with an nginx that always fails; an abort
        # fault gives the same traffic without a fault-injector service.
        route["fault"] = {"abort": {"status": 503, "percent": 50}}
    return route


# ------------------------------------------------------------------------------ hints


DEFAULT_ADMIN_PORT = 9901  # where the CLI looks without --admin or $PYPROXY_ADMIN


def _admin_flag(proxy: ProxySpec) -> str:
    """`` --admin URL`` for a CLI command aimed at ``proxy``, or nothing on the default port."""
    return "" if proxy.admin_port == DEFAULT_ADMIN_PORT else f" --admin {proxy.admin_url}"


def _try_next(scenario: str, proxies: tuple[ProxySpec, ...]) -> tuple[str, ...]:
    storefront, stockmanager, zipkin = proxies
    admin = _admin_flag(stockmanager)
    curl_stockmanager = f"curl -s -H 'Host: stockmanager' {stockmanager.url}/stocklevel"
    status = f"pyproxy status{admin} --watch"
    if scenario == "canary":
        return (
            status,
            f"pyproxy set-weight stockmanager stockmanager/v1=50 stockmanager/v2=50{admin}",
            f"pyproxy set-weight stockmanager stockmanager/v1=100 stockmanager/v2=0{admin}"
            "   # roll back",
            f"curl -si -H 'Host: stockmanager' {stockmanager.url}/stocklevel | grep x-pyproxy",
        )
    if scenario == "chaos":
        return (
            f"pyproxy status{_admin_flag(zipkin)} --watch",
            f"curl -si {zipkin.url}/api/v2/spans | head -1   # 503 half of the time",
            f"{curl_stockmanager}   # a failed zipkin call fails stockmanager too",
        )
    if scenario == "dark-launch":
        return (
            f"curl -s -H 'end-user: tester' {storefront.url}/store/stocklevel"
            "   # the storefront passes end-user on: 0.0.2",
            f"{curl_stockmanager}   # everyone else: 0.0.1",
            status,
        )
    if scenario == "blue-green":
        return (
            f"curl -s -H 'Host: green.stockmanager' {stockmanager.url}/stocklevel"
            "   # try green before it is live",
            f"pyproxy set-weight stockmanager stockmanager/v1=0 stockmanager/v2=100{admin}"
            "   # flip to green",
            f"or edit the `stockmanager` route in {stockmanager.config_path}"
            " (saved changes are reloaded)",
        )
    return (
        f"for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}} ' "
        f"-H 'Host: stockmanager' {stockmanager.url}/stocklevel & done; wait"
        "   # a burst: 503 (UO)",
        f"curl -s {stockmanager.admin_url}/api/v1/services   # ejected endpoints",
        status,
    )
