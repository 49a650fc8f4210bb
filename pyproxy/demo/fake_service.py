"""``pyproxy fake-service`` (docs/cli.md): a demo/test backend in the spirit of
nicholasjackson/fake-service.

Every request on any path and method waits ``latency ± jitter``, then either fails on
purpose (with probability ``error_rate``, answering ``error_code``) or calls each upstream URL
and answers a JSON description of itself::

    {"name", "uri", "method", "type": "HTTP", "code", "start_time", "end_time", "duration",
     "body": "Hello from NAME", "headers": {...}, "upstream_calls": {url: {"code", "body"}}}

An upstream that answers 5xx, or cannot be reached, makes this service answer 500 as well
(the upstream's entry then says what went wrong: ``"code": -1, "error": ...`` when no
response arrived). That is how fake-service behaves, and it is what lets a broken
stockmanager show up as storefront errors in the demo.

Upstream calls carry the request's trace headers (``traceparent``, ``tracestate``, ``b3``,
``x-b3-*``), ``x-request-id`` and the ``end-user`` routing header, so a header-routed request
keeps its route one hop further down and traces stay joined.

Two endpoints are exempt from latency and errors because tools rely on them:
``GET /health`` (always ``{"status": "ok"}``) and ``GET /stream?bytes=N`` (N bytes of
``STREAM_PATTERN``, chunked, for streaming tests). Request bodies are streamed through
sha256, never buffered, and reported as ``body_bytes`` / ``body_sha256``.

``start_fake_service`` runs one in-process (tests); ``run_fake_service`` is the command.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from pyproxy.config.parse import parse_duration

# Headers copied from the incoming request onto every upstream call.
PROPAGATED_HEADERS = ("x-request-id", "traceparent", "tracestate", "b3", "end-user")
PROPAGATED_PREFIXES = ("x-b3-",)

# /stream sends this block over and over; tests rebuild the expected bytes from it.
STREAM_PATTERN = bytes(range(256)) * 256

UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=30)
BODY_CHUNK = 64 * 1024

def _duration(text: str) -> float:
    """A config-style duration (``50ms``, ``2.5s``); a bare ``0`` also means none."""
    if text.strip() == "0":
        return 0.0
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 50ms, 2.5s, 1m)") from None


def parse_latency(text: str) -> tuple[float, float]:
    """``DUR[:JITTER]`` (e.g. ``50ms:10ms``) → (latency, jitter) in seconds."""
    latency, colon, jitter = text.partition(":")
    return _duration(latency), _duration(jitter) if colon else 0.0


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")


class FakeService:
    """One running fake service. Build it with ``start_fake_service``; ``close()`` when done.

    ``requests`` counts the requests served, ``/health`` probes excluded so that readiness
    polling does not disturb counts in tests.
    """

    def __init__(
        self,
        name: str,
        *,
        error_rate: float,
        error_code: int,
        latency: float,
        jitter: float,
        upstreams: Iterable[str],
        rng: random.Random,
        log: bool,
    ):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be within 0..1, got {error_rate}")
        if latency < 0 or jitter < 0:
            raise ValueError("latency and jitter must not be negative")
        self.name = name
        self.error_rate = error_rate
        self.error_code = error_code
        self.latency = latency
        self.jitter = jitter
        self.upstreams = tuple(upstreams)
        self.requests = 0
        self._errors = rng
        # Jitter has its own generator so that a seeded error sequence stays the same
        # whether or not jitter is configured.
        self._jitter = random.Random()
        self._log = log
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._address: tuple[str, int] | None = None  # (host, port) once listening

    def __repr__(self) -> str:
        where = self.url if self._address else "not started"
        return f"<FakeService {self.name} {where} requests={self.requests}>"

    @property
    def port(self) -> int:
        assert self._address is not None, "not started"
        return self._address[1]

    @property
    def url(self) -> str:
        assert self._address is not None, "not started"
        host, port = self._address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/stream", self._stream)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Binding the socket ourselves gives us the real port when asked for port 0.
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self._address = sock.getsockname()[:2]
        # No cookie jar: a sticky cookie one caller got from a proxy must not pin every
        # later call this service makes on behalf of other callers.
        self._session = aiohttp.ClientSession(timeout=UPSTREAM_TIMEOUT,
                                              cookie_jar=aiohttp.DummyCookieJar())
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ handlers

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        try:
            remaining = int(request.query.get("bytes", "0"))
        except ValueError:
            return web.json_response({"error": "bytes must be an integer"}, status=400)
        response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        while remaining > 0:
            block = STREAM_PATTERN[: min(remaining, len(STREAM_PATTERN))]
            await response.write(block)
            remaining -= len(block)
        await response.write_eof()
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        start = time.time()
        body_bytes, body_sha256 = await _digest(request)
        delay = self.latency
        if self.jitter:
            delay = max(0.0, delay + self._jitter.uniform(-self.jitter, self.jitter))
        if delay:
            await asyncio.sleep(delay)

        if self.error_rate and self._errors.random() < self.error_rate:
            self._log_line(request, self.error_code, start)
            return web.json_response(
                {"name": self.name, "code": self.error_code, "error": "injected error"},
                status=self.error_code,
            )

        calls = await asyncio.gather(*(self._call(url, request) for url in self.upstreams))
        upstream_calls = dict(zip(self.upstreams, calls, strict=True))
        failed = any(not 0 < call["code"] < 500 for call in calls)
        code = 500 if failed else 200
        end = time.time()
        self._log_line(request, code, start)
        reply: dict[str, Any] = {
            "name": self.name,
            "uri": request.path_qs,
            "method": request.method,
            "type": "HTTP",
            "code": code,
            "start_time": _timestamp(start),
            "end_time": _timestamp(end),
            "duration": f"{(end - start) * 1000:.3f}ms",
            "body": f"Hello from {self.name}",
            "headers": _lowercase_headers(request.headers),
            "upstream_calls": upstream_calls,
        }
        if body_bytes:
            reply["body_bytes"] = body_bytes
            reply["body_sha256"] = body_sha256
        return web.json_response(reply, status=code)

    async def _call(self, url: str, request: web.Request) -> dict[str, Any]:
        """GET one upstream; report its status and body, or why there was no response."""
        assert self._session is not None
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in PROPAGATED_HEADERS or name.lower().startswith(PROPAGATED_PREFIXES)
        }
        try:
            async with self._session.get(url, headers=headers) as response:
                raw = await response.read()
                return {"code": response.status, "body": _decode(raw)}
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return {"code": -1, "error": f"{type(exc).__name__}: {exc}"}

    def _log_line(self, request: web.Request, code: int, start: float) -> None:
        if self._log:
            took = (time.time() - start) * 1000
            print(f"{self.name} {request.method} {request.path_qs} {code} {took:.1f}ms",
                  file=sys.stderr, flush=True)


async def _digest(request: web.Request) -> tuple[int, str]:
    """Length and sha256 of the request body, read in chunks (bodies may be large)."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(BODY_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _lowercase_headers(headers: Any) -> dict[str, str]:
    """Request headers by lower-case name; repeated headers are joined with ", "."""
    merged: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    return merged


def _decode(raw: bytes) -> Any:
    """An upstream body as JSON when it is JSON (a chained fake-service), else as text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


async def start_fake_service(
    name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    error_rate: float = 0.0,
    error_code: int = 500,
    latency: float = 0.0,
    jitter: float = 0.0,
    upstreams: Iterable[str] = (),
    rng: random.Random | None = None,
) -> FakeService:
    """Start a fake service on ``host:port`` (0 = any free port) in the running loop."""
    service = FakeService(
        name,
        error_rate=error_rate,
        error_code=error_code,
        latency=latency,
        jitter=jitter,
        upstreams=upstreams,
        rng=rng or random.Random(),
        log=os.environ.get("PYPROXY_FAKE_LOG") == "1",
    )
    await service.start(host, port)
    return service


def run_fake_service(args: Any) -> int:
    """``pyproxy fake-service``: serve until SIGINT/SIGTERM, then exit 0."""
    try:
        latency, jitter = parse_latency(args.latency)
    except ValueError as exc:
        print(f"pyproxy fake-service: --latency: {exc}", file=sys.stderr)
        return 2
    if not 0.0 <= args.error_rate <= 1.0:
        print("pyproxy fake-service: --error-rate must be within 0..1", file=sys.stderr)
        return 2
    return asyncio.run(_serve(args, latency, jitter))


async def _serve(args: Any, latency: float, jitter: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        service = await start_fake_service(
            args.name,
            host=args.host,
            port=args.port,
            error_rate=args.error_rate,
            error_code=args.error_code,
            latency=latency,
            jitter=jitter,
            upstreams=args.upstream,
            rng=random.Random(args.seed),
        )
    except OSError as exc:
        print(f"pyproxy fake-service: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1
    print(f"fake-service {args.name} listening on {service.url}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await service.close()
    return 0
