"""The pipeline's view of an HTTP exchange, free of any engine or framework type.

Downstream, the engine parses bytes into a ``RequestHead`` and hands the pipeline an
``Exchange`` (the request body to read, the response to write). Upstream, it offers an
``UpstreamExchange`` per connection (the request to write, a ``ResponseHead`` and body to
read). Routing and filters only read ``RequestHead``; nothing above the engine ever sees a
transport or a parser.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import parse_qsl


class RequestHead:
    """A parsed, validated request line and header block.

    Header names are lower-case; values are ``str`` decoded as latin-1 (HTTP's octets,
    round-tripped byte for byte when re-encoded). Lookups that need parsing (query,
    cookies, a header map) are computed once, on first use.
    """

    __slots__ = (
        "_cookie_map",
        "_header_map",
        "_query_map",
        "client_ip",
        "headers",
        "host",
        "method",
        "path",
        "peer",
        "peer_trusted",
        "query",
        "scheme",
        "version",
    )

    def __init__(self, method: str, path: str, query: str, version: str,
                 headers: list[tuple[str, str]], host: str, client_ip: str,
                 scheme: str = "http"):
        self.method = method
        self.path = path  # origin-form path without the query
        self.query = query  # raw query string, without '?'
        self.version = version  # "1.1" or "1.0"
        self.headers = headers
        self.host = host  # lower-case, without port or trailing dot
        # The client: the TCP peer, or behind trusted proxies the address they forwarded
        # for (``upstream.forwarding.client_address``). ``peer`` stays the TCP peer.
        self.client_ip = client_ip
        self.peer = client_ip
        self.peer_trusted = False  # the peer is one of ``trusted_proxies``
        self.scheme = scheme
        self._header_map: dict[str, str] | None = None
        self._query_map: dict[str, str] | None = None
        self._cookie_map: dict[str, str] | None = None

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lower-case); repeated fields joined with ', '."""
        if self._header_map is None:
            merged: dict[str, str] = {}
            for key, value in self.headers:
                merged[key] = f"{merged[key]}, {value}" if key in merged else value
            self._header_map = merged
        return self._header_map.get(name)

    def query_param(self, name: str) -> str | None:
        if self._query_map is None:
            self._query_map = {}
            for key, value in parse_qsl(self.query, keep_blank_values=True):
                self._query_map.setdefault(key, value)
        return self._query_map.get(name)

    def cookie(self, name: str) -> str | None:
        if self._cookie_map is None:
            self._cookie_map = {}
            for key, value in self.headers:
                if key == "cookie":
                    for pair in value.split(";"):
                        cname, sep, cvalue = pair.strip().partition("=")
                        if sep:
                            # RFC 6265 allows a DQUOTE-wrapped value; jars wrap ones with '/'.
                            if len(cvalue) >= 2 and cvalue[0] == cvalue[-1] == '"':
                                cvalue = cvalue[1:-1]
                            self._cookie_map.setdefault(cname, cvalue)
        return self._cookie_map.get(name)

    def __repr__(self) -> str:
        return f"<RequestHead {self.method} {self.host}{self.target} HTTP/{self.version}>"


class Exchange(Protocol):
    """One request/response on a downstream connection, as the engine offers it.

    Reading: ``read_body()`` returns the next chunk, ``b""`` at the end; it raises
    ``ClientDisconnected`` if the client goes away or ``DownstreamError`` (408/413) when the
    body stalls or grows beyond the limit. ``body_expected`` says whether there is a body.

    Writing: ``start_response`` then any number of ``write`` (await ``drain`` when
    ``write_paused``), then ``end_response``. ``abort`` cuts the connection without a clean end
    (a truncated upstream response must never look complete downstream).
    """

    body_expected: bool
    is_websocket: bool  # a valid `Upgrade: websocket` request
    content_length: int | None
    bytes_in: int
    bytes_out: int
    response_started: bool

    @property
    def write_paused(self) -> bool: ...

    async def read_body(self) -> bytes: ...

    def start_response(self, status: int, headers: list[tuple[str, str]],
                       content_length: int | None, *, reason: str = "") -> None: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def end_response(self) -> None: ...

    def abort(self) -> None: ...

    def upgrade(self) -> Tunnel: ...

    # Only for an exchange the pipeline took with ``serve_now`` (served in callbacks):
    def finish(self) -> None: ...  # the response is over: next request, or close

    def continue_in_task(self, work: Awaitable[None]) -> None: ...  # wait after all, in a Task


class Tunnel(Protocol):
    """Raw bytes after a 101 Switching Protocols (WebSocket)."""

    async def read(self) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class ResponseHead:
    """A parsed upstream status line and header block."""

    __slots__ = ("chunked", "content_length", "headers", "keep_alive", "reason", "status")

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]],
                 content_length: int | None, chunked: bool, keep_alive: bool):
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-case names, as received
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive


class UpstreamExchange(Protocol):
    """One request/response on an upstream connection, as the engine offers it.

    Writing: ``send`` the request's bytes (``drain`` when ``write_paused``); set
    ``request_complete`` once all of it is out, and ``no_body_expected`` for a HEAD request.
    Reading: ``response_head()``, then ``read_body()`` until ``b""``; or, once
    ``response_received``, all of it at once with ``take_buffered``. Instead of awaiting,
    ``watch`` asks for one callback when the head has arrived, the connection failed, or a
    deadline passed (the fast path). Then ``release`` (back to the pool if both messages
    ended cleanly) or ``abort``.
    """

    loop: asyncio.AbstractEventLoop
    no_body_expected: bool
    request_complete: bool

    def send(self, data: bytes) -> None: ...

    @property
    def write_paused(self) -> bool: ...

    async def drain(self) -> None: ...

    async def response_head(self) -> ResponseHead: ...

    @property
    def response(self) -> ResponseHead | None: ...

    @property
    def response_received(self) -> bool: ...

    async def read_body(self, idle_timeout: float | None = None) -> bytes: ...

    def take_buffered(self) -> bytes: ...

    def watch(self, notify: Callable[[], None], deadline: float | None) -> None: ...

    def release(self) -> None: ...

    def abort(self) -> None: ...
