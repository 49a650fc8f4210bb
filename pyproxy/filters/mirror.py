"""Shadowing (a route's ``mirrors``): copies of a request sent to other backends, fire and
forget.

Each mirror is drawn on its own (``percent``). A copy needs the request body in hand: a
streamed body cannot be sent twice, so its copy is skipped (and counted). At most
``MAX_IN_FLIGHT`` copies are in flight at once, across routes; past that, or with no
endpoint to send to, a copy is dropped (and counted): shadow traffic never piles up. The
primary request never waits for a copy and a copy can never fail it. A copy's answer is
read and thrown away, all within ``TIMEOUT``; it counts as an attempt of the shadow's
service and in ``pyproxy_mirror_requests_total``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence, Sized
from typing import NamedTuple, Protocol, TypeVar

from pyproxy.config.model import Mirror
from pyproxy.errors import ProxyError
from pyproxy.messages import RequestHead, UpstreamExchange
from pyproxy.outcome import Accounting, AttemptOutcome
from pyproxy.tasks import TaskGroup
from pyproxy.upstream.attempt import STREAMED, Admission, Target

# A body this small is buffered when a mirror needs a copy and no retry policy says otherwise.
BUFFER_BYTES = 64 * 1024
MAX_IN_FLIGHT = 64
TIMEOUT = 5.0


class MirrorBackend(Protocol):
    """What shadowing reads of a compiled backend (``runtime.CompiledBackend``)."""

    @property
    def name(self) -> str: ...

    @property
    def endpoints(self) -> Sized: ...


Backend = TypeVar("Backend", bound=MirrorBackend)


class Shadow(NamedTuple):
    """Where one copy goes: the endpoint picked, its service's admission, and the copy's
    request head (unframed; ``-shadow`` appended to its Host, as Envoy and Istio do)."""

    endpoint: Target
    admission: Admission
    request_head: bytes


class Mirroring:
    """The copies in flight, for every route of one pipeline."""

    def __init__(self, stats: Accounting, rng: random.Random):
        self.stats = stats
        self.rng = rng
        self.in_flight = 0
        self._tasks = TaskGroup()

    def send_copies(self, route: str, mirrors: Sequence[tuple[Mirror, Backend]],
                    head: RequestHead, body: bytes | None,
                    prepare: Callable[[Backend], Shadow]) -> None:
        """Start the copies of one request (``body`` STREAMED: not in hand). ``prepare``
        picks the endpoint and builds the head, in the copy's own task."""
        for mirror, backend in mirrors:
            if mirror.percent < 100 and self.rng.random() * 100 >= mirror.percent:
                continue
            if body is STREAMED:
                self.stats.record_mirror(route, backend.name, "skipped_body_too_large")
                continue
            if self.in_flight >= MAX_IN_FLIGHT or not backend.endpoints:
                self.stats.record_mirror(route, backend.name, "dropped")
                continue
            self.in_flight += 1
            self._tasks.spawn(self._send(route, backend, head, body, prepare),
                              f"mirror-{route}-{backend.name}")

    async def _send(self, route: str, backend: Backend, head: RequestHead, body: bytes,
                    prepare: Callable[[Backend], Shadow]) -> None:
        shadow = None
        conn: UpstreamExchange | None = None
        status = 0
        try:
            shadow = prepare(backend)
            async with asyncio.timeout(TIMEOUT):
                conn, _ = await shadow.admission.acquire(shadow.endpoint.pool, self.stats)
                conn.no_body_expected = head.method == "HEAD"
                if body or head.header("content-length") is not None:
                    conn.send(shadow.request_head + b"content-length: %d\r\n\r\n" % len(body)
                              + body)
                else:
                    conn.send(shadow.request_head + b"\r\n")
                conn.request_complete = True
                response = await conn.response_head()
                status = response.status
                while await conn.read_body():
                    pass  # the shadow's answer is read and dropped
            conn.release()
            result = "success" if status < 500 else "failure"
        except (ProxyError, TimeoutError, OSError):
            if conn is not None:
                conn.abort()
            result = "failure"
        finally:
            self.in_flight -= 1
        if shadow is not None:
            self.stats.record_attempt(AttemptOutcome(shadow.admission.service,
                                                     shadow.endpoint.address, status))
        self.stats.record_mirror(route, backend.name, result)
