"""The route table: which route handles a request (first match in file order wins).

A route answers for its ``hosts`` (exact names, ``*.suffix`` wildcards, or every host when
it lists none) and its match block. Kubernetes short names work both ways: a route for
``stockmanager`` also answers ``stockmanager.NS``, ``stockmanager.NS.svc`` and
``stockmanager.NS.svc.cluster.local``. A request that no configured route takes, for a
host that is the name of a known service, goes straight to that service (docs/configuration.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from pyproxy.config.model import kubernetes_short_name
from pyproxy.messages import RequestHead


class Routable(Protocol):
    """What the table needs of a compiled route: its hosts and its match predicate."""

    @property
    def hosts(self) -> Sequence[str]: ...

    def matches(self, head: RequestHead) -> bool: ...


R = TypeVar("R", bound=Routable)  # the compiled route type

_CACHE_LIMIT = 4096


def host_matches(pattern: str, host: str) -> bool:
    if pattern == host:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    if "." not in pattern:
        return kubernetes_short_name(host) == pattern
    return False


class RouteTable(Generic[R]):
    """Routes in order plus the implicit per-service routes, with a per-host candidate cache."""

    def __init__(self, routes: Sequence[R], implicit: dict[str, R]):
        self.routes = tuple(routes)
        self._implicit = implicit  # service name → its implicit route
        self._named_hosts = {h for r in self.routes for h in r.hosts}
        self._candidates: dict[str, tuple[R, ...]] = {}

    def candidates(self, host: str) -> tuple[R, ...]:
        """The routes that answer for ``host``, in precedence order."""
        found = self._candidates.get(host)
        if found is None:
            found = tuple(r for r in self.routes
                          if not r.hosts or any(host_matches(p, host) for p in r.hosts))
            # A known service's name reaches that service when no configured route takes
            # the request: configured routes (catch-alls included) always come first, so
            # a split or fault on a route is never bypassed by naming the service.
            service = self._implicit.get(host) or self._implicit.get(
                kubernetes_short_name(host) or "")
            if service is not None:
                found = (*found, service)
            if len(self._candidates) >= _CACHE_LIMIT:
                self._candidates.clear()  # unbounded Host values must not grow memory
            self._candidates[host] = found
        return found

    def match(self, head: RequestHead) -> R | None:
        for route in self.candidates(head.host):
            if route.matches(head):
                return route
        return None
