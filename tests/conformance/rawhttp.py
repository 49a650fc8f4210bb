"""Byte-level tools for the conformance suite: a raw client that parses what pyproxy answers
(so no test waits on a fixed read window), a recording HTTP/1.1 upstream that frames what it
receives with llhttp, and the standard one-route config in front of it."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import httptools

from pyproxy.config.model import Backend, Config, Route
from tests.support.backends import RawBackend
from tests.support.harness import service

# ---------------------------------------------------------------------------- client side


@dataclass
class Response:
    status: int
    head: bytes  # status line and header block as received, lower-cased
    body: bytes = b""
    complete: bool = False


@dataclass
class Result:
    responses: list[Response]  # complete responses, in order
    partial: Response | None  # a response whose head arrived but whose body did not end
    closed: bool  # pyproxy closed (EOF or reset) before the read window ended
    reset: bool
    raw: bytes
    parse_error: str = ""

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


class _ResponseReader:
    """Feeds bytes to llhttp's response parser, collecting complete messages."""

    def __init__(self):
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Response] = []
        self.current: Response | None = None
        self._head = bytearray()

    def on_message_begin(self):
        self.current = Response(0, b"")
        self._head = bytearray()

    def on_status(self, status: bytes):
        self._head += status

    def on_header(self, name: bytes, value: bytes):
        self._head += b"\r\n" + name.lower() + b": " + value.lower()

    def on_headers_complete(self):
        self.current.status = self.parser.get_status_code()
        self.current.head = bytes(self._head) + b"\r\n"

    def on_body(self, body: bytes):
        self.current.body += body

    def on_message_complete(self):
        self.current.complete = True
        self.done.append(self.current)
        self.current = None


async def send(port: int, data: bytes | list[bytes], *, responses: int = 1,
               wait_close: bool = True, timeout: float = 3.0, pause: float = 0.0) -> Result:
    """Send ``data`` on a fresh connection and read what comes back.

    Stops once ``responses`` complete responses arrived and, with ``wait_close``, the
    connection closed (or ``timeout`` passed). A list is sent piece by piece, ``pause``
    seconds apart."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await read_responses(reader, writer, data, responses=responses,
                                    wait_close=wait_close, timeout=timeout, pause=pause)
    finally:
        writer.close()


async def read_responses(reader, writer, data=b"", *, responses: int = 1,
                         wait_close: bool = True, timeout: float = 3.0,
                         pause: float = 0.0) -> Result:
    pieces = data if isinstance(data, list) else [data]
    for i, piece in enumerate(pieces):
        if i and pause:
            await asyncio.sleep(pause)
        if piece:
            writer.write(piece)
            await writer.drain()
    parsed = _ResponseReader()
    raw = bytearray()
    closed = reset = False
    error = ""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if len(parsed.done) >= responses and not wait_close:
            break
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            break
        except ConnectionError:
            closed = reset = True
            break
        if not chunk:
            closed = True
            break
        raw += chunk
        if not error:
            try:
                parsed.parser.feed_data(chunk)
            except httptools.HttpParserError as exc:
                error = str(exc)
    return Result(parsed.done, parsed.current, closed, reset, bytes(raw), error)


# ---------------------------------------------------------------------------- upstream side


@dataclass
class Received:
    """One request as the upstream framed it."""

    method: str = ""
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False


@dataclass
class UpstreamConnection:
    requests: list[Received] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    ended: str = ""  # "eof", "reset" or "parse-error" once the proxy's side ended


class RecordingUpstream:
    """A ``RawBackend`` script: every complete request gets a fixed 200 whose body is the
    request target, so the order of answers is visible. Each connection is recorded:
    what arrived, which requests were complete, and how the proxy ended it."""

    def __init__(self, *, first_delay: float = 0.0):
        self.connections: list[UpstreamConnection] = []
        self.first_delay = first_delay

    @property
    def requests(self) -> list[Received]:
        return [r for c in self.connections for r in c.requests]

    @property
    def complete(self) -> list[Received]:
        return [r for r in self.requests if r.complete]

    async def __call__(self, reader, writer) -> None:
        conn = UpstreamConnection()
        self.connections.append(conn)
        ready: list[Received] = []
        current: list[Received] = []

        class Callbacks:
            def on_message_begin(self):
                current[:] = [Received()]
                conn.requests.append(current[0])

            def on_url(self, url):
                current[0].target += url

            def on_header(self, name, value):
                current[0].headers.append((name.lower(), value))

            def on_body(self, body):
                current[0].body += body

            def on_message_complete(self):
                current[0].complete = True
                ready.append(current[0])

        parser = httptools.HttpRequestParser(Callbacks())
        answered = 0
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    conn.ended = "eof"
                    return
                conn.raw += data
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    pass
                except httptools.HttpParserError:
                    conn.ended = "parse-error"
                    return
                while ready:
                    request = ready.pop(0)
                    if answered == 0 and self.first_delay:
                        await asyncio.sleep(self.first_delay)
                    answered += 1
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(request.target), request.target))
                await writer.drain()
        except ConnectionError:
            conn.ended = "reset"


def one_route(backend, **config_kw) -> Config:
    """Every request, whatever its Host, to one service on ``backend``."""
    return Config(services={"svc": service("svc", backend)},
                  routes=(Route("main", backends=(Backend("svc"),)),), **config_kw)


async def start_recording(**kw) -> tuple[RawBackend, RecordingUpstream]:
    recorder = RecordingUpstream(**kw)
    return await RawBackend(recorder).start(), recorder


async def wait_for(predicate, timeout: float = 3.0, step: float = 0.01) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


def matches(pattern: bytes, data: bytes) -> bool:
    return re.search(pattern, data, re.S) is not None
