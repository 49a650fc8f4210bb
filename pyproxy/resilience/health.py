"""Active health checks: probe each endpoint with ``GET path`` and track healthy/unhealthy.

Two parts, so the decision stays pure and testable without sockets:

- ``HealthState`` — the per-endpoint state machine. It starts **healthy**, turns unhealthy
  after ``unhealthy_threshold`` consecutive failed probes and healthy again after
  ``healthy_threshold`` consecutive good ones.
- ``HealthChecker`` — the prober for one service: one task per endpoint, each probing
  every ``interval`` ± ``jitter`` over one aiohttp ``ClientSession`` per checker (aiohttp
  lives in the control plane, never on the request path). A 2xx answer within ``timeout``
  is good; any other status, a timeout or a connection error is a failure. Redirects are
  not followed: a 3xx from a health endpoint is a misconfiguration, not health.

Where we deliberately differ from Envoy, and why:

- Endpoints start healthy, and a reload keeps the state of surviving endpoints. Envoy
  holds a new host out of rotation until its first probe passes; here that would answer
  503 for every request between start (or a reload adding endpoints) and the first
  probes. Passive outlier detection covers that window instead.
- A bad status counts toward ``unhealthy_threshold`` like any failure; Envoy fails the
  host on the first non-expected status. One 500 from a flaky ``/health`` should not pull
  an endpoint when the user asked for three failures.

Combine with outlier detection in the pipeline via
``OutlierDetector.available(..., healthy=checker.is_healthy)``, so the panic threshold
sees both kinds of unhealthy.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from pyproxy.config.model import Endpoint, HealthCheck
from pyproxy.tasks import TaskGroup

if TYPE_CHECKING:
    import aiohttp

logger = logging.getLogger("pyproxy")

OnChange = Callable[[str, str, bool], None]
"""``on_change(service, endpoint_key, healthy)``, called when an endpoint flips."""


class HealthState:
    """One endpoint's active-health state machine (pure; see the module docstring)."""

    __slots__ = (
        "failures",
        "healthy",
        "healthy_threshold",
        "successes",
        "unhealthy_threshold",
    )

    def __init__(self, healthy_threshold: int = 1, unhealthy_threshold: int = 3):
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.healthy = True
        self.successes = 0  # consecutive good probes
        self.failures = 0  # consecutive failed probes

    def record(self, ok: bool) -> bool:
        """Count one probe; True when this probe flipped ``healthy``."""
        if ok:
            self.failures = 0
            self.successes += 1
            if not self.healthy and self.successes >= self.healthy_threshold:
                self.healthy = True
                return True
        else:
            self.successes = 0
            self.failures += 1
            if self.healthy and self.failures >= self.unhealthy_threshold:
                self.healthy = False
                return True
        return False

    def __repr__(self) -> str:
        return (f"<HealthState {'healthy' if self.healthy else 'unhealthy'} "
                f"successes={self.successes}/{self.healthy_threshold} "
                f"failures={self.failures}/{self.unhealthy_threshold}>")


class _Target:
    """An endpoint being probed: its address, state, task and last probe."""

    __slots__ = ("endpoint", "last_checked", "last_result", "state", "task")

    def __init__(self, endpoint: Endpoint, policy: HealthCheck):
        self.endpoint = endpoint
        self.state = HealthState(policy.healthy_threshold, policy.unhealthy_threshold)
        self.task: asyncio.Task[None] | None = None
        self.last_checked: float | None = None  # wall clock (time.time())
        self.last_result = ""  # "200", "timeout", "ClientConnectorError: ..."


class HealthChecker:
    """Probes one service's endpoints (see the module docstring).

    Lifecycle: build it, ``await start()`` in the running loop, ``update(endpoints,
    policy)`` on every reload (keeps the state of surviving endpoints, starts and stops
    probes for added and removed ones), ``await stop()`` when the service goes away or on
    shutdown. Read ``is_healthy(key)`` per request and ``describe()`` for the admin API.
    """

    def __init__(self, service: str, endpoints: Iterable[Endpoint], policy: HealthCheck, *,
                 on_change: OnChange | None = None,
                 rng: Callable[[], float] = random.random):
        self.service = service
        self._policy = policy
        self._on_change = on_change
        self._rng = rng
        self._targets = {ep.address: _Target(ep, policy) for ep in endpoints}
        self._tasks = TaskGroup()
        self._session: aiohttp.ClientSession | None = None  # set while started

    @property
    def policy(self) -> HealthCheck:
        return self._policy

    async def start(self) -> None:
        """Open the session and start probing every endpoint (first probes within
        ``jitter``, so many checkers do not fire at once)."""
        if self._session is not None:
            return
        # Imported here: aiohttp's client costs every proxy process ~16 MiB of memory, and
        # only services with health checks need it.
        import aiohttp

        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),  # a probe must not carry state between probes
            headers={"user-agent": "pyproxy-health-check"})
        for key, target in self._targets.items():
            self._spawn(key, target)

    async def stop(self) -> None:
        """Cancel every probe, wait for them to end, close the session."""
        await self._tasks.cancel_all()
        for target in self._targets.values():
            target.task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def update(self, endpoints: Iterable[Endpoint], policy: HealthCheck) -> None:
        """Adopt a reloaded endpoint list and policy. Surviving endpoints (same
        ``host:port``) keep their health; new ones start healthy and are probed at once
        if the checker is running; removed ones stop being probed. Interval, path and
        timeout changes apply from each endpoint's next probe."""
        self._policy = policy
        targets = {}
        for endpoint in endpoints:
            key = endpoint.address
            target = self._targets.pop(key, None)
            if target is None:
                target = _Target(endpoint, policy)
                if self._session is not None:
                    self._spawn(key, target)
            else:
                target.endpoint = endpoint
                target.state.healthy_threshold = policy.healthy_threshold
                target.state.unhealthy_threshold = policy.unhealthy_threshold
            targets[key] = target
        for removed in self._targets.values():
            if removed.task is not None:
                removed.task.cancel()
        self._targets = targets

    # ------------------------------------------------------------------ reads

    def is_healthy(self, key: str) -> bool:
        """Whether endpoint ``host:port`` passes its checks; True for an endpoint this
        checker does not probe (no evidence against it)."""
        target = self._targets.get(key)
        return target is None or target.state.healthy

    def describe(self) -> dict[str, dict[str, object]]:
        """Per endpoint: ``healthy``, the consecutive ``successes``/``failures``,
        ``last_checked`` (wall clock, seconds since the epoch; None before the first
        probe) and ``last_result`` (the status, ``timeout`` or the connection error)."""
        return {key: {"healthy": t.state.healthy, "successes": t.state.successes,
                      "failures": t.state.failures, "last_checked": t.last_checked,
                      "last_result": t.last_result}
                for key, t in self._targets.items()}

    # ------------------------------------------------------------------ probing

    def _spawn(self, key: str, target: _Target) -> None:
        target.task = self._tasks.spawn(self._run(key, target),
                                        name=f"health-check {self.service} {key}")

    async def _run(self, key: str, target: _Target) -> None:
        await asyncio.sleep(self._rng() * self._policy.jitter)
        while True:
            ok, result = await self._probe(target.endpoint)
            target.last_checked = time.time()
            target.last_result = result
            if target.state.record(ok):
                self._changed(key, target.state.healthy, result)
            policy = self._policy
            await asyncio.sleep(max(0.0, policy.interval
                                    + (2 * self._rng() - 1) * policy.jitter))

    async def _probe(self, endpoint: Endpoint) -> tuple[bool, str]:
        """One ``GET``: (good?, what happened)."""
        policy = self._policy
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host  # IPv6 literal
        url = f"{'https' if endpoint.tls else 'http'}://{host}:{endpoint.port}{policy.path}"
        import aiohttp  # loaded by start()

        session = self._session
        assert session is not None, "probes run only between start() and stop()"
        try:
            async with session.get(url, allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=policy.timeout)
                                         ) as response:
                return 200 <= response.status < 300, str(response.status)
        except TimeoutError:
            return False, "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"

    def _changed(self, key: str, healthy: bool, result: str) -> None:
        logger.info("health check: %s %s is now %s (%s)", self.service, key,
                    "healthy" if healthy else "unhealthy", result)
        if self._on_change is None:
            return
        try:
            self._on_change(self.service, key, healthy)
        except Exception:
            # The callback is the caller's code; a bug there must not stop the probing.
            logger.exception("health check on_change callback failed")

    def __repr__(self) -> str:
        unhealthy = [key for key, t in self._targets.items() if not t.state.healthy]
        return (f"<HealthChecker {self.service} {self._policy.path} "
                f"every {self._policy.interval:g}s endpoints={len(self._targets)} "
                f"unhealthy={unhealthy} {'running' if self._session else 'stopped'}>")
