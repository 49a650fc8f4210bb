"""One upstream attempt, and the admission that decides whether it may have a connection.

An attempt: take an idle pooled connection or open one (``Admission.acquire``), send the
request (a buffered body at once, a streamed one pumped alongside), await the response head
within the attempt's deadline, and count it (``attempt_ended``: one attempt in the metrics,
one result for outlier detection). Whether to retry, and relaying the response, are the
pipeline's (``proxy.py``).

Admission is circuit breaking with Envoy's semantics, decided here and nowhere else; the
counters themselves are ``resilience.breaker.CircuitBreaker``:

- a request takes a ``max_requests`` slot (``admit_request``) or is answered 503 ``UO`` at
  once; it gives the slot back when it ends (``release_request``).
- a connection: an idle pooled one is reused; else a new one is opened if
  ``max_connections`` allows (an endpoint's first connection always may); else the request
  waits in the service's pending queue — 503 ``UO`` if ``max_pending_requests`` are waiting
  already, or if no connection is released or closed within ``pending_timeout``.
- a retry takes a retry slot (``max_retries`` and the retry budget); refused, the request
  ends with the failure it already has (no 503 ``UO``) and the refusal is counted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from pyproxy.config.model import ConnectionPool
from pyproxy.engine import wire
from pyproxy.engine.pool import EndpointPool
from pyproxy.errors import (
    ClientDisconnected,
    DownstreamError,
    Overflow,
    ProxyError,
    UpstreamReset,
    UpstreamTimeout,
)
from pyproxy.messages import Exchange, ResponseHead, UpstreamExchange
from pyproxy.outcome import Accounting, AttemptOutcome
from pyproxy.resilience.breaker import CircuitBreaker
from pyproxy.resilience.budget import RetryBudget
from pyproxy.resilience.outlier import OutlierDetector, classify

logger = logging.getLogger("pyproxy")

# The request body to send: bytes (buffered, and so replayable), or STREAMED (read from the
# client while it is sent, once).
STREAMED = None
NO_BODY = b""


class Target(Protocol):
    """What an attempt needs of an endpoint's live state (``runtime.EndpointState``)."""

    address: str
    pool: EndpointPool
    active: int  # attempts in flight (least_request balances on it)


class Admission:
    """One service's admission: its circuit-breaker counters and the requests waiting in
    its pending queue for a connection. The same object across reloads while the service
    exists; its pools call ``connection_closed`` and ``slot_freed``."""

    __slots__ = ("_waiters", "breaker", "pending_timeout", "release_request", "service")

    def __init__(self, service: str, limits: ConnectionPool):
        self.service = service
        # Retries can never amplify an outage: 20% of active requests, at least 3 at once.
        self.breaker = CircuitBreaker(limits, RetryBudget())
        self.pending_timeout = limits.pending_timeout
        self._waiters: list[asyncio.Future[None]] = []
        # Give a request's slot back when it ends. The breaker's own method, bound once:
        # every request calls it, a wrapper would cost a call each time.
        self.release_request = self.breaker.release_request

    def update(self, limits: ConnectionPool) -> None:
        """A reload: new limits, the same counters and queue."""
        self.breaker.set_limits(limits, RetryBudget())
        self.pending_timeout = limits.pending_timeout

    # ------------------------------------------------------------------ requests and retries

    def admit_request(self, stats: Accounting) -> None:
        """Take a request slot, or raise ``Overflow`` (503 UO)."""
        limit = self.breaker.admit_request()
        if limit is not None:
            stats.record_overflow(self.service, limit)
            raise Overflow(limit)

    def admit_retry(self, stats: Accounting) -> bool:
        """Take a retry slot; False (the refusal counted) when the request may not retry."""
        limit = self.breaker.admit_retry()
        if limit is None:
            return True
        stats.record_overflow(self.service, limit)
        return False

    def release_retry(self) -> None:
        self.breaker.release_retry()

    # ------------------------------------------------------------------ connections

    async def acquire(self, pool: EndpointPool, stats: Accounting
                      ) -> tuple[UpstreamExchange, bool]:
        """An idle pooled connection, or a new one if ``max_connections`` allows, or a
        bounded wait in the pending queue for either. Returns it and whether it was reused."""
        conn = pool.take_idle()
        if conn is not None:
            return conn, True
        breaker = self.breaker
        if not breaker.try_open_connection(endpoint_has_none=pool.open == 0):
            limit = breaker.enter_queue()
            if limit is not None:
                stats.record_overflow(self.service, limit)
                raise Overflow(limit)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.pending_timeout
            try:
                while True:
                    await self._wait_for_slot(max(0.0, deadline - loop.time()))
                    conn = pool.take_idle()
                    if conn is not None:
                        return conn, True
                    if breaker.try_open_connection(endpoint_has_none=pool.open == 0):
                        break
            except TimeoutError:
                stats.record_overflow(self.service, breaker.pending_timed_out())
                raise Overflow("pending timeout") from None
            finally:
                breaker.leave_queue()
        return await self.connect(pool), False

    def may_reconnect(self) -> bool:
        """Count one more connection if ``max_connections`` allows it (no waiting)."""
        return self.breaker.try_open_connection()

    async def connect(self, pool: EndpointPool) -> UpstreamExchange:
        """Open a connection whose slot was counted already."""
        try:
            return await pool.connect()
        except BaseException:
            self.connection_closed()  # the slot never became a connection
            raise

    def connection_closed(self) -> None:
        self.breaker.connection_closed()
        self.slot_freed()

    def slot_freed(self) -> None:
        """A connection went back to a pool or closed: wake the first waiting request."""
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _wait_for_slot(self, seconds: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def __repr__(self) -> str:
        return f"<Admission {self.service} waiting={len(self._waiters)} {self.breaker!r}>"


# ---------------------------------------------------------------------- the attempt


async def attempt(exchange: Exchange, endpoint: Target, admission: Admission,
                  stats: Accounting, request_head: bytes, body: bytes | None,
                  deadline: float | None, is_head: bool, loop: asyncio.AbstractEventLoop,
                  sent: UpstreamExchange | None = None, *, replay_stale: bool = True
                  ) -> tuple[UpstreamExchange, ResponseHead, asyncio.Task[None] | None]:
    """Send the request to one endpoint and wait for its response head.

    ``sent``: the pooled connection the fast path already sent a bodiless request on.
    ``replay_stale``: a pooled connection closed with no answer is tried once more on a
    fresh one, uncounted (keep-alive race). False when the route's retry policy retries
    resets itself: each try must then count against its attempts (GEP-1731).
    ``loop``: the running loop, passed in because looking it up costs a getpid() syscall.
    Returns the connection, the response head and the body pump (for a streamed body,
    still running while the response is relayed)."""
    endpoint.active += 1
    conn = None
    pump = None
    # The attempt's deadline: a plain loop timer that cancels this task, cheaper on the
    # hot path than asyncio.timeout's context manager (which reschedules on every use).
    timer = None
    expired: list[bool] = []
    task = asyncio.current_task(loop)
    assert task is not None  # an attempt is always awaited inside a Task
    if deadline is not None:
        timer = loop.call_at(deadline, _expire, task, expired)
    try:
        if sent is None:
            conn, reused = await admission.acquire(endpoint.pool, stats)
            pump = send(conn, exchange, request_head, body, is_head)
        else:
            conn, reused = sent, True
        try:
            response = await conn.response_head()
        except UpstreamReset:
            if (not replay_stale or not reused or pump is not None
                    or not admission.may_reconnect()):
                raise
            # The pooled connection was closed by the upstream as we picked it up
            # (keep-alive race): one fresh connection, not counted as a retry.
            conn = await admission.connect(endpoint.pool)
            send(conn, exchange, request_head, body, is_head)
            response = await conn.response_head()
        return conn, response, pump
    except asyncio.CancelledError:
        if conn is not None:
            conn.abort()
        stop_pump(pump)
        if not expired:
            raise  # a real cancellation (the client left): propagate it
        task.uncancel()
        raise UpstreamTimeout("upstream did not answer in time") from None
    except BaseException as exc:
        if conn is not None:
            conn.abort()
        client_fault = stop_pump(pump)
        if client_fault is not None and isinstance(exc, ProxyError):
            raise client_fault from None  # the client cut its body short, not the upstream
        raise
    finally:
        if timer is not None:
            timer.cancel()
        endpoint.active -= 1


def attempt_deadline(loop: asyncio.AbstractEventLoop, deadline: float | None,
                     per_try: float | None) -> float | None:
    """The loop time one attempt must end by: the request's deadline or the per-try
    timeout, whichever comes first."""
    if per_try is None:
        return deadline
    try_deadline = loop.time() + per_try
    return try_deadline if deadline is None else min(deadline, try_deadline)


def send(conn: UpstreamExchange, exchange: Exchange, request_head: bytes,
         body: bytes | None, is_head: bool) -> asyncio.Task[None] | None:
    """Write the request (``request_head`` is unframed: the framing is added here); a
    streamed body gets a pump task that runs alongside."""
    conn.no_body_expected = is_head
    if body is STREAMED:
        if exchange.content_length is not None:
            framing = b"content-length: %d\r\n\r\n" % exchange.content_length
        else:
            framing = b"transfer-encoding: chunked\r\n\r\n"
        conn.send(request_head + framing)
        # Owned by the attempt, which stops it (``stop_pump``): not background work.
        pump = conn.loop.create_task(_pump_body(conn, exchange))
        pump.add_done_callback(_retrieve)
        return pump
    if body or exchange.content_length is not None:
        conn.send(request_head + b"content-length: %d\r\n\r\n" % len(body) + body)
    else:
        conn.send(request_head + b"\r\n")
    conn.request_complete = True
    return None


async def _pump_body(conn: UpstreamExchange, exchange: Exchange) -> None:
    """Stream the client's body upstream. If the client stops short, the upstream
    connection is aborted: a truncated request must never look complete (FR-7)."""
    chunked = exchange.content_length is None
    try:
        while chunk := await exchange.read_body():
            conn.send(wire.chunk(chunk) if chunked else chunk)
            if conn.write_paused:
                await conn.drain()
        if chunked:
            conn.send(wire.LAST_CHUNK)
        conn.request_complete = True
    except (ClientDisconnected, DownstreamError):
        conn.abort()
        raise


def stop_pump(pump: asyncio.Task[None] | None) -> BaseException | None:
    """Cancel a body pump that is still running; return the client's fault if that is
    why it ended (a stalled, oversized or abandoned body), which then explains the failure."""
    if pump is None:
        return None
    if not pump.done():
        pump.cancel()
        return None
    if not pump.cancelled():
        exc = pump.exception()
        if isinstance(exc, (ClientDisconnected, DownstreamError)):
            return exc
    return None


def attempt_ended(stats: Accounting, service: str, detector: OutlierDetector | None,
                  endpoint: str, status: int | None) -> None:
    """Count one real attempt (``status`` None: no response) and feed its result to
    outlier detection."""
    stats.record_attempt(AttemptOutcome(service, endpoint, status or 0))
    if detector is None:
        return
    event = detector.record(endpoint, classify(status))
    if event is not None:
        stats.record_ejection(service, event.key, event.reason)
        logger.warning("endpoint %s of %s ejected (%s) for %.0fs", event.key, service,
                       event.reason, detector.describe(event.key)["remaining"])


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a pump's failure as seen: ``stop_pump`` reports it where it matters."""
    if not task.cancelled():
        task.exception()


def _expire(task: asyncio.Task[object], expired: list[bool]) -> None:
    expired.append(True)
    task.cancel()
