"""The upstream HTTP/1.1 client: one Protocol per connection and a keep-alive pool per endpoint.

A connection carries one request at a time. The response head is awaited once; body chunks
queue up to a high-water mark, after which reading from the upstream pauses until the
pipeline has written them downstream (backpressure end to end). A connection goes back to
the pool only when both messages ended cleanly; any error, early response, timeout or client
abort closes it, so a half-used connection is never handed to another request.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

from pyproxy.engine.timer import Deadline
from pyproxy.errors import (
    UpstreamConnectFailure,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from pyproxy.messages import ResponseHead

# A response body waiting to be written downstream: reading from the upstream pauses past
# this. 64 KiB (asyncio's own default) streams 1 MiB bodies as fast as 256 KiB did here
# and holds a quarter of the memory per stream.
READ_HIGH_WATER = 64 * 1024
READ_LOW_WATER = 16 * 1024
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
MAX_IDLE_PER_ENDPOINT = 256


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("upstream body stalled"))


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_body_waiter",
        "_buffered",
        "_chunks",
        "_closed",
        "_complete",
        "_deadline",
        "_drain_waiter",
        "_error",
        "_head",
        "_head_waiter",
        "_headers",
        "_notify",
        "_reading_paused",
        "_reason",
        "_write_paused",
        "forgotten",
        "in_use",
        "loop",
        "no_body_expected",
        "parser",
        "pool",
        "request_complete",
        "transport",
        "upgraded",
    )

    def __init__(self, pool: EndpointPool, loop: asyncio.AbstractEventLoop):
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        # Bare LF line ends from an upstream are accepted (RFC 9112 §2.2 MAY; nginx and
        # HAProxy do): the response is re-serialised with CRLF, never copied raw. Requests
        # from clients stay strict.
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self._closed = False
        # While idle in the pool: the idle timeout. While watched (see ``watch``): the
        # response deadline.
        self._deadline = Deadline(self.loop, self._on_deadline)
        self._notify: Callable[[], None] | None = None
        self.in_use = True  # False while idle in the pool
        self.forgotten = False  # True once the pool has seen it close
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self._headers: list[tuple[str, str]] = []
        self._reason = ""
        self._head: ResponseHead | None = None
        self._head_waiter: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.request_complete = False
        self.no_body_expected = False  # a HEAD request: the response has no body, whatever it says
        self.upgraded = False

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # A stream connection (asyncio types it as the base class): a Transport.
        transport = self.transport = cast(asyncio.Transport, base)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.pool.forget(self)
        if self.upgraded:
            self._complete = True
        elif not self._complete and self._error is None:
            if self._head is None:
                self._error = UpstreamReset("upstream closed before the response")
            elif self._head.content_length is None and not self._head.chunked:
                self._complete = True  # a close-delimited body ends with the connection
            else:
                self._error = UpstreamReset("upstream closed mid-body", status=502)
        self._wake_all()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self._push(data)
            return
        if not self.in_use:
            self._close()  # an idle connection must stay silent; bytes now would desync it
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # 101 Switching Protocols: what follows is the tunnel's first bytes, and the
            # stream only ends when the connection does (llhttp called the 101 complete).
            self.upgraded = True
            self._complete = False
            rest = data[upgrade.args[0]:]
            if rest:
                self._push(rest)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, UpstreamProtocolError)
                       else UpstreamProtocolError(str(exc)))
        except httptools.HttpParserError as exc:
            if self._complete:
                # Bytes after a complete response (longer than its Content-Length): the
                # response stands, the connection is not reused.
                self._close()
            else:
                self._fail(UpstreamProtocolError(f"malformed response: {exc}"))
        notify = self._notify
        if notify is not None and self._head is not None:
            self._notify_watcher(notify)

    # ------------------------------------------------------------------ parser callbacks

    def on_status(self, reason: bytes) -> None:
        self._reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) >= 200:
            raise UpstreamProtocolError("too many response headers")
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers = self._headers
        self._headers = []
        if 100 <= status < 200 and status != 101:
            return  # interim responses (100, 103) are not forwarded: see docs/reliability.md
        content_length = None
        chunked = False
        for name, value in headers:
            if name == "content-length":
                if content_length is not None:
                    raise UpstreamProtocolError("duplicate content-length")
                content_length = int(value)
            elif name == "transfer-encoding":
                # Only OWS is trimmed: str.strip() would also accept "\xa0chunked", which
                # llhttp does not frame as chunked.
                if chunked or value.strip(" \t").lower() != "chunked":
                    raise UpstreamProtocolError("unsupported transfer-encoding")
                chunked = True
        if status in (204, 304) or self.no_body_expected:
            chunked = False
        self._head = ResponseHead(status, self._reason, headers, content_length, chunked,
                                  self.parser.should_keep_alive())
        if self.no_body_expected:
            # llhttp cannot be told a response answers HEAD: end it here and never reuse the
            # connection, since a body may still follow on the wire.
            self._complete = True
            self._head.keep_alive = False
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        if not self._complete:
            self._push(body)

    def on_message_complete(self) -> None:
        if self._head is not None:
            self._complete = True
            self._wake_body()

    # ------------------------------------------------------------------ used by the pipeline

    def watch(self, notify: Callable[[], None], deadline: float | None) -> None:
        """Call ``notify`` once, instead of waking a waiting coroutine, when the response
        head has arrived (with as much of the body as came with it), the connection failed,
        or ``deadline`` (loop time) passed with neither: the pipeline's fast path serves
        a request in callbacks this way, without a Task."""
        self._notify = notify
        if deadline is not None:
            self._deadline.arm_at(deadline)

    def _notify_watcher(self, notify: Callable[[], None]) -> None:
        self._notify = None
        self._deadline.disarm()
        notify()

    def _on_deadline(self) -> None:
        if not self.in_use:
            self._close()  # idle in the pool for idle_timeout
        elif self._notify is not None:
            # The watcher finds no response and times the attempt out.
            self._notify_watcher(self._notify)

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self._closed:
            transport.write(data)

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    async def drain(self) -> None:
        if self._write_paused and not self._closed:
            self._drain_waiter = self.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self._error is not None:
            raise self._error

    async def response_head(self) -> ResponseHead:
        if self._head is None:
            if self._error is not None:
                raise self._error
            self._head_waiter = self.loop.create_future()
            try:
                await self._head_waiter
            finally:
                self._head_waiter = None
        return self._arrived_head()

    def _arrived_head(self) -> ResponseHead:
        # A method of its own: after the await above, the attribute is read afresh (a type
        # checker, and so a compiler that trusts it, would still see the None tested before).
        if self._head is None:
            raise self._error or UpstreamReset("upstream closed before the response")
        return self._head

    @property
    def response(self) -> ResponseHead | None:
        """The response head, once it has arrived."""
        return self._head

    @property
    def response_received(self) -> bool:
        """The whole response has arrived (and waits in the buffer)."""
        return self._complete and self._error is None and not self.upgraded

    async def read_body(self, idle_timeout: float | None = None) -> bytes:
        """The next response body chunk; b"" at the end. Raises UpstreamReset if cut short,
        UpstreamTimeout if nothing arrives for ``idle_timeout`` seconds.

        The timer exists only while actually waiting: a body already buffered costs nothing.
        """
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._reading_paused and self._buffered < READ_LOW_WATER:
                    self._resume_reading()
                return data
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            waiter = self._body_waiter = self.loop.create_future()
            timer = None
            if idle_timeout is not None:
                timer = self.loop.call_later(idle_timeout, _time_out, waiter)
            try:
                await waiter
            finally:
                self._body_waiter = None
                if timer is not None:
                    timer.cancel()

    def take_buffered(self) -> bytes:
        """Everything already received, at once (the common small-response case)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._reading_paused:
            self._resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        head = self._head
        return (not self._closed and self._complete and self.request_complete
                and self._error is None and head is not None and head.keep_alive
                and not self.upgraded and not self._chunks)

    def release(self) -> None:
        """Back to the pool if both messages ended cleanly, else closed."""
        if self.reusable:
            self._reset_exchange()
            self.pool.put_back(self)
        else:
            self._close()

    def _close(self) -> None:
        if not self._closed and self.transport is not None:
            self.transport.close()
        self._closed = True
        self.pool.forget(self)

    def abort(self) -> None:
        """Close at once (timeouts, client aborts): the upstream sees the request cut short."""
        if not self._closed and self.transport is not None:
            self.transport.abort()
        self._closed = True
        self.pool.forget(self)

    @property
    def closed(self) -> bool:
        return self._closed or self.transport is None or self.transport.is_closing()

    # ------------------------------------------------------------------ internals

    def _push(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()
        self._wake_body()

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self.transport is not None:
            self.transport.resume_reading()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._close()
        self._wake_all()

    def _wake_body(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_all(self) -> None:
        for waiter in (self._head_waiter, self._body_waiter, self._drain_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self._notify is not None:
            self._notify_watcher(self._notify)


_DEFAULT_CONTEXT: ssl_module.SSLContext | None = None


def _default_client_context() -> ssl_module.SSLContext:
    """The system trust store, loaded once (loading it costs tens of milliseconds)."""
    global _DEFAULT_CONTEXT
    if _DEFAULT_CONTEXT is None:
        _DEFAULT_CONTEXT = ssl_module.create_default_context()
    return _DEFAULT_CONTEXT


class EndpointPool:
    """Idle keep-alive connections to one endpoint, most recently used first (LIFO keeps
    the hot ones warm and lets the rest reach their idle timeout)."""

    def __init__(self, host: str, port: int, *, tls: bool = False,
                 ssl_context: ssl_module.SSLContext | None = None):
        self.host = host
        self.port = port
        self.tls = tls
        self.ssl_context = ssl_context
        self.server_name: str | None = None
        self.idle: list[UpstreamConnection] = []
        self.open = 0  # connections open to this endpoint, idle or busy
        self.connect_timeout = 2.0
        self.idle_timeout = 60.0
        # Called once per connection when it closes, and when one goes idle: the owning
        # service's circuit breaker counts connections and wakes requests waiting for one.
        self.on_connection_closed: Callable[[], None] | None = None
        self.on_connection_idle: Callable[[], None] | None = None
        # The endpoint left the config (or its DNS answer): connections still in use finish
        # their request, then close instead of idling, so they hold no breaker slot.
        self.retired = False

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection that is still open, if any."""
        while self.idle:
            conn = self.idle.pop()
            conn._deadline.disarm()
            if not conn.closed:
                conn.in_use = True
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        context = server_hostname = None
        if self.tls:
            # Verification is on unless the service's tls policy turned it off.
            context = self.ssl_context or _default_client_context()
            server_hostname = self.server_name or self.host
        self.open += 1  # counted from the attempt on: a connect in progress is a connection
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    # The loop is passed in: asyncio.get_running_loop() costs a getpid().
                    lambda: UpstreamConnection(self, loop), self.host, self.port, ssl=context,
                    server_hostname=server_hostname)
        except BaseException as exc:
            self.open -= 1
            if isinstance(exc, TimeoutError):
                raise UpstreamConnectFailure(
                    f"connect timeout to {self.host}:{self.port}") from None
            if isinstance(exc, (OSError, ssl_module.SSLError)):
                # A refused handshake (bad certificate, wrong name) is a failed connect too.
                raise UpstreamConnectFailure(
                    f"connect to {self.host}:{self.port}: {exc}") from None
            raise
        return conn

    def put_back(self, conn: UpstreamConnection) -> None:
        if self.retired or len(self.idle) >= MAX_IDLE_PER_ENDPOINT:
            conn._close()
            return
        conn.in_use = False
        conn._deadline.arm(self.idle_timeout)
        self.idle.append(conn)
        if self.on_connection_idle is not None:
            self.on_connection_idle()

    def forget(self, conn: UpstreamConnection) -> None:
        """Called on every close path; the close hook runs once per connection."""
        conn._deadline.close()
        if conn in self.idle:
            self.idle.remove(conn)
        if not conn.forgotten:
            conn.forgotten = True
            self.open -= 1
            if self.on_connection_closed is not None:
                self.on_connection_closed()

    def close(self) -> None:
        for conn in list(self.idle):
            conn._close()
        self.idle.clear()


class UpstreamPools:
    """One EndpointPool per (service, host, port, tls), kept across config reloads.

    Keyed by service too: a service's circuit breaker counts its own connections, so two
    services sharing an address never borrow each other's."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, str, int, bool], EndpointPool] = {}

    def get(self, service: str, host: str, port: int, tls: bool = False) -> EndpointPool:
        key = (service, host, port, tls)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = EndpointPool(host, port, tls=tls)
        return pool

    def retire(self, service: str, host: str, port: int, tls: bool = False) -> None:
        """The endpoint is gone: close its idle connections now and the busy ones when
        their request ends; an endpoint that comes back gets a new pool."""
        pool = self._pools.pop((service, host, port, tls), None)
        if pool is not None:
            pool.retired = True
            pool.close()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
