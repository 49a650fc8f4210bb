"""DNS discovery: an endpoint name stands for every address it resolves to.

A service with ``discovery: dns`` (docs/configuration.md) has each endpoint whose host is a
name (not an IP literal) resolved every ``interval`` (default 5 s). Each address of the
answer becomes one endpoint with the name's port and labels, so balancing, outlier ejection,
the circuit breaker's per-endpoint accounting and health checks work per address: per
container behind ``docker-compose up --scale``, per pod behind a headless Service. This is
Envoy's STRICT_DNS, not LOGICAL_DNS (which connects to one address of the answer at a time
and suits a large external name, not a set of replicas). docs/operations.md, "DNS
discovery", is the user's account of it.

Where pyproxy differs from STRICT_DNS, and why:

* Resolution is ``loop.getaddrinfo`` (the system resolver: /etc/hosts, Docker's and
  Kubernetes' DNS), which does not return TTLs; so there is no ``respect_dns_ttl``, only the
  interval.
* A failed resolution, or an empty answer, keeps the last good answer; Envoy empties the
  cluster on a successful empty answer. getaddrinfo reports "no such name" as an error,
  and a name that briefly vanishes (a container restarting) must not take every
  endpoint with it.

Changes reach the runtime as ``Runtime.apply_resolved``: the declared config is compiled
again with the answers and swapped in, exactly as a reload does (live state carried over;
never a file reload). A removed address drains: no new request picks it, requests already
on it finish on their connection. A new address starts clean (outlier detection, health).

The parts that decide (which names, what changed, the last good answer) are plain values
tested with a fake resolver and a fake clock; ``DnsWatcher.run`` is the loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypedDict

from pyproxy.config.model import Config
from pyproxy.runtime import Runtime

logger = logging.getLogger("pyproxy.discovery.dns")

# (service, host, port): one endpoint name of one service.
NameKey = tuple[str, str, int]
# host, port → the addresses (IP literals) it resolves to; raises on failure.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

# A resolution slower than this failed (the last good answer stays); no interval waits on it.
RESOLVE_TIMEOUT = 5.0
# The loop wakes at least this often, so a name a reload added is resolved within it.
MAX_SLEEP = 1.0


async def system_resolver(host: str, port: int) -> list[str]:
    """The system resolver, off the event loop (``getaddrinfo`` runs in the executor)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def names_to_resolve(config: Config) -> dict[NameKey, float]:
    """Every endpoint name of a DNS-discovered service → its interval. IP literals are
    endpoints as they are; so is every endpoint of a service without discovery."""
    names: dict[NameKey, float] = {}
    for service in config.services.values():
        if service.discovery is None:
            continue
        for endpoint in service.endpoints:
            if not is_ip_literal(endpoint.host):
                names[(service.name, endpoint.host, endpoint.port)] = service.discovery.interval
    return names


def canonical_answer(addresses: Iterable[str]) -> tuple[str, ...]:
    """Without duplicates (getaddrinfo lists an address once per protocol family entry) and
    in address order: resolvers rotate answers, which must not read as a change nor
    reorder the round robin."""
    unique = {ipaddress.ip_address(a) for a in addresses}
    return tuple(str(a) for a in sorted(unique, key=lambda a: (a.version, a)))


@dataclass
class NameState:
    """One name's last good answer and how its latest resolution went."""

    addresses: tuple[str, ...] = ()  # the last good answer; () until there is one
    resolved_at: float | None = None  # wall clock of the last good answer
    error: str | None = None  # why the latest resolution failed; None after a good one
    due: float = 0.0  # monotonic time of the next resolution

    def __repr__(self) -> str:
        return f"<NameState {list(self.addresses)} error={self.error!r}>"


class Answers:
    """The last good answer of every name: pure, no I/O."""

    def __init__(self) -> None:
        self.names: dict[NameKey, NameState] = {}

    def retain(self, keys: Iterable[NameKey]) -> bool:
        """Keep only ``keys`` (a reload may remove names; it may add some, which start with
        no answer). True when a name with an answer went away."""
        wanted = set(keys)
        dropped = [key for key in self.names if key not in wanted]
        changed = any(self.names[key].addresses for key in dropped)
        for key in dropped:
            del self.names[key]
        for key in wanted:
            self.names.setdefault(key, NameState())
        return changed

    def record(self, key: NameKey, result: Sequence[str] | BaseException, now: float) -> bool:
        """One resolution's outcome; True when the name's addresses changed. A failure or an
        empty answer keeps the last good answer."""
        state = self.names.setdefault(key, NameState())
        if isinstance(result, BaseException) or not result:
            state.error = _reason(result) if isinstance(result, BaseException) else "no address"
            return False
        answer = canonical_answer(result)
        state.error = None
        state.resolved_at = now
        if answer == state.addresses:
            return False
        state.addresses = answer
        return True

    def resolved(self) -> dict[NameKey, tuple[str, ...]]:
        """The names with an answer, as the runtime takes them."""
        return {key: state.addresses for key, state in self.names.items() if state.addresses}


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {RESOLVE_TIMEOUT:g}s"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class NameView(TypedDict):
    """One resolved name in ``/api/v1/services`` (docs/admin-api.md)."""

    name: str  # host:port as configured
    addresses: list[str]  # the last good answer
    resolved_at: float | None
    error: str | None


class DnsWatcher:
    """Resolves the names of the serving config on their interval and hands changed answers
    to the runtime. ``step()`` is one round; ``run()`` repeats it until cancelled."""

    def __init__(self, runtime: Runtime, resolver: Resolver = system_resolver, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.runtime = runtime
        self.answers = Answers()
        self._resolver = resolver
        self._clock = clock
        self._wall_clock = wall_clock

    async def step(self) -> bool:
        """Resolve every name that is due; apply the answers when any changed. True then."""
        names = names_to_resolve(self.runtime.current.declared)
        changed = self.answers.retain(names)
        now = self._clock()
        due = [key for key in names if self.answers.names[key].due <= now]
        results = await asyncio.gather(*(self._resolve(key) for key in due),
                                       return_exceptions=True)
        wall = self._wall_clock()
        for key, result in zip(due, results, strict=True):
            state = self.answers.names[key]
            state.due = now + names[key]
            had_error = state.error
            if self.answers.record(key, result, wall):
                changed = True
                logger.info("DNS: %s:%d of service %s now resolves to %s", key[1], key[2],
                            key[0], ", ".join(state.addresses))
            if state.error is not None and had_error is None:
                # Once per failure streak: a name down for an hour must not flood the log.
                logger.warning("DNS: cannot resolve %s:%d of service %s (%s); %s", key[1],
                               key[2], key[0], state.error,
                               f"keeping {', '.join(state.addresses)}" if state.addresses
                               else "connecting by name until it resolves")
        if changed:
            self.runtime.apply_resolved(self.answers.resolved())
        return changed

    async def _resolve(self, key: NameKey) -> Sequence[str]:
        return await asyncio.wait_for(self._resolver(key[1], key[2]), RESOLVE_TIMEOUT)

    def next_wait(self) -> float:
        """Seconds until the next name is due (at most MAX_SLEEP)."""
        if not self.answers.names:
            return MAX_SLEEP
        soonest = min(state.due for state in self.answers.names.values())
        return max(0.0, min(MAX_SLEEP, soonest - self._clock()))

    async def run(self) -> None:
        while True:
            try:
                await self.step()
                wait = self.next_wait()
            except Exception:
                # One bad round must not end discovery for the life of the process: the
                # endpoints serving stay, and a later round tries again.
                logger.exception("DNS discovery round failed; retrying")
                wait = MAX_SLEEP
            await asyncio.sleep(wait)

    def describe(self, service: str) -> list[NameView]:
        """The names of ``service`` with their answers, for the admin API."""
        return [{"name": f"{host}:{port}", "addresses": list(state.addresses),
                 "resolved_at": state.resolved_at, "error": state.error}
                for (name, host, port), state in self.answers.names.items() if name == service]
