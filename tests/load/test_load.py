"""Load and soak targets (reliability.md §4), as short CI runs; sizes and durations are
environment-tunable for the full documented runs:

    PYPROXY_T1_SECONDS=60 PYPROXY_SOAK_SECONDS=600 PYPROXY_T6_MIB=1024 pytest -m load -s

Every test prints its figures (-s shows them); assertions are on correctness and bounded
resources, never on speed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.support.backends import free_port
from tests.support.harness import ProxyProcess

pytestmark = pytest.mark.load
MIB = 1024 * 1024


@pytest.fixture
def fake_backend():
    """A `pyproxy fake-service` process: the backend users run, on its own CPU budget."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pyproxy", "fake-service", "--name", "origin",
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    import urllib.request
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5)
            break
        except OSError:
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


def _proxy(tmp_path: Path, port: int) -> ProxyProcess:
    config = tmp_path / "pyproxy.yaml"
    config.write_text(yaml.safe_dump({
        "access_log": {"format": "off"},
        "services": {"origin": {"endpoints": [f"127.0.0.1:{port}"]}},
        "routes": [{"name": "main", "backends": [{"service": "origin"}]}],
    }))
    return ProxyProcess(config).start()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _drive(url: str, seconds: float, workers: int, samples: list | None = None,
                 sample=None) -> tuple[int, list]:
    """Keep ``workers`` keep-alive clients busy for ``seconds``; count and collect failures."""
    done = 0
    failures: list = []
    stop = time.monotonic() + seconds

    async def worker(session):
        nonlocal done
        while time.monotonic() < stop:
            try:
                async with session.get(url) as r:
                    await r.read()
                    if r.status != 200:
                        failures.append(r.status)
                    done += 1
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))

    async def sampler():
        while time.monotonic() < stop:
            await asyncio.sleep(1.0)
            samples.append(sample())

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=workers)) as session:
        jobs = [worker(session) for _ in range(workers)]
        if sample is not None:
            jobs.append(sampler())
        await asyncio.gather(*jobs)
    return done, failures


async def test_t1_steady_load_has_no_failures(tmp_path, fake_backend):
    proxy = _proxy(tmp_path, fake_backend)
    try:
        seconds = float(os.environ.get("PYPROXY_T1_SECONDS", "10"))
        done, failures = await _drive(proxy.url + "/", seconds, workers=20)
        print(f"\nT1: {done} requests in {seconds:.0f}s ({done / seconds:.0f}/s) with 20 "
              f"clients, {len(failures)} failures")
        assert done > 0 and failures == []
    finally:
        assert proxy.stop() == 0


async def test_t5_soak_keeps_memory_and_fds_flat(tmp_path, fake_backend):
    proxy = _proxy(tmp_path, fake_backend)
    pid = proxy.proc.pid
    try:
        seconds = float(os.environ.get("PYPROXY_SOAK_SECONDS", "60"))
        # Warm up so pools, caches and allocator arenas reach their steady size.
        await _drive(proxy.url + "/", 3, workers=10)
        samples: list = []
        done, failures = await _drive(proxy.url + "/", seconds, workers=10, samples=samples,
                                      sample=lambda: (proxy.rss_mib(), _fds(pid)))
        assert failures == [] and len(samples) >= 3
        rss = [s[0] for s in samples]
        fds = [s[1] for s in samples]
        third = max(1, len(samples) // 3)
        first, last = sum(rss[:third]) / third, sum(rss[-third:]) / third
        print(f"\nT5: {done} requests over {seconds:.0f}s; RSS {rss[0]:.1f} → {rss[-1]:.1f} MiB "
              f"(first third avg {first:.1f}, last third {last:.1f}); fds {min(fds)}–{max(fds)}")
        assert last - first < 8, f"RSS grew {last - first:.1f} MiB over the soak"
        assert max(fds) - min(fds) <= 25, f"fd count wandered {min(fds)}–{max(fds)}"
    finally:
        assert proxy.stop() == 0


async def test_t6_large_bodies_up_and_down_bounded_rss_matching_sha256(tmp_path, echo_factory):
    echo = await echo_factory("echo")
    proxy = _proxy(tmp_path, echo.port)
    size = int(os.environ.get("PYPROXY_T6_MIB", "1024")) * MIB
    try:
        baseline = proxy.rss_mib()
        block = os.urandom(MIB)
        expected = hashlib.sha256()

        async def upload():
            sent = 0
            while sent < size:
                expected.update(block)
                yield block
                sent += len(block)

        timeout = aiohttp.ClientTimeout(total=900)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            started = time.monotonic()
            async with session.post(proxy.url + "/up", data=upload(),
                                    headers={"content-length": str(size)}) as r:
                answer = await r.json(content_type=None)
            up = time.monotonic() - started
            assert answer["body_bytes"] == size
            assert answer["body_sha256"] == expected.hexdigest()

            started = time.monotonic()
            digest, received = hashlib.sha256(), 0
            async with session.get(proxy.url + f"/stream/{size}") as r:
                async for chunk in r.content.iter_chunked(MIB):
                    digest.update(chunk)
                    received += len(chunk)
            down = time.monotonic() - started
        pattern = (b"0123456789abcdef" * 4096)
        reference = hashlib.sha256()
        for offset in range(0, size, len(pattern)):
            reference.update(pattern[: min(len(pattern), size - offset)])
        assert received == size and digest.hexdigest() == reference.hexdigest()
        growth = proxy.peak_rss_mib() - baseline
        print(f"\nT6: {size // MIB} MiB up in {up:.1f}s, down in {down:.1f}s; proxy peak RSS "
              f"{proxy.peak_rss_mib():.1f} MiB (+{growth:.1f} over baseline)")
        assert growth < 64
    finally:
        assert proxy.stop() == 0
