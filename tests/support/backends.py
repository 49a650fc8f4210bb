"""Real loopback backends for tests: an aiohttp echo service and raw scripted sockets.

The echo service answers JSON describing what it received (so tests can assert on the
forwarded request); special paths make it misbehave on purpose. Raw backends run a
coroutine per connection for byte-level control (resets, black holes, bad responses)
and record every byte they receive.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from pyproxy.demo import ports


class EchoBackend:
    def __init__(self, name: str):
        self.name = name
        self.requests = 0
        self.hosts: list[str] = []  # the Host header of every request, in order
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> EchoBackend:
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.hosts.append(request.headers.get("Host", ""))
        path = request.path
        if path.startswith("/status/"):
            return web.Response(status=int(path.split("/")[2]), text=self.name)
        if path.startswith("/stream/"):
            # /stream/N: N bytes of a repeating pattern, chunked, 64 KiB at a time
            total = int(path.split("/")[2])
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            block = (b"0123456789abcdef" * 4096)
            sent = 0
            while sent < total:
                piece = block[: min(len(block), total - sent)]
                await response.write(piece)
                sent += len(piece)
            await response.write_eof()
            return response
        if path.startswith("/sleep/"):
            await asyncio.sleep(float(path.split("/")[2]))
        digest = hashlib.sha256()
        length = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
        body = {
            "name": self.name, "method": request.method, "path": request.path_qs,
            "headers": [[k.decode("latin-1").lower(), v.decode("latin-1")]
                        for k, v in request.raw_headers],
            "body_bytes": length, "body_sha256": digest.hexdigest(),
            "chunked": request.headers.get("Transfer-Encoding", "") == "chunked",
        }
        return web.Response(body=json.dumps(body).encode(), content_type="application/json")


class ByteReader(Protocol):
    """What a connection script reads from: an asyncio.StreamReader, or the recording wrapper
    RawBackend hands it."""

    async def readuntil(self, separator: bytes = b"\n", /) -> bytes: ...

    async def read(self, n: int = -1, /) -> bytes: ...

    async def readexactly(self, n: int, /) -> bytes: ...


ConnectionScript = Callable[[ByteReader, asyncio.StreamWriter], Awaitable[None]]


class RawBackend:
    """A TCP server running ``script(reader, writer)`` per connection; records input."""

    def __init__(self, script: ConnectionScript):
        self.script = script
        self.received = bytearray()
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> RawBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        recording = _RecordingReader(reader, self.received)
        try:
            await self.script(recording, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


class _RecordingReader:
    def __init__(self, reader: asyncio.StreamReader, sink: bytearray):
        self._reader = reader
        self._sink = sink

    async def readuntil(self, sep: bytes = b"\n") -> bytes:
        data = await self._reader.readuntil(sep)
        self._sink.extend(data)
        return data

    async def read(self, n: int = -1) -> bytes:
        data = await self._reader.read(n)
        self._sink.extend(data)
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await self._reader.readexactly(n)
        self._sink.extend(data)
        return data


async def read_request_head(reader: ByteReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


# Ports for processes a test starts: picked outside the ephemeral range, see demo/ports.py.
free_port = ports.free_port


class WebSocketEchoBackend:
    """An aiohttp WebSocket server at /ws that answers each text message with
    ``prefix + message``; ``autoping=False`` keeps it silent (no pong) for idle tests."""

    def __init__(self, prefix: str = "echo:", autoping: bool = True):
        self.prefix = prefix
        self.autoping = autoping
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> WebSocketEchoBackend:
        app = web.Application()
        app.router.add_get("/ws", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=self.autoping)
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(self.prefix + message.data)
        return ws

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
