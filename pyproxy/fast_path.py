"""The fast path: a plain request served in callbacks, without a Task (docs/performance.md).

``Proxy.serve_now`` hands every bodiless, non-upgrade request whose route only forwards to
a ``FastRequest``. ``start`` draws the fault, lets the pipeline pick the backend and the
endpoint (``Pipeline.pick``), and sends the request on an idle pooled connection; the
connection then calls ``on_upstream`` once: with the response head (and whatever of the
body came with it), a failure, or the deadline. A response that came whole and is not to be
retried is relayed right there (``Pipeline.respond_whole``).

Everything else — no idle connection, a delay fault, a streamed, failed or retryable
response — continues in a Task on the ordinary pipeline (``Pipeline.resume``), which takes
the attempt already under way over as its first: retries, timeouts, streaming and the
keep-alive race have one implementation.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from typing import Any, Protocol

from pyproxy.filters import fault as fault_filter
from pyproxy.messages import Exchange, RequestHead, ResponseHead, UpstreamExchange
from pyproxy.outcome import RequestOutcome
from pyproxy.resilience.retry import is_retryable
from pyproxy.runtime import CompiledBackend, CompiledRoute, EndpointState
from pyproxy.upstream.attempt import NO_BODY, attempt_deadline, send

logger = logging.getLogger("pyproxy")


class Pipeline(Protocol):
    """The steps of the pipeline (``proxy.Proxy``) a fast request takes."""

    rng: random.Random

    def pick(self, request: FastRequest) -> None:
        """Backend, admission, endpoint and upstream request head; raises ProxyError."""

    def inject_abort(self, route: CompiledRoute, decision: fault_filter.FaultDecision) -> None:
        """Raise the fault's abort, if it drew one."""

    def respond_whole(self, request: FastRequest, conn: UpstreamExchange,
                      response: ResponseHead) -> None:
        """Relay a whole response and end the request."""

    def continue_in_task(self, request: FastRequest,
                         work: Coroutine[Any, Any, None]) -> None:
        """Carry on in a Task, guarded and accounted as any request."""

    async def serve_after_fault(self, request: FastRequest,
                                decision: fault_filter.FaultDecision) -> None:
        """The whole route, with the fault drawn already."""

    async def resume(self, request: FastRequest) -> None:
        """Forward, taking the attempt under way over as the first."""


class FastRequest:
    """A request on the fast path, between the callbacks that serve it. Its fields are what
    the pipeline resumes from."""

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
        "pipeline",
        "request_head",
        "route",
        "started",
    )

    # Set by Pipeline.pick:
    backend: CompiledBackend
    cookie: tuple[str, str] | None
    endpoint: EndpointState
    request_head: bytes
    # Set by start, once an endpoint is picked (loop time; None: no deadline):
    deadline: float | None
    attempt_deadline: float | None

    def __init__(self, pipeline: Pipeline, head: RequestHead, exchange: Exchange,
                 route: CompiledRoute, outcome: RequestOutcome, started: float, debug: bool):
        self.pipeline = pipeline
        self.head = head
        self.exchange = exchange
        self.route = route
        self.outcome = outcome
        self.started = started
        self.debug = debug
        # The pooled connection the request was sent on; None: not sent (a connect awaits).
        self.conn: UpstreamExchange | None = None

    def start(self) -> None:
        """Raises ProxyError for an answer given at once (fault abort, overflow, no endpoint)."""
        pipeline, head, route = self.pipeline, self.head, self.route
        if route.fault is not None:  # a forward-only route's fault is request-scoped
            decision = fault_filter.decide(route.fault, head, pipeline.rng.random)
            if decision.delay:
                pipeline.continue_in_task(self, pipeline.serve_after_fault(self, decision))
                return
            pipeline.inject_abort(route, decision)
        pipeline.pick(self)
        endpoint = self.endpoint
        conn = self.conn = endpoint.pool.take_idle()
        # A pooled connection knows the loop; asyncio.get_running_loop() costs a getpid().
        loop = conn.loop if conn is not None else asyncio.get_running_loop()
        deadline = self.deadline = loop.time() + route.timeout if route.timeout else None
        per_try = route.retries.per_try_timeout if route.retries else None
        self.attempt_deadline = deadline if per_try is None else \
            attempt_deadline(loop, deadline, per_try)
        if conn is None:  # a connect has to be awaited
            pipeline.continue_in_task(self, pipeline.resume(self))
            return
        endpoint.active += 1
        send(conn, self.exchange, self.request_head, NO_BODY, head.method == "HEAD")
        conn.watch(self.on_upstream, self.attempt_deadline)

    def on_upstream(self) -> None:
        """The connection's news: the response head (maybe the whole response), a failure,
        or the attempt's deadline."""
        pipeline, conn, route = self.pipeline, self.conn, self.route
        assert conn is not None  # watched only once sent
        self.endpoint.active -= 1
        response = conn.response
        try:
            if (response is None or response.status == 101 or not conn.response_received
                    or (route.retries is not None
                        and is_retryable(route.retries, "status", response.status))):
                pipeline.continue_in_task(self, pipeline.resume(self))
                return
            pipeline.respond_whole(self, conn, response)
        except Exception:
            # A bug; this runs in the connection's callback, where nobody else would see it.
            logger.exception("unhandled error while serving %r", self.head)
            conn.abort()
            self.exchange.abort()
        self.exchange.finish()
