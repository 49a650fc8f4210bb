"""The downstream HTTP/1.1 server: an asyncio Protocol around httptools (llhttp, strict).

One ``DownstreamProtocol`` per client connection. It parses requests, validates what llhttp
leaves to us (RFC 9112 rules a proxy owes: version, Host, Transfer-Encoding, target form,
Expect, limits), and hands each request to the pipeline as a ``DownstreamExchange``.
Pipelined requests are queued and answered in order. Bodies stream both ways with
backpressure: reading pauses while too much request body is buffered, and writers await
``drain()`` while the client is slow to read.

Anything the client gets wrong is answered here with a generic 4xx/5xx, nothing forwarded,
and the connection closed; parsing stops at the first bad byte so no second request can be
smuggled out of the rejected bytes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import httptools

from pyproxy.config.model import Limits, Timeouts
from pyproxy.engine import wire
from pyproxy.engine.timer import Deadline
from pyproxy.errors import ClientDisconnected, DownstreamError
from pyproxy.messages import RequestHead
from pyproxy.routing.paths import normalise_path

logger = logging.getLogger("pyproxy.engine")

# Pause reading from a client while this much of its request body waits unread.
BODY_HIGH_WATER = 256 * 1024
BODY_LOW_WATER = 64 * 1024
# Most pipelined requests parsed ahead of the one being answered: at this many, reading
# from the client pauses.
MAX_PIPELINED = 16
# Pausing only stops the next read; the bytes of the current read are parsed at once, and
# 256 KiB of tiny pipelined GETs would queue ~10 000 exchanges (tens of MB). Past this many
# the rest of the read is dropped and the connection closes after the queued answers: a
# pipelining client retries what went unanswered (RFC 9112 §9.3.2).
MAX_PIPELINED_PARSED = 4 * MAX_PIPELINED
# Unsent response bytes per client before the relay waits for drain (see READ_HIGH_WATER
# in pool.py for why 64 KiB).
WRITE_HIGH_WATER = 64 * 1024
WRITE_LOW_WATER = 16 * 1024

# reg-name or IP literal, optional port; no userinfo, no whitespace (RFC 9110 §7.2, §4.2.3).
_VALID_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(:[0-9]{0,5})?\Z")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Methods pyproxy forwards, for the Allow header of an OPTIONS it answers itself (HD-4).
_ALLOW = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"
# HTTP's optional whitespace. str.strip() would also eat \x0b, \x1c-\x1f, \x85 and \xa0,
# which llhttp does not: "Transfer-Encoding: \xa0chunked" must not read as chunked here.
_OWS = " \t"


# What a connection's one timer is waiting for.
_KEEP_ALIVE = 0  # the next request, between requests
_HEADER = 1  # the rest of a request head that has started (a total, not an idle, timeout)


class _StopParsing(Exception):
    """Raised inside a parser callback to stop reading requests without answering."""


class Listener:
    """Settings and live state shared by every connection of one listening socket."""

    def __init__(self, handler: Callable[[RequestHead, DownstreamExchange], Awaitable[None]],
                 *, timeouts: Timeouts, limits: Limits, scheme: str = "http",
                 serve_now: Callable[[RequestHead, DownstreamExchange], None] | None = None):
        self.handler = handler
        # Takes every plain request (no body, no upgrade) instead of ``handler``, without a
        # Task: it owns the exchange and calls ``finish()`` when the response is over, or
        # ``continue_in_task()`` when it has to wait.
        self.serve_now = serve_now
        self.timeouts = timeouts
        self.limits = limits
        self.scheme = scheme
        self.connections: set[DownstreamProtocol] = set()
        self.draining = False
        # Told the status of every request the engine refuses before the pipeline runs
        # (malformed, too large, too slow, over the connection cap): refusals are never
        # logged line by line, so a flood stays visible only as a count.
        self.on_reject: Callable[[int], None] | None = None
        # The loop, looked up once rather than per connection: asyncio.get_running_loop()
        # makes a getpid() syscall on Python 3.11 (its fork check), one per accepted
        # connection otherwise (docs/performance.md, "Syscalls per request").
        self._loop: asyncio.AbstractEventLoop | None = None

    def rejected(self, status: int) -> None:
        if self.on_reject is not None:
            self.on_reject(status)

    def protocol_factory(self) -> DownstreamProtocol:
        loop = self._loop
        if loop is None or not loop.is_running():  # first connection, or a new loop since
            loop = self._loop = asyncio.get_running_loop()
        return DownstreamProtocol(self, loop)

    def in_flight(self) -> int:
        return sum(1 for conn in self.connections if conn.busy)

    def close_idle(self) -> None:
        """During drain: close connections that are between requests."""
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()


class DownstreamProtocol(asyncio.Protocol):
    __slots__ = (
        "_accepting",
        "_active",
        "_begun",
        "_completed",
        "_deadline",
        "_drain_waiters",
        "_feeding",
        "_head_read",
        "_head_started",
        "_header_bytes",
        "_headers",
        "_parsing",
        "_queue",
        "_reading_paused",
        "_tunnel",
        "_url",
        "_waiting_for",
        "_write_paused",
        "busy",
        "client_ip",
        "listener",
        "loop",
        "parser",
        "transport",
    )

    def __init__(self, listener: Listener, loop: asyncio.AbstractEventLoop):
        self.listener = listener
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._parsing: DownstreamExchange | None = None  # the request whose bytes are arriving
        self._queue: deque[DownstreamExchange] = deque()  # parsed, waiting for their turn
        self._active: DownstreamExchange | None = None  # the request being answered
        self._accepting = True  # False after a Connection: close request or an error
        self._deadline = Deadline(self.loop, self._on_deadline)
        self._waiting_for = _KEEP_ALIVE
        self._feeding = False  # inside parser.feed_data (and so inside parser callbacks)
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._tunnel: _DownstreamTunnel | None = None
        self._head_started = False
        self._completed: DownstreamExchange | None = None  # the last fully parsed request
        self.busy = False
        self._begun = 0  # requests whose first byte llhttp has seen (on_message_begin)
        self._head_read = 0  # bytes read while one unfinished request head stayed unfinished

    # ------------------------------------------------------------------ connection

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # A stream connection (asyncio types it as the base class): a Transport.
        transport = self.transport = cast(asyncio.Transport, base)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        listener = self.listener
        if len(listener.connections) >= listener.limits.max_connections:
            listener.rejected(503)
            transport.write(wire.simple_response(503, b"too many connections\n", close=True))
            transport.close()
            return
        listener.connections.add(self)
        self._arm_timer(listener.timeouts.keep_alive, _KEEP_ALIVE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        self._deadline.close()
        self._accepting = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        if self._tunnel is not None:
            self._tunnel.feed_eof()
        for exchange in (self._active, self._parsing, *self._queue):
            if exchange is not None:
                exchange.client_gone()
        self._queue.clear()

    def eof_received(self) -> bool:
        """The client half-closed (shutdown(SHUT_WR)): it sends nothing more but may still
        read. Answer the requests already received in full, then close. Without this the
        transport closed at once and such a client never got its response. A request cut
        off mid-head or mid-body is an abort (FR-7): close now, as before."""
        self._accepting = False
        if (self._tunnel is not None or self._parsing is not None or self._head_started
                or not self.busy):
            return False  # asyncio closes the transport; connection_lost does the rest
        last = self._queue[-1] if self._queue else self._active
        assert last is not None  # busy: a request is being answered
        last.keep_alive = False
        return True

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def write(self, data: bytes) -> None:
        """Send ``data`` unless the connection is closing."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    async def drain(self) -> None:
        transport = self.transport
        if transport is not None and self._write_paused and not transport.is_closing():
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            # Slow-read attack (RX-7): pausing keeps memory bounded, but a client that takes
            # nothing would hold this connection and its upstream forever. Give up once the
            # write buffer has not shrunk for body_idle seconds (progress, however slow,
            # re-arms the wait, like nginx's send_timeout).
            idle = self.listener.timeouts.body_idle
            pending = transport.get_write_buffer_size()
            while True:
                done, _ = await asyncio.wait((waiter,), timeout=idle)
                if done:
                    return
                now = transport.get_write_buffer_size()
                if now >= pending:
                    transport.abort()
                    raise ClientDisconnected("client stopped reading")
                pending = now

    # ------------------------------------------------------------------ timers

    def _arm_timer(self, delay: float, waiting_for: int) -> None:
        self._waiting_for = waiting_for
        self._deadline.arm(delay)

    def _cancel_timer(self) -> None:
        self._deadline.disarm()

    def _on_deadline(self) -> None:
        if self._waiting_for == _HEADER:
            # Slowloris: the header block did not complete in time.
            self._reject(DownstreamError("request header timeout", status=408))
        elif not self.busy:
            self.close()  # idle past the keep-alive timeout

    # ------------------------------------------------------------------ parsing

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.feed(data)
            return
        if not self._accepting:
            return  # bytes after Connection: close or after an error are ignored
        in_head = self._head_started  # a request head was already unfinished before this read
        between = not in_head and self._parsing is None  # data[0] starts a new request
        begun = self._begun
        if not self._head_started and self._parsing is None:
            self._head_started = True
            self._arm_timer(self.listener.timeouts.request_header, _HEADER)
        self._feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._on_upgrade(data[upgrade.args[0]:])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _StopParsing):
                return
            if isinstance(cause, DownstreamError):
                self._reject(cause)
            else:
                self._reject(DownstreamError(f"parser callback failed: {cause!r}"))
        except httptools.HttpParserError as exc:
            if self._accepting:
                # The method, when the failing request is the only one begun in this read
                # and began at data[0] (otherwise unknown, and the answer is 400).
                method = data.lstrip(b"\r\n").split(b" ", 1)[0] \
                    if between and self._begun == begun + 1 else b""
                self._reject(DownstreamError(f"malformed request: {exc}",
                                             status=_status_for(exc, method)))
            return
        finally:
            self._feeding = False
        # httptools buffers a header field until it is complete, without any limit: a
        # client streaming one endless header line would grow memory (and re-copy it per
        # read) until the header timeout. Count the reads spent inside one unfinished head.
        if self._accepting and self._head_started:
            if in_head and self._begun == begun:
                self._head_read += len(data)  # this whole read belongs to that head
            else:
                self._head_read = 0  # a head began in this read: counted from the next one
            limits = self.listener.limits
            if self._head_read > limits.max_request_line + limits.max_header_bytes:
                self._reject(DownstreamError("header block too large", status=431))

    def on_message_begin(self) -> None:
        if not self._accepting:
            raise _StopParsing()
        if len(self._queue) >= MAX_PIPELINED_PARSED:
            self._accepting = False
            self._queue[-1].keep_alive = False
            raise _StopParsing()
        self._begun += 1
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        if not self._head_started:
            # A pipelined request starts within the same read: its header timer starts now.
            self._head_started = True
            self._arm_timer(self.listener.timeouts.request_header, _HEADER)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.listener.limits.max_request_line:
            raise DownstreamError("request line too long", status=414)

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.listener.limits
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > limits.max_header_bytes or len(self._headers) >= limits.max_headers:
            raise DownstreamError("header block too large", status=431)
        if len(name) + len(value) + 2 > limits.max_request_line:
            # One field line gets the request line's limit (nginx's large_client_header_buffers,
            # aiohttp's 8190): a 20 KB header is refused even inside a 64 KB block (RX-4).
            raise DownstreamError("header line too long", status=431)
        if self._parsing is not None:
            # llhttp reports a chunked body's trailer fields here too. They arrive after the
            # head was validated and handed on: never merge them into it (FR-8). Dropped.
            return
        # llhttp strips leading whitespace only; a value excludes trailing OWS as well
        # (RFC 9112 §5), and routing must see what the upstream will.
        self._headers.append((name.decode("latin-1").lower(),
                              value.rstrip(b" \t").decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._head_started = False
        self._cancel_timer()
        parser = self.parser
        exchange = self._validate_head(parser.get_method().decode("ascii"),
                                       parser.get_http_version())
        exchange.keep_alive = parser.should_keep_alive()
        self._parsing = exchange
        if self._active is None:
            self._start(exchange)
        else:
            self._queue.append(exchange)
            if len(self._queue) >= MAX_PIPELINED:
                self._pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        assert exchange is not None  # llhttp calls on_body only inside a request
        exchange.feed_body(body)

    def on_message_complete(self) -> None:
        exchange = self._parsing
        if exchange is None:
            return
        self._parsing = None
        self._completed = exchange
        exchange.feed_end()
        if not exchange.keep_alive:
            self._accepting = False  # answer this one, then close; ignore what follows

    def _on_upgrade(self, rest: bytes) -> None:
        """llhttp stops after an Upgrade request's head (it has already called
        on_message_complete, skipping any body): the bytes after it are not HTTP."""
        exchange = self._completed
        self._accepting = False  # whatever happens, no more HTTP requests on this connection
        if exchange is None:
            return
        # ...so the response must say so and the connection close after it. Otherwise an
        # h2c (or refused WebSocket) client is told keep-alive, sends its next request, and
        # waits on a connection that ignores it until the idle timeout.
        exchange.keep_alive = False
        if exchange.body_expected:
            # llhttp did not frame this body: refuse rather than forward a length we never read.
            exchange.fail(DownstreamError("body on an upgrade request", status=400))
        elif exchange.is_websocket:
            exchange.upgrade_data = rest
        elif rest:
            # h2c and friends are served as plain HTTP/1.1; bytes after them are refused.
            exchange.fail(DownstreamError("data after an upgrade request", status=400))

    def _validate_head(self, method: str, version: str) -> DownstreamExchange:
        """Everything llhttp accepts but a proxy must still refuse or normalise."""
        if version not in ("1.1", "1.0"):
            raise DownstreamError(f"version {version}", status=505)
        if method == "CONNECT":
            raise DownstreamError("CONNECT", status=501)
        if method == "TRACE":
            raise DownstreamError("TRACE", status=405)
        target = self._url.decode("latin-1")
        if "#" in target:
            raise DownstreamError("fragment in target")
        headers = self._headers
        host_values = []
        content_length = None
        transfer_encoding = None
        expect = None
        upgrade = None
        max_forwards = None
        for name, value in headers:
            if "_" in name:
                # X_Forwarded_For would reach some upstreams as X-Forwarded-For (Envoy REJECT).
                raise DownstreamError("underscore in header name")
            if name == "host":
                host_values.append(value)
            elif name == "content-length":
                content_length = value
            elif name == "transfer-encoding":
                if transfer_encoding is not None:
                    raise DownstreamError("repeated transfer-encoding")
                transfer_encoding = value
            elif name == "expect":
                expect = value
            elif name == "upgrade":
                upgrade = value
            elif name == "max-forwards":
                max_forwards = value
        if transfer_encoding is not None:
            if version == "1.0":
                raise DownstreamError("transfer-encoding in HTTP/1.0")
            if transfer_encoding.strip(_OWS).lower() != "chunked":
                codings = [c.strip(_OWS).lower() for c in transfer_encoding.split(",")]
                if any(not c or not _TOKEN.match(c) for c in codings):
                    raise DownstreamError("malformed transfer-encoding")
                if codings[-1] != "chunked" or codings.count("chunked") > 1:
                    # RFC 9112 §6.3 ¶4: chunked not (only once and) last means the body
                    # length cannot be determined: MUST be 400, even for "identity".
                    raise DownstreamError("chunked is not the final transfer-coding")
                # "gzip, chunked": well framed, but a coding we do not implement (§6.1 SHOULD).
                raise DownstreamError("unsupported transfer-coding", status=501)
            if content_length is not None:
                raise DownstreamError("content-length with transfer-encoding")
        if len(host_values) > 1:
            raise DownstreamError("duplicate host")
        host = host_values[0] if host_values else ""
        if not _VALID_HOST.match(host):
            raise DownstreamError("invalid host")

        scheme = self.listener.scheme
        if target.startswith("/"):
            path, _, query = target.partition("?")
        elif target == "*":
            if method != "OPTIONS":
                raise DownstreamError("asterisk-form with a method other than OPTIONS")
            path, query = "*", ""
        else:
            # absolute-form: route on its authority and replace Host with it (RFC 9112 §3.2.2)
            try:
                url = cast(_ParsedTarget, httptools.parse_url(self._url))
            except httptools.HttpParserInvalidURLError:
                raise DownstreamError("invalid request target") from None
            if url.schema is None or url.host is None:
                raise DownstreamError("invalid request target")
            if url.schema.lower() != scheme.encode():
                raise DownstreamError("scheme does not match the listener")
            if url.userinfo:
                raise DownstreamError("userinfo in request target")
            host = url.host.decode("latin-1") + (f":{url.port}" if url.port else "")
            path = (url.path or b"/").decode("latin-1")
            query = (url.query or b"").decode("latin-1")
            headers = [(n, v) for n, v in headers if n != "host"]
            headers.append(("host", host))
        if not host and version == "1.1":
            raise DownstreamError("missing host")
        # Before routing sees it, and it is what the upstream gets (routing/paths.py, HD-16).
        normalised = normalise_path(path)
        if normalised is None:
            raise DownstreamError("dot-segment in path")
        path = normalised

        body_expected = transfer_encoding is not None or (
            content_length is not None and content_length != "0")
        length = int(content_length) if content_length is not None else None
        max_body = self.listener.limits.max_body_bytes
        if max_body and length is not None and length > max_body:
            raise DownstreamError("content-length over the limit", status=413)  # before any 100
        send_continue = False
        if expect is not None and version == "1.1":
            if expect.strip(_OWS).lower() != "100-continue":
                raise DownstreamError("unsupported expectation", status=417)
            send_continue = body_expected

        answer_options = False
        if method == "OPTIONS" and max_forwards is not None \
                and max_forwards.strip(_OWS).isdigit() and max_forwards.isascii():
            # RFC 9110 §7.6.2 (HD-4): 0 means this proxy is the final recipient and answers
            # itself; otherwise the next hop gets one less. (TRACE never gets this far.)
            hops = int(max_forwards.strip(_OWS))
            if hops == 0:
                answer_options = True
            else:
                headers = [(n, str(hops - 1) if n == "max-forwards" else v) for n, v in headers]

        head = RequestHead(method, path, query, version, headers, _normalise_host(host),
                           self.client_ip, scheme)
        exchange = DownstreamExchange(self, head, body_expected, length, send_continue)
        exchange.answer_options = answer_options
        if upgrade is not None:
            exchange.is_websocket = (upgrade.strip(_OWS).lower() == "websocket"
                                     and method == "GET" and version == "1.1")
        # Only these may go to ``serve_now``, which starts forwarding while the parser is
        # still inside this request: an upgrade request can still turn out to be refused
        # (bytes after an h2c head), and a body is read by the pipeline's Task.
        exchange.plain = not body_expected and upgrade is None and not answer_options
        return exchange

    # ------------------------------------------------------------------ dispatch

    def _start(self, exchange: DownstreamExchange) -> None:
        self._active = exchange
        self.busy = True
        serve_now = self.listener.serve_now
        if serve_now is not None and exchange.plain:
            serve_now(exchange.head, exchange)
            return
        exchange.task = self.loop.create_task(self._run(exchange, self._serve(exchange)))

    async def _serve(self, exchange: DownstreamExchange) -> None:
        error = exchange._error
        if isinstance(error, DownstreamError):
            # Refused while its bytes were parsed, before the pipeline got to run (a bad
            # chunk or an oversized body in the same read as the head): answer here, so
            # not even the request head reaches an upstream.
            self.listener.rejected(error.status)
            exchange.respond_locally(error.status, error.body)
        elif exchange.answer_options:
            exchange.respond_locally(200, b"", [("allow", _ALLOW)])
        else:
            await self.listener.handler(exchange.head, exchange)

    async def _run(self, exchange: DownstreamExchange, work: Awaitable[None]) -> None:
        """Serve one exchange in a Task: whatever happens, it ends and the next one starts."""
        try:
            await work
        except asyncio.CancelledError:
            exchange.abort()  # the client went away mid-response
        except Exception:
            # The pipeline answers every error itself; reaching here is a bug. Never let
            # the connection look reusable, and say so loudly.
            exchange.abort()
            logger.exception("unhandled error while serving %r", exchange.head)
        finally:
            self._finish(exchange)

    def _finish(self, exchange: DownstreamExchange) -> None:
        if self._feeding:
            # Finished from inside a parser callback (a fast-path refusal): the parser must
            # complete this request's bytes before the next one may start.
            self.loop.call_soon(self._finish, exchange)
            return
        self._active = None
        self.busy = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        reusable = (exchange.response_done and exchange.keep_alive and exchange.body_done
                    and not exchange.aborted and not self.listener.draining)
        if not reusable:
            self._accepting = False
            transport.close()
            return
        if self._queue:
            nxt = self._queue.popleft()
            if self._reading_paused and len(self._queue) < MAX_PIPELINED // 2:
                self._resume_reading()
            self._start(nxt)
        elif self._parsing is None and not self._head_started:
            self._arm_timer(self.listener.timeouts.keep_alive, _KEEP_ALIVE)

    def _reject(self, error: DownstreamError) -> None:
        """Answer a request we refuse before (or while) parsing it, then close."""
        self._accepting = False
        self._cancel_timer()
        exchange = self._parsing
        self._parsing = None
        if exchange is not None:
            exchange.fail(error)  # its handler sees the error when it reads the body
            return
        if self._active is not None:
            # An earlier pipelined request is still being answered: let the parsed ones
            # finish, then close without answering the unparseable rest.
            (self._queue[-1] if self._queue else self._active).keep_alive = False
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.listener.rejected(error.status)
            transport.write(wire.simple_response(error.status, error.body, close=True))
            transport.close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def start_tunnel(self, exchange: DownstreamExchange) -> _DownstreamTunnel:
        self._cancel_timer()
        self._tunnel = _DownstreamTunnel(self, exchange.upgrade_data)
        self._resume_reading()
        return self._tunnel


def _status_for(exc: Exception, method: bytes = b"") -> int:
    """llhttp's errors are malformed framing or syntax (400), except two: a method that is
    a valid token llhttp does not know (501; ``method`` is b"" when unknown), and an
    HTTP version other than 1.0/1.1/2.0/0.9 (505, as _validate_head answers for 2.0)."""
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        token = method.decode("latin-1")
        return 501 if token and _TOKEN.match(token) else 400
    if str(exc) == "Invalid HTTP version":
        return 505
    return 400


class _ParsedTarget(Protocol):
    """What httptools.parse_url returns. Its stubs declare every part as present, but an
    absent part is None: typed as it is, since the compiled build checks these types."""

    schema: bytes | None
    host: bytes | None
    port: int | None
    path: bytes | None
    query: bytes | None
    userinfo: bytes | None


def _normalise_host(host: str) -> str:
    """Lower-case, no port, no trailing dot: the form routes match against."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1].lower()
    name = host.rsplit(":", 1)[0] if ":" in host else host
    return name.rstrip(".").lower()


class DownstreamExchange:
    """One request on a downstream connection: its body to read, its response to write."""

    __slots__ = (
        "_body_done",
        "_buffered",
        "_chunked_out",
        "_chunks",
        "_error",
        "_expected_out",
        "_no_body",
        "_pending_head",
        "_waiter",
        "aborted",
        "answer_options",
        "body_expected",
        "bytes_in",
        "bytes_out",
        "conn",
        "content_length",
        "head",
        "is_websocket",
        "keep_alive",
        "plain",
        "response_done",
        "response_started",
        "send_continue",
        "task",
        "upgrade_data",
    )

    def __init__(self, conn: DownstreamProtocol, head: RequestHead, body_expected: bool,
                 content_length: int | None, send_continue: bool):
        self.conn = conn
        self.head = head
        self.body_expected = body_expected
        self.content_length = content_length
        self.send_continue = send_continue
        self.keep_alive = True
        self.task: asyncio.Task[None] | None = None
        self.is_websocket = False
        self.upgrade_data = b""
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._body_done = not body_expected
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.response_started = False
        self.response_done = False
        self.aborted = False
        self._chunked_out = False
        self._no_body = False
        self._pending_head: bytes | None = None
        self._expected_out: int | None = None
        self.answer_options = False  # OPTIONS with Max-Forwards: 0, answered by the engine
        self.plain = False  # may be offered to Listener.serve_now

    # ------------------------------------------------------------------ body in (engine side)

    def feed_body(self, data: bytes) -> None:
        self.bytes_in += len(data)
        max_body = self.conn.listener.limits.max_body_bytes
        if max_body and self.bytes_in > max_body:
            raise DownstreamError("body over the limit", status=413)
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_HIGH_WATER:
            self.conn._pause_reading()
        self._wake()

    def feed_end(self) -> None:
        self._body_done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    def client_gone(self) -> None:
        if not self.response_done:
            self._error = ClientDisconnected()
            self._wake()
            if self.task is not None and not self.task.done() and self.response_started:
                # Nobody will read the rest of the response: stop the upstream side now.
                self.task.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ body in (pipeline side)

    @property
    def body_done(self) -> bool:
        return self._body_done and not self._chunks

    async def read_body(self) -> bytes:
        """The next chunk of the request body; b"" once it is complete."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._buffered < BODY_LOW_WATER and self.conn._reading_paused \
                        and len(self.conn._queue) < MAX_PIPELINED // 2:
                    self.conn._resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self._body_done:
                return b""
            if self.send_continue:
                self.send_continue = False
                self.conn.write(wire.CONTINUE_100)
            self._waiter = self.conn.loop.create_future()
            try:
                async with asyncio.timeout(self.conn.listener.timeouts.body_idle):
                    await self._waiter
            except TimeoutError:
                self.keep_alive = False
                raise DownstreamError("request body idle timeout", status=408) from None
            finally:
                self._waiter = None

    # ------------------------------------------------------------------ response out

    @property
    def write_paused(self) -> bool:
        return self.conn._write_paused

    def start_response(self, status: int, headers: list[tuple[str, str]],
                       content_length: int | None, *, reason: str = "") -> None:
        """Queue the status line and headers; framing and Connection are ours to add."""
        self.response_started = True
        head = self.head
        if self.send_continue and not self._body_done:
            # We answer before reading a body the client has not sent: it may never send it,
            # so this connection cannot carry another request.
            self.keep_alive = False
        self.send_continue = False
        if status == 101:
            self._pending_head = (wire.status_line(101, reason) + wire.header_block(headers)
                                  + b"\r\n")
            self._no_body = True
            return
        self._no_body = head.method == "HEAD" or status in (204, 304) or status < 200
        block = list(headers)
        if self._no_body:
            if content_length is not None and status != 204:
                block.append(("content-length", str(content_length)))
        elif content_length is not None:
            block.append(("content-length", str(content_length)))
            self._expected_out = content_length
        elif head.version == "1.1":
            block.append(("transfer-encoding", "chunked"))
            self._chunked_out = True
        else:
            self.keep_alive = False  # HTTP/1.0: the body ends when we close
        if not self.body_done and self.keep_alive:
            # The rest of the request body is still unread; we close after answering.
            self.keep_alive = False
        if self.conn.listener.draining:
            self.keep_alive = False
        if not self.keep_alive:
            block.append(("connection", "close"))
        elif head.version == "1.0":
            block.append(("connection", "keep-alive"))
        self._pending_head = wire.status_line(status, reason) + wire.header_block(block) + b"\r\n"

    def write(self, data: bytes) -> None:
        if self._no_body or not data:
            return
        self.bytes_out += len(data)
        if self._chunked_out:
            data = wire.chunk(data)
        pending = self._pending_head
        if pending is not None:
            self._pending_head = None
            data = pending + data  # one send for head and first bytes
        transport = self.conn.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def drain(self) -> None:
        await self.conn.drain()

    def end_response(self) -> None:
        tail = wire.LAST_CHUNK if self._chunked_out else b""
        if self._expected_out is not None and self.bytes_out != self._expected_out:
            self.abort()  # never let a short body look complete
            return
        pending = self._pending_head
        if pending is not None:
            self._pending_head = None
            tail = pending + tail
        if tail:
            self.conn.write(tail)
        self.response_done = True
        if not self.body_done:
            self.keep_alive = False

    def abort(self) -> None:
        """Cut the connection: whatever was sent stays visibly incomplete."""
        if self.response_done:
            return
        self.aborted = True
        self.keep_alive = False
        transport = self.conn.transport
        if transport is not None and not transport.is_closing():
            if self._pending_head is not None and not self.response_started:
                self._pending_head = None
            transport.close()

    def respond_locally(self, status: int, body: bytes,
                        headers: list[tuple[str, str]] | None = None) -> None:
        """A complete response from the engine itself; nothing goes upstream."""
        block = [("content-type", "text/plain")] if body else []
        self.start_response(status, block + list(headers or ()), len(body))
        self.write(body)
        self.end_response()

    def finish(self) -> None:
        """The response is over (sent, or given up on): serve the next request, or close.
        Only for an exchange ``serve_now`` took; a Task-served one finishes by itself."""
        self.conn._finish(self)

    def continue_in_task(self, work: Awaitable[None]) -> None:
        """``serve_now`` took this exchange but must now wait: run ``work`` as a Task with
        the engine's usual safety net; the exchange finishes when it ends."""
        self.task = self.conn.loop.create_task(self.conn._run(self, work))

    def upgrade(self) -> _DownstreamTunnel:
        """After a 101 was written: the connection carries raw bytes from now on."""
        pending = self._pending_head
        if pending is not None:
            self._pending_head = None
            self.conn.write(pending)
        self.response_done = True
        self.keep_alive = False
        return self.conn.start_tunnel(self)


class _DownstreamTunnel:
    """The client's side of a WebSocket (or other 101) tunnel."""

    def __init__(self, conn: DownstreamProtocol, initial: bytes):
        self.conn = conn
        self._chunks: deque[bytes] = deque([initial] if initial else [])
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        if len(self._chunks) > 64:
            self.conn._pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        while True:
            if self._chunks:
                if len(self._chunks) < 16:
                    self.conn._resume_reading()
                return self._chunks.popleft()
            if self._eof:
                return b""
            self._waiter = self.conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def write(self, data: bytes) -> None:
        if self.conn.transport is not None and not self.conn.transport.is_closing():
            self.conn.transport.write(data)

    async def drain(self) -> None:
        try:
            await self.conn.drain()
        except ClientDisconnected:
            # A client that stopped reading was cut (see DownstreamProtocol.drain); its
            # connection_lost ends the tunnel through feed_eof, with nothing left to raise.
            pass

    def close(self) -> None:
        self.conn.close()
