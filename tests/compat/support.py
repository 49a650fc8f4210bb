"""A real ``pyproxy run`` process serving upstream manifests, and echo backends behind it.

One process per test module (``mesh_proxy``): each test starts its own echo backends (on its
own event loop), writes one config file (a native ``services:`` block naming those backends,
then the upstream manifests, unchanged) and asks the proxy to reload it through the admin
API, which answers once the new snapshot serves.

The backends answer like the Gateway API conformance echo server where the upstream tests
rely on it: ``?delay=1s`` waits; ``responseCode``/``succeedAfter``/``delayRetry`` with a
``uuid`` simulate a failing backend for retry tests (without ``responseCode``, the failing
tries are connection errors: the connection closes with no answer);
``X-Echo-Set-Header: name:value,...`` sets response headers. The JSON body names the
backend and echoes method, path and headers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support.backends import EchoBackend
from tests.support.harness import ProxyProcess

HERE = Path(__file__).parent


def manifest(*parts: str) -> Path:
    path = HERE.joinpath(*parts)
    assert path.exists(), path
    return path


class ConformanceEcho(EchoBackend):
    """EchoBackend plus the conformance echo server's knobs (see the module docstring)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.attempts: dict[str, int] = {}
        self.paths: list[str] = []
        self.received: list[dict] = []  # method, path and headers of every request

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path_qs)
        self.received.append({"method": request.method, "path": request.path_qs,
                              "host": request.headers.get("Host", ""),
                              "headers": {k.lower(): v for k, v in request.headers.items()}})
        query = request.query
        if "delay" in query:
            await asyncio.sleep(_seconds(query["delay"]))
        if "responseCode" not in query and "succeedAfter" in query and "uuid" in query:
            # No responseCode: a connection error (HTTPRouteRetryConnectionError): the
            # backend read the request and closes the connection without an answer.
            count = self.attempts[query["uuid"]] = self.attempts.get(query["uuid"], 0) + 1
            if count <= int(query["succeedAfter"]):
                assert request.transport is not None
                request.transport.close()
                return web.Response()  # never written: the connection is closed
        if "responseCode" in query and "uuid" in query:
            count = self.attempts[query["uuid"]] = self.attempts.get(query["uuid"], 0) + 1
            if count <= int(query.get("succeedAfter", "0")):
                if "delayRetry" in query:
                    await asyncio.sleep(_seconds(query["delayRetry"]))
                return web.Response(status=int(query["responseCode"]), text=self.name)
        response = await super()._handle(request)
        for pair in filter(None, request.headers.get("X-Echo-Set-Header", "").split(",")):
            name, _, value = pair.partition(":")
            response.headers.add(name.strip(), value.strip())
        return response


def _seconds(text: str) -> float:
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


def _yaml_scalar(value: str) -> str:
    return json.dumps(value)


class Mesh:
    """The test's view of the module's proxy: start backends, load manifests, send requests."""

    def __init__(self, proxy: ProxyProcess, config: Path):
        self.proxy = proxy
        self.config = config
        self.backends: dict[str, ConformanceEcho] = {}
        self.session: aiohttp.ClientSession | None = None

    async def start(self, *names: str) -> list[ConformanceEcho]:
        started = []
        for name in names:
            if name not in self.backends:
                self.backends[name] = await ConformanceEcho(name).start()
            started.append(self.backends[name])
        return started

    async def load(self, services: Mapping[str, Iterable], *files: Path | str,
                   extra: str = "") -> dict:
        """Serve ``files`` (upstream manifests, unchanged) with ``services``: service name →
        backend names, or (backend name, {labels}) pairs. Returns the reload result."""
        lines = ["access_log: {format: off}", "debug_headers: true", "services:"]
        for service, members in services.items():
            lines.append(f"  {_yaml_scalar(service)}:")
            lines.append("    endpoints:")
            for member in members:
                name, labels = member if isinstance(member, tuple) else (member, {})
                backend = (await self.start(name))[0]
                label_text = ", ".join(f"{_yaml_scalar(k)}: {_yaml_scalar(v)}"
                                       for k, v in labels.items())
                lines.append(f"      - {{address: '127.0.0.1:{backend.port}', "
                             f"labels: {{{label_text}}}}}")
        documents = ["\n".join(lines) + "\n" + extra]
        documents += [await asyncio.to_thread(Path(file).read_text) for file in files]
        text = "\n---\n".join(doc.strip("\n") + "\n" for doc in documents)
        tmp = self.config.with_name(".config.yaml.tmp")
        tmp.write_text(text)
        tmp.replace(self.config)
        session = await self.client()
        async with session.post(f"{self.proxy.admin_url}/api/v1/reload") as response:
            result = await response.json()
        assert result["result"] in ("success", "unchanged"), result
        return result

    async def client(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=50),
                timeout=aiohttp.ClientTimeout(total=20))
        return self.session

    async def request(self, path: str = "/", *, host: str | None = None, method: str = "GET",
                      headers: Mapping[str, str] | None = None,
                      timeout: float | None = None,
                      ) -> tuple[int, Mapping[str, str], dict | bytes]:
        """(status, response headers, JSON body or raw bytes); redirects are not followed."""
        session = await self.client()
        send = dict(headers or {})
        if host is not None:
            send["Host"] = host
        kwargs = {"timeout": aiohttp.ClientTimeout(total=timeout)} if timeout else {}
        async with session.request(method, self.proxy.url + path, headers=send,
                                   allow_redirects=False, **kwargs) as response:
            body = await response.read()
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = body
            return response.status, response.headers, parsed

    async def backend_of(self, path: str = "/", **kwargs) -> str:
        """The name of the backend that answered (or ``status:NNN``)."""
        status, _, body = await self.request(path, **kwargs)
        if status == 200 and isinstance(body, dict):
            return body["name"]
        return f"status:{status}"

    async def spread(self, count: int, path: str = "/", concurrency: int = 10,
                     **kwargs) -> dict[str, int]:
        """How ``count`` requests spread over the backends (the conformance weight check)."""
        seen: dict[str, int] = {}

        async def worker(n: int) -> None:
            for _ in range(n):
                name = await self.backend_of(path, **kwargs)
                seen[name] = seen.get(name, 0) + 1

        share, rest = divmod(count, concurrency)
        await asyncio.gather(*(worker(share + (1 if i < rest else 0))
                               for i in range(concurrency)))
        return seen

    async def check_weights(self, expected: Mapping[str, float], path: str = "/",
                            **kwargs) -> None:
        """The Gateway API conformance weight test (conformance/utils/weight/weight.go): 500
        requests, every backend within 5 percentage points of its weight, a weight of 0
        gets nothing; like the suite, up to 10 tries before a failure counts (at ±5 points
        a fair 50/50 split misses about one time in 40)."""
        for attempt in range(10):
            seen = await self.spread(500, path, **kwargs)
            try:
                assert_weights(seen, expected, 500)
                return
            except AssertionError:
                if attempt == 9:
                    raise

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        for backend in self.backends.values():
            await backend.close()


def assert_weights(seen: Mapping[str, int], expected: Mapping[str, float], total: int) -> None:
    """The Gateway API conformance check (conformance/utils/weight/weight.go): every backend
    within 5 percentage points of its weight; a weight of 0 gets nothing."""
    assert sum(seen.values()) == total, seen
    assert set(seen) <= set(expected), seen
    for name, share in expected.items():
        got = seen.get(name, 0) / total
        if share == 0:
            assert got == 0, (name, seen)
        else:
            assert abs(got - share) <= 0.05, (name, got, share, seen)
