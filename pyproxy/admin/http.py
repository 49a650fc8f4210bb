"""The admin API's HTTP layer: pyproxy's own engine, a route table and JSON responses.

The admin is a dozen JSON endpoints and four static files, served by every proxy process.
It runs on the data plane's engine (httptools/llhttp, strict, with the same request
validation and limits) instead of a web framework: one HTTP/1.1 implementation reads every
byte the process receives, and each process stays small — aiohttp's server costs ~16 MiB of
resident memory per process, more than the rest of the proxy's own code.

``AdminApp`` holds the routes, the middlewares and the state handlers read
(``request.app[KEY]``); ``start_admin`` serves it and returns an ``AdminServer`` to stop.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, overload
from urllib.parse import unquote

from pyproxy.config.model import Limits, Timeouts
from pyproxy.engine.server import Listener
from pyproxy.errors import ClientDisconnected, DownstreamError
from pyproxy.messages import Exchange, RequestHead

# Admin bodies are small JSON objects; larger ones are refused by the engine with 413.
MAX_BODY_BYTES = 1024 * 1024


class AdminRequest:
    __slots__ = ("app", "body", "head", "match_info")

    def __init__(self, head: RequestHead, body: bytes, app: AdminApp):
        self.head = head
        self.body = body
        self.match_info: dict[str, str] = {}  # the route's {name} segments, percent-decoded
        self.app = app

    @property
    def method(self) -> str:
        return self.head.method

    @property
    def path(self) -> str:
        return self.head.path

    @overload
    def header(self, name: str) -> str | None: ...
    @overload
    def header(self, name: str, default: str) -> str: ...

    def header(self, name: str, default: str | None = None) -> str | None:
        value = self.head.header(name.lower())
        return default if value is None else value

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-case (absent: application/octet-stream,
        as RFC 9110 §8.3 lets a recipient assume)."""
        value = self.head.header("content-type")
        if value is None:
            return "application/octet-stream"
        return value.split(";", 1)[0].strip(" \t").lower()

    @property
    def has_body(self) -> bool:
        return bool(self.body)

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not JSON."""
        return json.loads(self.body)


class AdminResponse:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int = 200, body: bytes = b"",
                 headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = headers or {}


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> AdminResponse:
    return AdminResponse(status, json.dumps(data).encode(),
                         {"Content-Type": "application/json; charset=utf-8", **(headers or {})})


class HTTPError(Exception):
    """No route for the path (404) or for the method (405, with the methods that are)."""

    def __init__(self, status: int, allow: tuple[str, ...] = ()):
        super().__init__(status)
        self.status = status
        self.allow = allow


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]
Middleware = Callable[[AdminRequest, Handler], Awaitable[AdminResponse]]

# ``{name}`` matches one path segment; ``{name:regex}`` matches the regex.
_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^{}]+))?\}")


class Route:
    __slots__ = ("handler", "method", "pattern")

    def __init__(self, method: str, path: str, handler: Handler):
        self.method = method
        self.handler = handler
        regex, last = [], 0
        for placeholder in _PLACEHOLDER.finditer(path):
            regex.append(re.escape(path[last:placeholder.start()]))
            name, custom = placeholder.groups()
            regex.append(f"(?P<{name}>{custom or '[^/]+'})")
            last = placeholder.end()
        regex.append(re.escape(path[last:]))
        self.pattern = re.compile("".join(regex) + r"\Z")


def get(path: str, handler: Handler) -> Route:
    return Route("GET", path, handler)


def post(path: str, handler: Handler) -> Route:
    return Route("POST", path, handler)


def put(path: str, handler: Handler) -> Route:
    return Route("PUT", path, handler)


def delete(path: str, handler: Handler) -> Route:
    return Route("DELETE", path, handler)


class AdminApp:
    """Routes, middlewares (outermost first) and the state handlers read by key."""

    def __init__(self, routes: list[Route], middlewares: list[Middleware]):
        self.routes = routes
        self._state: dict[str, Any] = {}
        handler: Handler = self._dispatch
        for middleware in reversed(middlewares):
            handler = _wrap(middleware, handler)
        self._handler = handler

    def __getitem__(self, key: str) -> Any:
        return self._state[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._state[key] = value

    async def handle(self, request: AdminRequest) -> AdminResponse:
        return await self._handler(request)

    async def _dispatch(self, request: AdminRequest) -> AdminResponse:
        # HEAD is GET without the body (the engine drops it).
        method = "GET" if request.method == "HEAD" else request.method
        allowed = []
        for route in self.routes:
            match = route.pattern.match(request.path)
            if match is None:
                continue
            if route.method == method:
                request.match_info = {k: unquote(v) for k, v in match.groupdict().items()}
                return await route.handler(request)
            allowed.append(route.method)
        if allowed:
            raise HTTPError(405, tuple(dict.fromkeys(allowed)))
        raise HTTPError(404)

    async def serve(self, head: RequestHead, exchange: Exchange) -> None:
        """The engine's handler: read the (small) body, answer, never raise."""
        try:
            parts = []
            while chunk := await exchange.read_body():
                parts.append(chunk)
        except DownstreamError as error:
            _write(exchange, json_response({"error": "bad request body"}, status=error.status))
            return
        except ClientDisconnected:
            return
        _write(exchange, await self.handle(AdminRequest(head, b"".join(parts), self)))


def _wrap(middleware: Middleware, handler: Handler) -> Handler:
    async def wrapped(request: AdminRequest) -> AdminResponse:
        return await middleware(request, handler)
    return wrapped


def _write(exchange: Exchange, response: AdminResponse) -> None:
    # 204/304 carry no Content-Length: a 304's would have to be the 200's (RFC 9110 §8.6).
    length = None if response.status in (204, 304) else len(response.body)
    exchange.start_response(response.status, [(k.lower(), v) for k, v in response.headers.items()],
                            length)
    exchange.write(response.body)
    exchange.end_response()


class AdminServer:
    """A running admin listener; ``addresses`` are the bound (host, port, ...) tuples."""

    def __init__(self, server: asyncio.Server, listener: Listener):
        self._server = server
        self._listener = listener
        self.addresses = [sock.getsockname() for sock in server.sockets]

    async def cleanup(self) -> None:
        self._server.close()
        for conn in list(self._listener.connections):
            conn.close()
        await self._server.wait_closed()


async def start_admin(app: AdminApp, host: str, port: int) -> AdminServer:
    """Serve ``app`` on ``host:port`` (port 0: any free port, see ``addresses``). The caller
    owns the server and calls ``await server.cleanup()``."""
    listener = Listener(app.serve, timeouts=Timeouts(),
                        limits=Limits(max_body_bytes=MAX_BODY_BYTES, max_connections=256))
    server = await asyncio.get_running_loop().create_server(
        listener.protocol_factory, host, port, reuse_address=True)
    return AdminServer(server, listener)
