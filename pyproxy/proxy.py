"""The request pipeline: route → filters → split → deadline → attempt → judge/retry →
respond → account.

``Proxy.handle`` is called by the engine once per request with a ``RequestHead`` and an
``Exchange``; ``Proxy.serve_now`` takes the plain ones first and may serve them without a
Task (``fast_path.py``). One upstream attempt, and the circuit breaker's admission, are
``upstream/attempt.py``; shadow copies are ``filters/mirror.py``. Every failure is a
``ProxyError`` that knows its status and flag, and ``respond_error`` is the one place that
turns it into a response. Every request ends in exactly one ``RequestOutcome`` handed to
metrics and the access log.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine, Sequence
from functools import partial
from typing import Any, NamedTuple

from pyproxy.config.model import NO_ENDPOINTS_STATUS, Timeouts
from pyproxy.engine import wire
from pyproxy.errors import (
    ClientDisconnected,
    InjectedAbort,
    NoHealthyUpstream,
    NoRoute,
    ProxyError,
    UpstreamConnectFailure,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from pyproxy.fast_path import FastRequest
from pyproxy.filters import fault as fault_filter
from pyproxy.filters import headers as header_filter
from pyproxy.filters import mirror
from pyproxy.filters.rewrite import redirect_location, rewrite_path
from pyproxy.messages import Exchange, RequestHead, ResponseHead, Tunnel, UpstreamExchange
from pyproxy.outcome import Accounting, RequestLog, RequestOutcome
from pyproxy.resilience.retry import Failure, backoff, is_retryable
from pyproxy.runtime import CompiledBackend, CompiledRoute, EndpointState, Runtime
from pyproxy.tasks import race
from pyproxy.traffic import failover
from pyproxy.traffic.sticky import set_cookie_header
from pyproxy.upstream import attempt as upstream
from pyproxy.upstream import forwarding
from pyproxy.upstream.attempt import NO_BODY, STREAMED

Cookie = tuple[str, str] | None  # a Set-Cookie header to add to the response (stickiness)
Work = Coroutine[Any, Any, None]


class Underway(NamedTuple):
    """An attempt begun before the retry loop took the request over (by the fast path):
    its endpoint, the connection its request was sent on (None: not sent yet), its deadline."""

    endpoint: EndpointState
    conn: UpstreamExchange | None
    deadline: float | None


class Proxy:
    """The pipeline over a ``Runtime``'s current snapshot: ``handle`` and ``serve_now`` are
    its entries, the public methods below them the steps a fast request takes."""

    def __init__(self, runtime: Runtime, stats: Accounting, access_log: RequestLog, *,
                 rng: random.Random | None = None):
        self.runtime = runtime
        self.stats = stats
        self.access_log = access_log
        self.rng = rng or random.Random()
        self.mirroring = mirror.Mirroring(stats, self.rng)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, looked up once: ``asyncio.get_running_loop()`` (and
        ``current_task()`` without a loop) make a getpid() syscall on Python 3.11, to notice
        a fork, which a request in a Task paid four times (docs/performance.md, "Syscalls per
        request")."""
        loop = self._loop
        if loop is None or not loop.is_running():  # first request, or a new loop since
            loop = self._loop = asyncio.get_running_loop()
        return loop

    # ------------------------------------------------------------------ entry

    async def handle(self, head: RequestHead, exchange: Exchange) -> None:
        """Serve one request in the engine's Task (one with a body or an upgrade)."""
        route, outcome, started, debug = self._begin(head)
        await self._guarded(exchange, route, outcome, started, debug,
                            self._serve_route(head, exchange, route, debug, outcome))

    def serve_now(self, head: RequestHead, exchange: Exchange) -> None:
        """Serve a plain request (no body, no upgrade) without a Task when its route only
        forwards (``fast_path.FastRequest``); a route that does more continues in a Task."""
        route, outcome, started, debug = self._begin(head)
        if route is None or not route.forward_only:
            exchange.continue_in_task(self._guarded(
                exchange, route, outcome, started, debug,
                self._serve_route(head, exchange, route, debug, outcome)))
            return
        try:
            FastRequest(self, head, exchange, route, outcome, started, debug).start()
        except ProxyError as error:
            self.respond_error(exchange, error, outcome, debug)
            self.account(exchange, route, outcome, started)
            exchange.finish()

    def _begin(self, head: RequestHead
               ) -> tuple[CompiledRoute | None, RequestOutcome, float, bool]:
        """Route a new request on the current snapshot (it finishes on it) and open its
        outcome: (route or None, outcome, start time, debug headers on?)."""
        snapshot = self.runtime.snapshot
        assert snapshot is not None  # the server swaps one in before it listens
        started = time.perf_counter()  # uvloop's loop.time() only has millisecond steps
        trusted = snapshot.config.trusted_proxies
        if trusted:
            head.client_ip, head.peer_trusted = forwarding.client_address(head, trusted)
        outcome = _new_outcome(head)
        route = snapshot.table.match(head)
        if route is not None:
            outcome.route = route.name
            self.stats.request_started(route.name)
        return route, outcome, started, snapshot.config.debug_headers

    async def _guarded(self, exchange: Exchange, route: CompiledRoute | None,
                       outcome: RequestOutcome, started: float, debug: bool,
                       work: Work) -> None:
        """Await one request's ``work``, turning what it raises into the response
        (``respond_error``) and accounting the request when it ends."""
        try:
            await work
        except ProxyError as error:
            self.respond_error(exchange, error, outcome, debug)
        except ClientDisconnected:
            _add_flag(outcome, "DC")
        except asyncio.CancelledError:
            _add_flag(outcome, "DC")  # the client left mid-response
            raise
        finally:
            self.account(exchange, route, outcome, started)

    # ------------------------------------------------------------------ steps the fast path takes

    def pick(self, request: FastRequest) -> None:
        """Backend (honouring stickiness), admission to its service, endpoint and upstream
        request head, set on ``request``. Raises ProxyError for an answer given at once."""
        head, route = request.head, request.route
        backend, request.cookie = self._pick_backend(head, route)
        request.backend = backend
        request.outcome.backend = backend.name
        admission = backend.runtime.admission
        admission.admit_request(self.stats)
        try:
            request.endpoint = self._pick_endpoint(head, backend, ())
        except ProxyError:
            admission.release_request()
            raise
        request.request_head = self._request_head(head, route, backend, False,
                                                  request.outcome.request_id)

    def inject_abort(self, route: CompiledRoute, decision: fault_filter.FaultDecision) -> None:
        """Raise the fault's abort, if it drew one."""
        if decision.abort:
            self.stats.record_fault(route.name, "abort")
            raise InjectedAbort(status=decision.abort)

    def respond_whole(self, request: FastRequest, conn: UpstreamExchange,
                      response: ResponseHead) -> None:
        """The first attempt's response came whole and stands: relay it, end the request."""
        outcome = request.outcome
        outcome.attempts = 1
        outcome.endpoint = request.endpoint.address
        backend = request.backend
        upstream.attempt_ended(self.stats, backend.runtime.name, backend.runtime.detector,
                               request.endpoint.address, response.status)
        self._relay_whole(request.exchange, request.route, backend, conn, response,
                          request.cookie, request.debug, outcome)
        backend.runtime.admission.release_request()
        self.account(request.exchange, request.route, outcome, request.started)

    def continue_in_task(self, request: FastRequest, work: Work) -> None:
        """Wait in a Task from here on, guarded and accounted like ``handle``."""
        request.exchange.continue_in_task(self._guarded(
            request.exchange, request.route, request.outcome, request.started, request.debug,
            work))

    async def serve_after_fault(self, request: FastRequest,
                                decision: fault_filter.FaultDecision) -> None:
        """The whole route, with its fault drawn already (a delay: it has to wait)."""
        await self._serve_route(request.head, request.exchange, request.route, request.debug,
                                request.outcome, decision)

    async def resume(self, request: FastRequest) -> None:
        """Forward a request the fast path admitted and picked an endpoint for: the attempt
        under way (sent on ``request.conn``, or still to send) becomes attempt 1."""
        admission = request.backend.runtime.admission
        try:
            await self._forward_admitted(
                request.head, request.exchange, request.route, request.backend, request.cookie,
                request.debug, request.outcome, request.deadline, request.request_head,
                Underway(request.endpoint, request.conn, request.attempt_deadline))
        finally:
            admission.release_request()

    def account(self, exchange: Exchange, route: CompiledRoute | None, outcome: RequestOutcome,
                started: float) -> None:
        """The request is over: one outcome to metrics and the access log."""
        outcome.duration = time.perf_counter() - started
        outcome.bytes_in = exchange.bytes_in
        outcome.bytes_out = exchange.bytes_out
        if route is not None:
            self.stats.request_finished(route.name)
        self.stats.record(outcome)
        self.access_log.log(outcome)

    def respond_error(self, exchange: Exchange, error: ProxyError, outcome: RequestOutcome,
                      debug: bool) -> None:
        """The one place a failure becomes a response (docs/responses.md)."""
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
        if backend.redirect is not None:
            location = redirect_location(backend.redirect, head, route.matched_prefix(head.path))
            headers = header_filter.apply([("location", location)], response_rules)
            if backend.response_headers is not None:
                headers = header_filter.apply(headers, backend.response_headers)
            self._respond_local(exchange, backend.redirect.status, headers, b"", outcome)
            return
        if backend.direct_status == NO_ENDPOINTS_STATUS:
            raise NoHealthyUpstream(f"backend {backend.name} has no endpoints")
        if backend.direct_status is not None:
            self._respond_local(exchange, backend.direct_status,
                                [("content-type", "text/plain")], b"", outcome)
            return
        await self._forward(head, exchange, route, backend, cookie, debug, outcome)

    def _respond_local(self, exchange: Exchange, status: int, headers: list[tuple[str, str]],
                       body: bytes, outcome: RequestOutcome) -> None:
        outcome.status = status
        exchange.start_response(status, headers, len(body))
        exchange.write(body)
        exchange.end_response()

    async def _inject(self, route: CompiledRoute, decision: fault_filter.FaultDecision,
                      outcome: RequestOutcome) -> None:
        """Apply a fault decision: wait, then maybe abort with the configured status."""
        if decision.delay:
            self.stats.record_fault(route.name, "delay")
            _add_flag(outcome, "DI")
            await asyncio.sleep(decision.delay)
        self.inject_abort(route, decision)

    def _pick_backend(self, head: RequestHead, route: CompiledRoute
                      ) -> tuple[CompiledBackend, Cookie]:
        """The weighted draw, honouring a sticky pin while its backend's weight is > 0."""
        split = route.split
        sticky = route.sticky
        table = route.sticky_table  # set for a header-keyed sticky
        key = None
        if sticky is not None:
            if sticky.cookie is not None:
                pinned = head.cookie(sticky.cookie.name)
            else:
                key = head.header(sticky.header) if sticky.header is not None else None
                pinned = table.get(key) if key is not None and table is not None else None
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
            elif key is not None and table is not None:
                table.pin(key, backend.name)
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
                       tried: Sequence[EndpointState]) -> EndpointState:
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
        balancer = backend.balancer
        assert balancer is not None  # a backend with endpoints has a balancer
        endpoint: EndpointState = balancer.pick(endpoints, self.rng, key)
        return endpoint

    # ------------------------------------------------------------------ forwarding

    async def _forward(self, head: RequestHead, exchange: Exchange, route: CompiledRoute,
                       backend: CompiledBackend, cookie: Cookie, debug: bool,
                       outcome: RequestOutcome) -> None:
        admission = backend.runtime.admission
        admission.admit_request(self.stats)
        try:
            loop = self._running_loop()
            deadline = loop.time() + route.timeout if route.timeout else None
            websocket = exchange.is_websocket and route.route.websocket
            request_head = self._request_head(head, route, backend, websocket,
                                              outcome.request_id)
            await self._forward_admitted(head, exchange, route, backend, cookie, debug,
                                         outcome, deadline, request_head, None)
        finally:
            admission.release_request()

    async def _forward_admitted(self, head: RequestHead, exchange: Exchange,
                                route: CompiledRoute, backend: CompiledBackend, cookie: Cookie,
                                debug: bool, outcome: RequestOutcome, deadline: float | None,
                                request_head: bytes, underway: Underway | None) -> None:
        """Attempts until one's response stands (or the retries run out), then relay it."""
        loop = self._running_loop()
        service = backend.runtime
        admission = service.admission
        retrying = False  # a retry slot is held for the current attempt
        policy = route.retries
        body = await self._prepare_body(exchange, policy.buffer_bytes if policy else (
            mirror.BUFFER_BYTES if route.mirrors else 0))
        replayable = body is not STREAMED
        if route.mirrors:
            self.mirroring.send_copies(route.name, route.mirrors, head, body,
                                       partial(self._shadow, head, route, outcome.request_id))
        max_attempts = 1 + policy.attempts if policy is not None and replayable else 1
        # A policy that retries resets counts every try, a keep-alive race included: the
        # backend sees exactly the tries the policy allows (Gateway API retry conformance).
        replay_stale = policy is None or max_attempts == 1 or "reset" not in policy.retry_on
        if body is STREAMED and _arrived_whole(exchange):
            # A small body that came in with its head is sent in the same write, not by a
            # pump task one loop turn later (one write() per request fewer). Everything else
            # treats it as streamed: no retry or mirror copy gets it (``replayable`` stays
            # False), nor a keep-alive-race replay (``replay_stale``).
            body = await self._prepare_body(exchange, _WHOLE_BODY_MAX)
            replay_stale = False
        per_try = policy.per_try_timeout if policy is not None else None
        attempt_fault = route.fault if route.fault is not None and route.fault.scope == "attempt" \
            else None
        websocket = exchange.is_websocket and route.route.websocket
        is_head = head.method == "HEAD"
        tried: list[EndpointState] = []
        attempt = 0
        try:
            while True:
                attempt += 1
                outcome.attempts = attempt
                failure: Failure | None = None
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
                            admission.release_retry()
                            retrying = False
                if error is None:
                    if underway is not None:  # attempt 1 began on the fast path
                        endpoint, sent, attempt_deadline = underway
                        underway = None
                    else:
                        endpoint, sent = self._pick_endpoint(head, backend, tried), None
                        attempt_deadline = upstream.attempt_deadline(loop, deadline, per_try)
                    tried.append(endpoint)
                    outcome.endpoint = endpoint.address
                    try:
                        conn, response, pump = await upstream.attempt(
                            exchange, endpoint, admission, self.stats, request_head, body,
                            attempt_deadline, is_head, loop, sent, replay_stale=replay_stale)
                    except UpstreamConnectFailure as exc:
                        error, failure = exc, "connect-failure"
                    except UpstreamReset as exc:
                        error, failure = exc, "reset"
                    except UpstreamTimeout as exc:
                        error, failure = exc, "timeout"
                    finally:
                        if retrying:
                            admission.release_retry()
                            retrying = False
                    status = response.status if response is not None else 0
                    if response is not None:
                        failure = "status"
                    upstream.attempt_ended(self.stats, service.name, service.detector,
                                           endpoint.address, status or None)
                retryable = (failure is not None and policy is not None
                             and is_retryable(policy, failure, status))
                if (retryable and attempt < max_attempts
                        and (deadline is None or loop.time() < deadline)):
                    assert policy is not None
                    if admission.admit_retry(self.stats):
                        retrying = True
                        if conn is not None:
                            conn.abort()  # discard the failed response; never reuse its connection
                        self.stats.record_retry(route.name, backend.name)
                        await asyncio.sleep(backoff(policy, attempt, self.rng.random()))
                        continue
                    # No retry slot (max_retries or budget): the request ends with what it has.
                if error is not None:
                    if attempt > 1 and retryable:
                        _add_flag(outcome, "URX")
                    raise error
                if attempt > 1 and retryable:
                    _add_flag(outcome, "URX")
                assert conn is not None and response is not None
                try:
                    await self._relay(exchange, route, backend, conn, response, cookie, debug,
                                      outcome,
                                      websocket)
                finally:
                    # An early response: the rest of the request body is not wanted.
                    upstream.stop_pump(pump)
                return
        finally:
            if retrying:  # cancelled during a backoff: give the retry slot back
                admission.release_retry()

    async def _prepare_body(self, exchange: Exchange, limit: int) -> bytes | None:
        """Buffer a body up to ``limit`` bytes so it can be replayed (retries, mirrors);
        stream a larger one (STREAMED)."""
        if not exchange.body_expected:
            return NO_BODY
        length = exchange.content_length
        if length is None or length > limit:
            return STREAMED
        parts = []
        while chunk := await exchange.read_body():
            parts.append(chunk)
        return b"".join(parts)

    def _request_head(self, head: RequestHead, route: CompiledRoute, backend: CompiledBackend,
                      websocket: bool, request_id: str, *, shadow: bool = False) -> bytes:
        """Request line and headers for the upstream, without framing (added per attempt)."""
        host = head.header("host") or head.host
        path = head.path
        # A backend's own rewrite takes the place of the route's (Gateway API backendRef
        # URLRewrite).
        rewrite, regex = (backend.rewrite, backend.rewrite_regex) if backend.rewrite else (
            route.rewrite, route.rewrite_regex)
        if rewrite is not None:
            host = rewrite.host or host
            path = rewrite_path(rewrite, path, route.matched_prefix(path), regex)
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

    def _shadow(self, head: RequestHead, route: CompiledRoute, request_id: str,
                backend: CompiledBackend) -> mirror.Shadow:
        """Where a mirror's copy goes (called from the copy's task)."""
        return mirror.Shadow(self._pick_endpoint(head, backend, ()), backend.runtime.admission,
                             self._request_head(head, route, backend, False, request_id,
                                                shadow=True))

    # ------------------------------------------------------------------ response

    async def _relay(self, exchange: Exchange, route: CompiledRoute, backend: CompiledBackend,
                     conn: UpstreamExchange, response: ResponseHead, cookie: Cookie, debug: bool,
                     outcome: RequestOutcome, websocket: bool) -> None:
        status = response.status
        if status != 101 and conn.response_received:
            self._relay_whole(exchange, route, backend, conn, response, cookie, debug, outcome)
            return
        outcome.status = status
        headers = self._response_headers(route, backend, response, cookie, debug, outcome)
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
            idle = self._timeouts().body_idle
            while chunk := await conn.read_body(idle):
                exchange.write(chunk)
                if exchange.write_paused:
                    await exchange.drain()
            exchange.end_response()
        except BaseException:
            conn.abort()
            raise
        conn.release()

    def _relay_whole(self, exchange: Exchange, route: CompiledRoute, backend: CompiledBackend,
                     conn: UpstreamExchange, response: ResponseHead, cookie: Cookie,
                     debug: bool, outcome: RequestOutcome) -> None:
        """A response already received in full: one write, no waiting (the common case)."""
        outcome.status = response.status
        exchange.start_response(response.status,
                                self._response_headers(route, backend, response, cookie, debug,
                                                       outcome),
                                None if response.chunked else response.content_length,
                                reason=response.reason)
        exchange.write(conn.take_buffered())
        exchange.end_response()
        conn.release()

    @staticmethod
    def _response_headers(route: CompiledRoute, backend: CompiledBackend, response: ResponseHead,
                          cookie: Cookie, debug: bool, outcome: RequestOutcome
                          ) -> list[tuple[str, str]]:
        headers = forwarding.response_headers(response.headers)
        if route.headers is not None:
            headers = header_filter.apply(headers, route.headers.response)
        if backend.response_headers is not None:
            headers = header_filter.apply(headers, backend.response_headers)
        if cookie is not None:
            headers.append(cookie)
        if debug:
            headers.extend(_debug_headers(outcome))
        return headers

    def _timeouts(self) -> Timeouts:
        snapshot = self.runtime.snapshot
        assert snapshot is not None
        return snapshot.config.timeouts

    async def _tunnel(self, tunnel: Tunnel, conn: UpstreamExchange) -> None:
        """Copy bytes both ways after a 101 until either side closes, or until neither has
        sent anything for ``timeouts.tunnel_idle`` (a forgotten socket must not live forever)."""
        loop = asyncio.get_running_loop()
        idle = self._timeouts().tunnel_idle
        last = loop.time()

        async def client_to_upstream() -> None:
            nonlocal last
            while data := await tunnel.read():
                last = loop.time()
                conn.send(data)
                if conn.write_paused:
                    await conn.drain()

        async def upstream_to_client() -> None:
            nonlocal last
            while data := await conn.read_body():
                last = loop.time()
                tunnel.write(data)
                await tunnel.drain()

        async def watchdog() -> None:
            # A sleep that re-checks, not an Event: traffic moves the deadline without a
            # wake-up per chunk.
            while (wait := last + idle - loop.time()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)

        try:
            await race(client_to_upstream(), upstream_to_client(), watchdog())
        finally:
            conn.abort()
            tunnel.close()


# Largest body taken whole when it has all arrived (``_arrived_whole``); a larger one is
# streamed, to not copy it into one bytes object.
_WHOLE_BODY_MAX = 64 * 1024


def _arrived_whole(exchange: Exchange) -> bool:
    """The request's body has all been received (it came in the reads that brought its head)
    and is small: reading it now does not wait."""
    length = exchange.content_length
    return length is not None and length <= _WHOLE_BODY_MAX and exchange.bytes_in == length


def _new_outcome(head: RequestHead) -> RequestOutcome:
    return RequestOutcome(start=time.time(), method=head.method, host=head.host, path=head.path,
                          request_id=head.header("x-request-id") or forwarding.new_request_id(),
                          client=head.client_ip)


def _add_flag(outcome: RequestOutcome, flag: str) -> None:
    outcome.flags = f"{outcome.flags},{flag}" if outcome.flags else flag


def _debug_headers(outcome: RequestOutcome) -> list[tuple[str, str]]:
    return [("x-pyproxy-route", outcome.route or "-"),
            ("x-pyproxy-backend", outcome.backend or "-"),
            ("x-pyproxy-endpoint", outcome.endpoint or "-"),
            ("x-pyproxy-attempts", str(outcome.attempts)),
            ("x-pyproxy-flags", outcome.flags or "-")]
