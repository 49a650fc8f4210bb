"""The request pipeline: route → filters → split → deadline → forward → retry → respond → account.

``Proxy.handle`` is called by the engine once per request with a ``RequestHead`` and an
``Exchange``. Every failure is a ``ProxyError`` that knows its status and flag, and
``_respond_error`` is the one place that turns it into a response. Every request ends in
exactly one ``RequestOutcome`` handed to metrics and the access log.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from pyproxy.engine import wire
from pyproxy.engine.upstream import ResponseHead, UpstreamConnection
from pyproxy.errors import (
    ClientDisconnected,
    DownstreamError,
    InjectedAbort,
    NoHealthyUpstream,
    NoRoute,
    Overflow,
    ProxyError,
    UpstreamConnectFailure,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from pyproxy.filters import fault as fault_filter
from pyproxy.filters import headers as header_filter
from pyproxy.filters.rewrite import redirect_location, rewrite_path
from pyproxy.messages import Exchange, RequestHead
from pyproxy.outcome import AttemptOutcome, RequestOutcome
from pyproxy.resilience.outlier import classify
from pyproxy.resilience.retry import backoff, is_retryable
from pyproxy.runtime import CompiledBackend, CompiledRoute, EndpointState, Runtime, ServiceRuntime
from pyproxy.traffic import failover
from pyproxy.traffic.sticky import set_cookie_header
from pyproxy.upstream import forwarding

logger = logging.getLogger("pyproxy")

_NO_BODY = b""
_STREAM = None  # marker: the request body is streamed, not buffered (and so not replayable)
# A body this small is buffered when a mirror needs a copy and no retry policy says otherwise.
MIRROR_BUFFER_BYTES = 64 * 1024
# Mirrored requests in flight at once, across routes: shadow traffic never piles up.
MAX_MIRRORS_IN_FLIGHT = 64
MIRROR_TIMEOUT = 5.0


class Proxy:
    def __init__(self, runtime: Runtime, stats, access_log, *, rng: random.Random | None = None):
        self.runtime = runtime
        self.stats = stats
        self.access_log = access_log
        self.rng = rng or random.Random()
        self.mirrors_in_flight = 0
        self._mirror_tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ entry

    async def handle(self, head: RequestHead, exchange: Exchange) -> None:
        """Serve one request in the engine's Task (one with a body or an upgrade)."""
        route, outcome, started, debug = self._begin(head)
        await self._guarded(exchange, route, outcome, started, debug,
                            self._serve_route(head, exchange, route, debug, outcome))

    def serve_now(self, head: RequestHead, exchange: Exchange) -> None:
        """Serve a plain request (no body, no upgrade) without a Task when its route only
        forwards: sent on an idle pooled connection and relayed from the connection's
        callback when the response arrives whole (``_FastRequest``). Whatever has to wait
        (a connect, a delay fault, a streamed, failed or retried response, or a route that
        does more than forward) continues in a Task on the ordinary pipeline from exactly
        where it stands."""
        route, outcome, started, debug = self._begin(head)
        if route is None or not route.forward_only:
            exchange.continue_in_task(self._guarded(
                exchange, route, outcome, started, debug,
                self._serve_route(head, exchange, route, debug, outcome)))
            return
        try:
            _FastRequest(self, head, exchange, route, outcome, started, debug).start()
        except ProxyError as error:
            self._respond_error(exchange, error, outcome, debug)
            self._account(exchange, route, outcome, started)
            exchange.finish()

    def _begin(self, head: RequestHead
               ) -> tuple[CompiledRoute | None, RequestOutcome, float, bool]:
        """Route a new request on the current snapshot (it finishes on it) and open its
        outcome: (route or None, outcome, start time, debug headers on?)."""
        snapshot = self.runtime.snapshot
        started = time.perf_counter()  # uvloop's loop.time() only has millisecond steps
        outcome = _new_outcome(head)
        route = snapshot.table.match(head)
        if route is not None:
            outcome.route = route.name
            self.stats.request_started(route.name)
        return route, outcome, started, snapshot.config.debug_headers

    async def _guarded(self, exchange: Exchange, route: CompiledRoute | None,
                       outcome: RequestOutcome, started: float, debug: bool, work) -> None:
        """Await one request's ``work``, turning what it raises into the response
        (``_respond_error``) and accounting the request when it ends."""
        try:
            await work
        except ProxyError as error:
            self._respond_error(exchange, error, outcome, debug)
        except ClientDisconnected:
            _add_flag(outcome, "DC")
        except asyncio.CancelledError:
            _add_flag(outcome, "DC")  # the client left mid-response
            raise
        finally:
            self._account(exchange, route, outcome, started)

    def _account(self, exchange: Exchange, route: CompiledRoute | None, outcome: RequestOutcome,
                 started: float) -> None:
        """The request is over: one outcome to metrics and the access log."""
        outcome.duration = time.perf_counter() - started
        outcome.bytes_in = exchange.bytes_in
        outcome.bytes_out = exchange.bytes_out
        if route is not None:
            self.stats.request_finished(route.name)
        self.stats.record(outcome)
        self.access_log.log(outcome)

    def _respond_error(self, exchange: Exchange, error: ProxyError, outcome: RequestOutcome,
                       debug: bool) -> None:
        """The one place a failure becomes a response (SPEC §3)."""
        if error.flag:
            _add_flag(outcome, error.flag)
        if exchange.response_started:
            # Headers are out: the only honest signal left is a cut connection.
            exchange.abort()
            return
        headers = [("content-type", "text/plain")]
        if error.flag == "UO":
            headers.append(("x-pyproxy-overloaded", "true"))
        if debug:
            headers.extend(_debug_headers(outcome))
        self._respond_local(exchange, error.status, headers, error.body, outcome)

    # ------------------------------------------------------------------ route actions

    async def _serve_route(self, head: RequestHead, exchange: Exchange,
                           route: CompiledRoute | None, debug: bool, outcome: RequestOutcome,
                           fault_decision: fault_filter.FaultDecision | None = None) -> None:
        """``fault_decision``: drawn already (by the fast path, which hands delays over)."""
        if route is None:
            raise NoRoute()
        # The route's response header rules apply to answers pyproxy gives itself too.
        response_rules = route.headers.response if route.headers is not None else None
        if route.direct_response is not None:
            body = route.direct_response.body.encode()
            self._respond_local(exchange, route.direct_response.status, header_filter.apply(
                [("content-type", "text/plain")], response_rules), body, outcome)
            return
        if route.redirect is not None:
            location = redirect_location(route.redirect, head, route.matched_prefix(head.path))
            self._respond_local(exchange, route.redirect.status, header_filter.apply(
                [("location", location)], response_rules), b"", outcome)
            return
        fault = route.fault
        if fault_decision is None and fault is not None and fault.scope == "request":
            fault_decision = fault_filter.decide(fault, head, self.rng.random)
        if fault_decision is not None:
            await self._inject(route, fault_decision, outcome)
        backend, cookie = self._pick_backend(head, route)
        outcome.backend = backend.name
        if backend.direct_status is not None:
            self._respond_local(exchange, backend.direct_status,
                                [("content-type", "text/plain")], b"", outcome)
            return
        await self._forward(head, exchange, route, backend, cookie, debug, outcome)

    def _respond_local(self, exchange: Exchange, status: int, headers, body: bytes,
                       outcome: RequestOutcome) -> None:
        outcome.status = status
        exchange.start_response(status, headers, len(body))
        exchange.write(body)
        exchange.end_response()

    async def _inject(self, route: CompiledRoute, decision, outcome: RequestOutcome) -> None:
        """Apply a fault decision: wait, then maybe abort with the configured status."""
        if decision.delay:
            self.stats.record_fault(route.name, "delay")
            _add_flag(outcome, "DI")
            await asyncio.sleep(decision.delay)
        self._abort_if(route, decision)

    def _abort_if(self, route: CompiledRoute, decision) -> None:
        if decision.abort:
            self.stats.record_fault(route.name, "abort")
            raise InjectedAbort(status=decision.abort)

    def _pick_backend(self, head: RequestHead, route: CompiledRoute
                      ) -> tuple[CompiledBackend, tuple[str, str] | None]:
        """The weighted draw, honouring a sticky pin while its backend's weight is > 0."""
        split = route.split
        sticky = route.sticky
        key = None
        if sticky is not None:
            if sticky.cookie is not None:
                pinned = head.cookie(sticky.cookie.name)
            else:
                key = head.header(sticky.header)
                pinned = route.sticky_table.get(key) if key is not None else None
            if pinned is not None:
                backend = route.backend_named(pinned)
                if backend is not None and split.weights[backend.index] > 0:
                    return self._fail_over_if_unavailable(route, backend), None
        backend = split.pick(self.rng.random())
        if backend is None:
            raise NoHealthyUpstream("every backend weight is 0")
        cookie = None
        if sticky is not None:  # the pin keeps the draw, even when the request fails over
            if sticky.cookie is not None:
                cookie = set_cookie_header(sticky.cookie.name, backend.name, sticky.cookie.ttl)
            elif key is not None:
                route.sticky_table.pin(key, backend.name)
        return self._fail_over_if_unavailable(route, backend), cookie

    def _fail_over_if_unavailable(self, route: CompiledRoute, backend: CompiledBackend
                                  ) -> CompiledBackend:
        """``backend``, or another of the route's backends when ``backend`` has no available
        endpoint and the route fails over (``when_backend_unavailable``, traffic/failover.py)."""
        if not route.fails_over or backend.has_available_endpoints():
            return backend
        target = failover.failover_target(route.split, backend,
                                          CompiledBackend.has_available_endpoints,
                                          self.rng.random)
        if target is None:
            return backend  # nowhere else to go: its 503 UH stands
        self.stats.record_failover(route.name, backend.name, target.name)
        return target

    def _pick_endpoint(self, head: RequestHead, backend: CompiledBackend,
                       tried: list[EndpointState]) -> EndpointState:
        endpoints = backend.runtime.available(backend.endpoints)
        if not endpoints:
            if not (backend.panic and backend.endpoints):
                raise NoHealthyUpstream(f"{backend.name} has no healthy endpoint")
            endpoints = backend.endpoints  # when_backend_unavailable: panic
        if tried and len(endpoints) > len(tried):
            # A retry goes to an endpoint not tried yet when one exists.
            endpoints = tuple(ep for ep in endpoints if ep not in tried) or endpoints
        key = None
        hash_on = backend.hash_on
        if hash_on is not None:
            if hash_on.header:
                key = head.header(hash_on.header)
            elif hash_on.cookie:
                key = head.cookie(hash_on.cookie)
            elif hash_on.source_ip:
                key = head.client_ip
        return backend.balancer.pick(endpoints, self.rng, key)

    # ------------------------------------------------------------------ forwarding

    async def _forward(self, head: RequestHead, exchange: Exchange, route: CompiledRoute,
                       backend: CompiledBackend, cookie, debug: bool,
                       outcome: RequestOutcome, first: _FastRequest | None = None) -> None:
        """``first``: the fast path's request, admitted already, whose first attempt has
        its endpoint picked and may be in flight on ``first.conn``."""
        service = backend.runtime
        if first is None:
            self._admit(service)
        try:
            await self._forward_admitted(head, exchange, route, backend, cookie, debug, outcome,
                                         first)
        finally:
            service.breaker.release_request()

    def _admit(self, service: ServiceRuntime) -> None:
        limit = service.breaker.admit_request()
        if limit is not None:
            self.stats.record_overflow(service.name, limit)
            raise Overflow(limit)

    async def _forward_admitted(self, head: RequestHead, exchange: Exchange,
                                route: CompiledRoute, backend: CompiledBackend, cookie,
                                debug: bool, outcome: RequestOutcome,
                                first: _FastRequest | None) -> None:
        loop = asyncio.get_running_loop()
        service = backend.runtime
        retrying = False  # a retry slot is held for the current attempt
        policy = route.retries
        if first is not None:
            deadline = first.deadline
        else:
            deadline = loop.time() + route.timeout if route.timeout else None
        body = await self._prepare_body(exchange, policy, bool(route.mirrors))
        replayable = body is not _STREAM
        if route.mirrors:
            self._mirror(head, route, body, outcome.request_id)
        max_attempts = 1 + policy.attempts if policy is not None and replayable else 1
        per_try = policy.per_try_timeout if policy is not None else None
        attempt_fault = route.fault if route.fault is not None and route.fault.scope == "attempt" \
            else None
        websocket = exchange.is_websocket and route.route.websocket
        request_head = first.request_head if first is not None else \
            self._request_head(head, route, backend, websocket, outcome.request_id)
        tried: list[EndpointState] = []
        attempt = 0
        try:
            while True:
                attempt += 1
                outcome.attempts = attempt
                failure = None
                status = 0
                error: ProxyError | None = None
                conn = None
                response = None
                pump = None
                if attempt_fault is not None:
                    decision = fault_filter.decide(attempt_fault, head, self.rng.random)
                    if decision.delay:
                        await self._inject(route, fault_filter.FaultDecision(delay=decision.delay),
                                           outcome)
                    if decision.abort:
                        self.stats.record_fault(route.name, "abort")
                        error, failure, status = InjectedAbort(status=decision.abort), "status", \
                            decision.abort
                        if retrying:
                            service.breaker.release_retry()
                            retrying = False
                if error is None:
                    if first is not None:  # attempt 1 began on the fast path
                        endpoint, sent, attempt_deadline = \
                            first.endpoint, first.conn, first.attempt_deadline
                        first = None
                    else:
                        endpoint, sent = self._pick_endpoint(head, backend, tried), None
                        attempt_deadline = _attempt_deadline(loop, deadline, per_try)
                    tried.append(endpoint)
                    outcome.endpoint = endpoint.address
                    try:
                        conn, response, pump = await self._attempt(
                            exchange, endpoint, service, request_head, body, attempt_deadline,
                            head.method == "HEAD", sent)
                    except UpstreamConnectFailure as exc:
                        error, failure = exc, "connect-failure"
                    except UpstreamReset as exc:
                        error, failure = exc, "reset"
                    except UpstreamTimeout as exc:
                        error, failure = exc, "timeout"
                    finally:
                        if retrying:
                            service.breaker.release_retry()
                            retrying = False
                    status = response.status if response is not None else 0
                    if response is not None:
                        failure = "status"
                    self._attempt_ended(backend, endpoint, status or None)
                if (failure is not None and attempt < max_attempts
                        and is_retryable(policy, failure, status)
                        and (deadline is None or loop.time() < deadline)):
                    limit = service.breaker.admit_retry()
                    if limit is None:
                        retrying = True
                        if conn is not None:
                            conn.abort()  # discard the failed response; never reuse its connection
                        self.stats.record_retry(route.name, backend.name)
                        await asyncio.sleep(backoff(policy, attempt, self.rng.random()))
                        continue
                    # No retry slot (max_retries or budget): the request ends with what it has.
                    self.stats.record_overflow(service.name, limit)
                exhausted = attempt > 1 and failure is not None and is_retryable(policy, failure, status)
                if error is not None:
                    if exhausted:
                        _add_flag(outcome, "URX")
                    raise error
                if exhausted:
                    _add_flag(outcome, "URX")
                try:
                    await self._relay(head, exchange, route, backend, conn, response, cookie, debug,
                                      outcome, websocket)
                finally:
                    _stop(pump)  # an early response: the rest of the body is not wanted
                return
        finally:
            if retrying:  # cancelled during a backoff: give the retry slot back
                service.breaker.release_retry()

    async def _prepare_body(self, exchange: Exchange, policy, mirrored: bool) -> bytes | None:
        """Buffer a small body so it can be replayed (retries, mirrors); stream the rest."""
        if not exchange.body_expected:
            return _NO_BODY
        limit = policy.buffer_bytes if policy is not None else (
            MIRROR_BUFFER_BYTES if mirrored else 0)
        length = exchange.content_length
        if length is None or length > limit:
            return _STREAM
        parts = []
        while chunk := await exchange.read_body():
            parts.append(chunk)
        return b"".join(parts)

    def _request_head(self, head: RequestHead, route: CompiledRoute, backend: CompiledBackend,
                      websocket: bool, request_id: str, *, shadow: bool = False) -> bytes:
        """Request line and headers for the upstream, without framing (added per attempt)."""
        host = head.header("host") or head.host
        path = head.path
        rewrite = route.rewrite
        if rewrite is not None:
            host = rewrite.host or host
            path = rewrite_path(rewrite, path, route.matched_prefix(path), route.rewrite_regex)
        if shadow:
            # As Envoy and Istio do: the shadow can tell mirrored traffic from real traffic.
            name, sep, port = host.partition(":")
            host = f"{name}-shadow{sep}{port}"
        headers = forwarding.request_headers(head, host, request_id, websocket=websocket)
        if route.headers is not None:
            headers = header_filter.apply(headers, route.headers.request)
        if backend.headers is not None:
            headers = header_filter.apply(headers, backend.headers)
        target = f"{path}?{head.query}" if head.query else path
        return f"{head.method} {target} HTTP/1.1\r\n".encode("latin-1") + wire.header_block(headers)

    async def _attempt(self, exchange: Exchange, endpoint: EndpointState,
                       service: ServiceRuntime, request_head: bytes, body: bytes | None,
                       deadline: float | None, is_head: bool,
                       sent: UpstreamConnection | None = None
                       ) -> tuple[UpstreamConnection, ResponseHead, asyncio.Task | None]:
        """Send the request to one endpoint and wait for its response head.

        ``sent``: the pooled connection the fast path already sent a bodiless request on.
        Returns the connection, the response head and the body pump (for a streamed body,
        still running while the response is relayed)."""
        endpoint.active += 1
        conn = None
        pump = None
        # The attempt's deadline: a plain loop timer that cancels this task, cheaper on the
        # hot path than asyncio.timeout's context manager (which reschedules on every use).
        timer = expired = None
        if deadline is not None:
            expired = []
            timer = asyncio.get_running_loop().call_at(deadline, _expire, asyncio.current_task(),
                                                       expired)
        try:
            if sent is None:
                conn, reused = await self._acquire(endpoint, service)
                pump = self._send(conn, exchange, request_head, body, is_head)
            else:
                conn, reused = sent, True
            try:
                response = await conn.response_head()
            except UpstreamReset:
                if not reused or pump is not None or not service.breaker.try_open_connection():
                    raise
                # The pooled connection was closed by the upstream as we picked it up
                # (keep-alive race): one fresh connection, not counted as a retry.
                conn = await self._connect(endpoint, service)
                self._send(conn, exchange, request_head, body, is_head)
                response = await conn.response_head()
            return conn, response, pump
        except asyncio.CancelledError:
            if conn is not None:
                conn.abort()
            _stop(pump)
            if not expired:
                raise  # a real cancellation (the client left): propagate it
            asyncio.current_task().uncancel()
            raise UpstreamTimeout("upstream did not answer in time") from None
        except BaseException as exc:
            if conn is not None:
                conn.abort()
            client_fault = _stop(pump)
            if client_fault is not None and isinstance(exc, ProxyError):
                raise client_fault from None  # the client cut its body short, not the upstream
            raise
        finally:
            if timer is not None:
                timer.cancel()
            endpoint.active -= 1

    async def _acquire(self, endpoint: EndpointState, service: ServiceRuntime
                       ) -> tuple[UpstreamConnection, bool]:
        """An idle pooled connection, or a new one if the service's max_connections allows,
        or a bounded wait in the pending queue for either (circuit breaking, Envoy-style)."""
        pool = endpoint.pool
        conn = pool.take_idle()
        if conn is not None:
            return conn, True
        breaker = service.breaker
        if not breaker.try_open_connection(endpoint_has_none=pool.open == 0):
            limit = breaker.enter_queue()
            if limit is not None:
                self.stats.record_overflow(service.name, limit)
                raise Overflow(limit)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + service.pending_timeout
            try:
                while True:
                    await service.wait_for_slot(max(0.0, deadline - loop.time()))
                    conn = pool.take_idle()
                    if conn is not None:
                        return conn, True
                    if breaker.try_open_connection(endpoint_has_none=pool.open == 0):
                        break
            except TimeoutError:
                self.stats.record_overflow(service.name, breaker.pending_timed_out())
                raise Overflow("pending timeout") from None
            finally:
                breaker.leave_queue()
        return await self._connect(endpoint, service), False

    @staticmethod
    async def _connect(endpoint: EndpointState, service: ServiceRuntime) -> UpstreamConnection:
        """Open a connection whose slot the breaker already counted."""
        try:
            return await endpoint.pool.connect()
        except BaseException:
            service.connection_closed()  # the slot never became a connection
            raise

    def _attempt_ended(self, backend: CompiledBackend, endpoint: EndpointState,
                       status: int | None) -> None:
        """Count one real attempt (``status`` None: no response) and feed its result to
        outlier detection."""
        self.stats.record_attempt(AttemptOutcome(backend.service.name, endpoint.address,
                                                 status or 0))
        service = backend.runtime
        detector = service.detector
        if detector is None:
            return
        event = detector.record(endpoint.address, classify(status))
        if event is not None:
            self.stats.record_ejection(service.name, event.key, event.reason)
            logger.warning("endpoint %s of %s ejected (%s) for %.0fs", event.key, service.name,
                           event.reason, detector.describe(event.key)["remaining"])

    def _send(self, conn: UpstreamConnection, exchange: Exchange, request_head: bytes,
              body: bytes | None, is_head: bool) -> asyncio.Task | None:
        """Write the request; a streamed body gets a pump task that runs alongside."""
        conn.no_body_expected = is_head
        if body is _STREAM:
            if exchange.content_length is not None:
                framing = b"content-length: %d\r\n\r\n" % exchange.content_length
            else:
                framing = b"transfer-encoding: chunked\r\n\r\n"
            conn.send(request_head + framing)
            pump = asyncio.get_running_loop().create_task(self._pump_body(conn, exchange))
            pump.add_done_callback(_retrieve)
            return pump
        if body or exchange.content_length is not None:
            conn.send(request_head + b"content-length: %d\r\n\r\n" % len(body) + body)
        else:
            conn.send(request_head + b"\r\n")
        conn.request_complete = True
        return None

    async def _pump_body(self, conn: UpstreamConnection, exchange: Exchange) -> None:
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

    # ------------------------------------------------------------------ mirroring

    def _mirror(self, head: RequestHead, route: CompiledRoute, body: bytes | None,
                request_id: str) -> None:
        """Fire-and-forget copies: drawn per mirror, bounded in flight, never awaited by the
        primary request, and never able to fail it."""
        for mirror, backend in route.mirrors:
            if mirror.percent < 100 and self.rng.random() * 100 >= mirror.percent:
                continue
            if body is _STREAM:
                self.stats.record_mirror(route.name, backend.name, "skipped_body_too_large")
                continue
            if self.mirrors_in_flight >= MAX_MIRRORS_IN_FLIGHT or not backend.endpoints:
                self.stats.record_mirror(route.name, backend.name, "dropped")
                continue
            self.mirrors_in_flight += 1
            task = asyncio.get_running_loop().create_task(
                self._send_mirror(head, route, backend, body, request_id))
            self._mirror_tasks.add(task)
            task.add_done_callback(self._mirror_tasks.discard)

    async def _send_mirror(self, head: RequestHead, route: CompiledRoute,
                           backend: CompiledBackend, body: bytes, request_id: str) -> None:
        endpoint = self._pick_endpoint(head, backend, [])
        request_head = self._request_head(head, route, backend, False, request_id,
                                          shadow=True)
        conn = None
        status = 0
        try:
            async with asyncio.timeout(MIRROR_TIMEOUT):
                conn, _ = await self._acquire(endpoint, backend.runtime)
                conn.no_body_expected = head.method == "HEAD"
                if body or head.header("content-length") is not None:
                    conn.send(request_head + b"content-length: %d\r\n\r\n" % len(body) + body)
                else:
                    conn.send(request_head + b"\r\n")
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
            self.mirrors_in_flight -= 1
        self.stats.record_attempt(AttemptOutcome(backend.service.name, endpoint.address, status))
        self.stats.record_mirror(route.name, backend.name, result)

    # ------------------------------------------------------------------ response

    async def _relay(self, head: RequestHead, exchange: Exchange, route: CompiledRoute,
                     backend: CompiledBackend, conn: UpstreamConnection, response: ResponseHead,
                     cookie, debug: bool, outcome: RequestOutcome, websocket: bool) -> None:
        status = response.status
        if status != 101 and conn.response_received:
            self._relay_whole(exchange, route, conn, response, cookie, debug, outcome)
            return
        outcome.status = status
        headers = self._response_headers(route, response, cookie, debug, outcome)
        try:
            if status == 101:
                if not websocket:
                    raise UpstreamProtocolError("101 without a WebSocket request")
                headers += [("connection", "upgrade"), ("upgrade", "websocket")]
                exchange.start_response(101, headers, None, reason=response.reason)
                await self._tunnel(exchange.upgrade(), conn)
                return
            length = None if response.chunked else response.content_length
            exchange.start_response(status, headers, length, reason=response.reason)
            idle = self.runtime.snapshot.config.timeouts.body_idle
            while chunk := await conn.read_body(idle):
                exchange.write(chunk)
                if exchange.write_paused:
                    await exchange.drain()
            exchange.end_response()
        except BaseException:
            conn.abort()
            raise
        conn.release()

    def _relay_whole(self, exchange: Exchange, route: CompiledRoute, conn: UpstreamConnection,
                     response: ResponseHead, cookie, debug: bool,
                     outcome: RequestOutcome) -> None:
        """A response already received in full: one write, no waiting (the common case)."""
        outcome.status = response.status
        exchange.start_response(response.status,
                                self._response_headers(route, response, cookie, debug, outcome),
                                None if response.chunked else response.content_length,
                                reason=response.reason)
        exchange.write(conn.take_buffered())
        exchange.end_response()
        conn.release()

    @staticmethod
    def _response_headers(route: CompiledRoute, response: ResponseHead, cookie, debug: bool,
                          outcome: RequestOutcome) -> list[tuple[str, str]]:
        headers = forwarding.response_headers(response.headers)
        if route.headers is not None:
            headers = header_filter.apply(headers, route.headers.response)
        if cookie is not None:
            headers.append(cookie)
        if debug:
            headers.extend(_debug_headers(outcome))
        return headers

    async def _tunnel(self, tunnel, conn: UpstreamConnection) -> None:
        """Copy bytes both ways after a 101 until either side closes, or until neither has
        sent anything for ``timeouts.tunnel_idle`` (a forgotten socket must not live forever)."""
        loop = asyncio.get_running_loop()
        idle = self.runtime.snapshot.config.timeouts.tunnel_idle
        last = loop.time()

        async def client_to_upstream():
            nonlocal last
            while data := await tunnel.read():
                last = loop.time()
                conn.send(data)
                if conn.write_paused:
                    await conn.drain()

        async def upstream_to_client():
            nonlocal last
            while data := await conn.read_body():
                last = loop.time()
                tunnel.write(data)
                await tunnel.drain()

        async def watchdog():
            while (wait := last + idle - loop.time()) > 0:
                await asyncio.sleep(wait)

        tasks = [asyncio.ensure_future(client_to_upstream()),
                 asyncio.ensure_future(upstream_to_client()),
                 asyncio.ensure_future(watchdog())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            conn.abort()
            tunnel.close()


class _FastRequest:
    """A request on ``Proxy.serve_now``'s path, between the callbacks that serve it.

    ``start`` picks the backend and endpoint as the pipeline would and sends the request on
    an idle pooled connection, then ``on_upstream`` runs when the connection has news: the
    response (relayed at once if it came whole and is not to be retried), a failure, or the
    deadline. Everything else is handed to ``Proxy._forward`` in a Task with this request as
    its first attempt, so retries, timeouts and streaming have one implementation.
    """

    __slots__ = (
        "attempt_deadline",
        "backend",
        "conn",
        "cookie",
        "deadline",
        "debug",
        "endpoint",
        "exchange",
        "head",
        "outcome",
        "proxy",
        "request_head",
        "route",
        "started",
    )

    def __init__(self, proxy: Proxy, head: RequestHead, exchange: Exchange,
                 route: CompiledRoute, outcome: RequestOutcome, started: float, debug: bool):
        self.proxy = proxy
        self.head = head
        self.exchange = exchange
        self.route = route
        self.outcome = outcome
        self.started = started
        self.debug = debug
        self.conn: UpstreamConnection | None = None

    def start(self) -> None:
        """Raises ProxyError for an answer given at once (fault abort, overflow, no endpoint)."""
        proxy, head, route = self.proxy, self.head, self.route
        if route.fault is not None:  # a forward-only route's fault is request-scoped
            decision = fault_filter.decide(route.fault, head, proxy.rng.random)
            if decision.delay:
                self._continue(proxy._serve_route(head, self.exchange, route, self.debug,
                                                  self.outcome, decision))
                return
            proxy._abort_if(route, decision)
        backend, self.cookie = proxy._pick_backend(head, route)
        self.backend = backend
        self.outcome.backend = backend.name
        service = backend.runtime
        proxy._admit(service)
        try:
            endpoint = self.endpoint = proxy._pick_endpoint(head, backend, ())
        except ProxyError:
            service.breaker.release_request()
            raise
        conn = self.conn = endpoint.pool.take_idle()
        # A pooled connection knows the loop; asyncio.get_running_loop() costs a getpid().
        loop = conn.loop if conn is not None else asyncio.get_running_loop()
        self.deadline = loop.time() + route.timeout if route.timeout else None
        self.attempt_deadline = _attempt_deadline(
            loop, self.deadline, route.retries.per_try_timeout if route.retries else None)
        self.request_head = proxy._request_head(head, route, backend, False,
                                                self.outcome.request_id)
        if conn is None:  # a connect has to be awaited
            self._continue(proxy._forward(head, self.exchange, route, backend, self.cookie,
                                          self.debug, self.outcome, first=self))
            return
        endpoint.active += 1
        proxy._send(conn, self.exchange, self.request_head, _NO_BODY, head.method == "HEAD")
        conn.watch(self.on_upstream, self.attempt_deadline)

    def on_upstream(self) -> None:
        """The connection's news: the response head (maybe the whole response), a failure,
        or the attempt's deadline."""
        proxy, conn, route, outcome = self.proxy, self.conn, self.route, self.outcome
        self.endpoint.active -= 1
        response = conn.response
        try:
            if (response is None or response.status == 101 or not conn.response_received
                    or (route.retries is not None
                        and is_retryable(route.retries, "status", response.status))):
                self._continue(proxy._forward(self.head, self.exchange, route, self.backend,
                                              self.cookie, self.debug, outcome, first=self))
                return
            outcome.attempts = 1
            outcome.endpoint = self.endpoint.address
            proxy._attempt_ended(self.backend, self.endpoint, response.status)
            proxy._relay_whole(self.exchange, route, conn, response, self.cookie, self.debug,
                               outcome)
            self.backend.runtime.breaker.release_request()
            proxy._account(self.exchange, route, outcome, self.started)
        except Exception:
            # A bug; this runs in the connection's callback, where nobody else would see it.
            logger.exception("unhandled error while serving %r", self.head)
            conn.abort()
            self.exchange.abort()
        self.exchange.finish()

    def _continue(self, work) -> None:
        """Wait in a Task from here on, guarded and accounted like ``Proxy.handle``."""
        self.exchange.continue_in_task(self.proxy._guarded(
            self.exchange, self.route, self.outcome, self.started, self.debug, work))


def _new_outcome(head: RequestHead) -> RequestOutcome:
    return RequestOutcome(start=time.time(), method=head.method, host=head.host, path=head.path,
                          request_id=head.header("x-request-id") or forwarding.new_request_id())


def _retrieve(task: asyncio.Task) -> None:
    """Mark a pump's failure as seen: ``_stop`` reports it where it matters."""
    if not task.cancelled():
        task.exception()


def _stop(pump: asyncio.Task | None) -> BaseException | None:
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


def _expire(task: asyncio.Task, expired: list) -> None:
    expired.append(True)
    task.cancel()


def _attempt_deadline(loop, deadline: float | None, per_try: float | None) -> float | None:
    if per_try is None:
        return deadline
    try_deadline = loop.time() + per_try
    return try_deadline if deadline is None else min(deadline, try_deadline)


def _add_flag(outcome: RequestOutcome, flag: str) -> None:
    outcome.flags = f"{outcome.flags},{flag}" if outcome.flags else flag


def _debug_headers(outcome: RequestOutcome) -> list[tuple[str, str]]:
    return [("x-pyproxy-route", outcome.route or "-"),
            ("x-pyproxy-backend", outcome.backend or "-"),
            ("x-pyproxy-endpoint", outcome.endpoint or "-"),
            ("x-pyproxy-attempts", str(outcome.attempts)),
            ("x-pyproxy-flags", outcome.flags or "-")]
