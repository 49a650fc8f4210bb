"""``pyproxy demo`` end to end: real child processes, proxies and fake services on 127.0.0.1.

Each test starts the demo as a subprocess, waits for its "Ready." line, sends traffic through
the proxies it printed, then stops it with SIGINT and checks it exits 0 and leaves no child
process behind. Linux-only: child processes are found through /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.support.backends import free_port

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

READY_TIMEOUT = 40.0


def free_admin_ports() -> int:
    """A port N with N, N+1 and N+2 free: the demo's three fixed admin ports."""
    for _ in range(50):
        first = free_port()
        try:
            for port in (first + 1, first + 2):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError("no three consecutive free ports")


def child_pids(pid: int) -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces; the parent pid follows its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Demo:
    """A running ``pyproxy demo`` whose output is collected line by line."""

    def __init__(self, *args: str):
        self.port, self.admin_port = free_port(), free_admin_ports()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyproxy", "demo", "--port", str(self.port),
             "--admin-port", str(self.admin_port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self.children: set[int] = set()  # its child processes, once it is ready
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first output line (from now on) that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n" + self.output) from None
            if line is None:
                raise AssertionError(f"demo exited before {pattern!r}:\n" + self.output)
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def proxy_url(self, name: str) -> str:
        """A proxy's URL from the banner's table (`  NAME  http://...  http://... config`)."""
        for line in self.lines:
            found = re.match(rf"\s+{name}\s+(http://\S+)\s+http://", line)
            if found:
                return found.group(1)
        raise AssertionError(f"no {name} proxy in the banner:\n{self.output}")

    def dashboards(self) -> dict[str, tuple[int, str]]:
        """Every proxy's dashboard in the banner: name → (admin port, what it fronts)."""
        found = {}
        for line in self.lines:
            row = re.match(r"\s+(\w+)\s+http://\S+\s+http://127\.0\.0\.1:(\d+)/\s+(.+)$", line)
            if row:
                found[row.group(1)] = (int(row.group(2)), row.group(3))
        return found

    def status(self) -> str:
        """A bare ``pyproxy status``, as typed in another terminal (the demo's first admin
        port stands in for the default 9901)."""
        return subprocess.run(
            [sys.executable, "-m", "pyproxy", "status"], capture_output=True, text=True,
            timeout=30, env={**os.environ, "PYPROXY_ADMIN": f"http://127.0.0.1:{self.admin_port}"},
            check=True).stdout

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()  # its children are then reported as leftovers
            raise
        while self._queue.get(timeout=5) is not None:
            pass
        return self.process.returncode

    @property
    def output(self) -> str:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "\n".join(self.lines)


@pytest.fixture
def start_demo():
    """Start demos; each is stopped (exit 0 asserted) and checked for leftover children."""
    demos: list[Demo] = []

    def start(*args: str) -> Demo:
        demo = Demo(*args)
        demos.append(demo)  # stopped below even when it never gets ready
        demo.wait_for(r"^Ready\.", READY_TIMEOUT)
        demo.children = child_pids(demo.process.pid)
        assert len(demo.children) == 7, demo.children  # 4 fake services and 3 proxies
        return demo

    yield start
    for demo in demos:
        assert demo.stop() == 0, demo.output
        leftover = [pid for pid in demo.children if alive(pid)]
        assert not leftover, f"children still running after the demo stopped: {leftover}"


async def get_many(url: str, count: int, headers: dict[str, str] | None = None):
    """(status, reply, response headers) for ``count`` GETs, 20 at a time.

    The reply is decoded JSON from a fake service, or text from the proxy (an injected abort).
    """
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as session:
        async def one():
            async with session.get(url, headers=headers) as response:
                raw = await response.read()
                try:
                    reply = json.loads(raw)
                except ValueError:
                    reply = raw.decode()
                return response.status, reply, response.headers

        return await asyncio.gather(*(one() for _ in range(count)))


def stockmanager_versions(replies) -> Counter:
    """Which stockmanager answered each storefront reply, and with what: ``(name, code)``."""
    seen = Counter()
    for _, body, _ in replies:
        for call in body["upstream_calls"].values():
            seen[call["body"]["name"], call["code"]] += 1
    return seen


def test_canary_demo(start_demo):
    demo = start_demo("--scenario", "canary", "--load", "0")
    replies = asyncio.run(get_many(f"http://127.0.0.1:{demo.port}/store/stocklevel", 200,
                                   {"Host": "storefront"}))
    assert len(replies) == 200
    for status, body, headers in replies:
        assert status in (200, 500)
        assert body["name"] == "storefront"
        assert body["code"] == status
        assert headers["x-pyproxy-route"] == "storefront"  # debug_headers are on
    versions = stockmanager_versions(replies)
    # 90/10 between a healthy 0.0.1 and a 0.0.2 that fails half the time.
    assert set(versions) <= {("stockmanager-v1", 200), ("stockmanager-v2", 200),
                             ("stockmanager-v2", 500)}
    v2 = versions["stockmanager-v2", 200] + versions["stockmanager-v2", 500]
    assert 3 <= v2 <= 50, versions  # ~20 expected
    failed = sum(1 for status, _, _ in replies if status == 500)
    assert failed == versions["stockmanager-v2", 500]


def test_the_first_dashboard_and_a_bare_status_show_the_scenarios_proxy(start_demo):
    demo = start_demo("--scenario", "canary", "--load", "0")
    first = next(line for line in demo.lines if "http://127.0.0.1:" in line)
    assert "dashboard" in first and f"http://127.0.0.1:{demo.admin_port}/" in first, first
    assert "stockmanager proxy" in first, first
    # Every proxy's dashboard, on fixed ports, with what it stands in front of.
    assert demo.dashboards() == {
        "stockmanager": (demo.admin_port, "stockmanager-v1 and -v2"),
        "storefront": (demo.admin_port + 1, "storefront (where the load goes)"),
        "zipkin": (demo.admin_port + 2, "zipkin")}
    status = demo.status()
    assert "stockmanager/v1" in status and "stockmanager/v2" in status, status
    assert "90%" in status and "10%" in status, status


def test_chaos_puts_the_zipkin_proxy_on_the_first_admin_port(start_demo):
    demo = start_demo("--scenario", "chaos", "--load", "0")
    dashboards = demo.dashboards()
    assert dashboards["zipkin"][0] == demo.admin_port, dashboards
    assert {port for port, _ in dashboards.values()} == {
        demo.admin_port, demo.admin_port + 1, demo.admin_port + 2}
    status = demo.status()
    assert status.split("\n")[1].startswith("zipkin "), status


def test_a_busy_fixed_admin_port_stops_the_demo_before_it_starts():
    first = free_admin_ports()
    with socket.socket() as taken:  # the storefront proxy's admin port (canary: first + 1)
        taken.bind(("127.0.0.1", first + 1))
        taken.listen()
        demo = subprocess.run(
            [sys.executable, "-m", "pyproxy", "demo", "--port", str(free_port()),
             "--admin-port", str(first), "--load", "0"],
            capture_output=True, text=True, timeout=60,
        )
    assert demo.returncode == 2, demo.stdout + demo.stderr
    assert f"port {first + 1}, the storefront proxy's admin (dashboard), is already in use" \
        in demo.stderr, demo.stderr
    assert "--admin-port N" in demo.stderr
    assert "starting" not in demo.stdout  # nothing was started


def test_dark_launch_routes_the_tester_through_the_chain_and_load_reports_it(start_demo):
    demo = start_demo("--scenario", "dark-launch", "--load", "20")
    url = f"http://127.0.0.1:{demo.port}/store/stocklevel"
    tester = asyncio.run(get_many(url, 20, {"end-user": "tester"}))
    everyone = asyncio.run(get_many(url, 20))
    # 0.0.2 is healthy here: only the scenarios about failure have a failing 0.0.2.
    assert set(stockmanager_versions(tester)) == {("stockmanager-v2", 200)}
    assert {status for status, _, _ in tester} == {200}
    assert set(stockmanager_versions(everyone)) == {("stockmanager-v1", 200)}
    # The load generator sends one request in ten as the tester and reports who answered.
    summary = demo.wait_for(r"\d+ requests, \d+% ok", timeout=15)
    assert "stockmanager-v1" in summary and "stockmanager-v2" in summary, summary


def test_blue_green_answers_by_host(start_demo):
    demo = start_demo("--scenario", "blue-green", "--load", "0")
    stockmanager = demo.proxy_url("stockmanager")
    for host, expected in [("blue.stockmanager", "stockmanager-v1"),
                           ("green.stockmanager", "stockmanager-v2"),
                           ("stockmanager", "stockmanager-v1")]:
        replies = asyncio.run(get_many(f"{stockmanager}/stocklevel", 30, {"Host": host}))
        assert {body["name"] for _, body, _ in replies} == {expected}, host
        # Trying green must not meet a failure the scenario is not about.
        assert {status for status, _, _ in replies} == {200}, host


def test_chaos_aborts_zipkin_calls(start_demo):
    demo = start_demo("--scenario", "chaos", "--load", "0")
    replies = asyncio.run(get_many(f"{demo.proxy_url('zipkin')}/api/v2/spans", 100))
    statuses = Counter(status for status, _, _ in replies)
    assert set(statuses) == {200, 503}, statuses
    assert 20 <= statuses[503] <= 80, statuses


def test_circuit_breaker_demo_starts_and_serves(start_demo):
    demo = start_demo("--scenario", "circuit-breaker", "--load", "0")
    replies = asyncio.run(get_many(f"http://127.0.0.1:{demo.port}/store/stocklevel", 10))
    assert all(status in (200, 500) for status, _, _ in replies)


def test_circuit_breaker_does_not_trip_on_one_request_at_a_time(start_demo):
    demo = start_demo("--scenario", "circuit-breaker", "--load", "0")
    url = f"{demo.proxy_url('stockmanager')}/stocklevel"

    async def one_at_a_time():
        async with aiohttp.ClientSession() as session:
            flags = []
            for _ in range(10):
                async with session.get(url, headers={"Host": "stockmanager"}) as response:
                    await response.read()
                    flags.append(response.headers["x-pyproxy-flags"])
            return flags

    flags = asyncio.run(one_at_a_time())
    assert not [flag for flag in flags if "UO" in flag], flags


def test_a_child_that_cannot_start_fails_the_demo_with_its_output():
    with socket.socket() as taken:  # the storefront proxy's port is already in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        demo = subprocess.run(
            [sys.executable, "-m", "pyproxy", "demo", "--port", str(taken.getsockname()[1]),
             "--admin-port", str(free_admin_ports()), "--load", "0"],
            capture_output=True, text=True, timeout=60,
        )
    assert demo.returncode == 1, demo.stdout
    assert "storefront-proxy exited with code 2" in demo.stdout
    assert "the port is already in use" in demo.stdout  # the proxy's own message, shown
