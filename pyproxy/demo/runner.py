"""``pyproxy demo``: run the storefront → stockmanager → zipkin lab on this machine.

Each proxy's admin (dashboard, /metrics, the CLI's target) is on a fixed port: the proxy
the scenario is about on ``--admin-port`` (9901), the others on the next two; a busy one
stops the demo before anything starts. The storefront proxy listens on ``--port`` (8080);
the other proxies and the fake services take free ports.

The demo starts every fake service and proxy of a ``scenarios.Plan`` as child processes
(``python -m pyproxy ...``) with their output in log files next to the generated configs,
waits until all of them are ready, prints where to look and what to try, and drives gentle
load at the storefront, summarised every few seconds. Ctrl-C or SIGTERM stops the children
and exits 0. A child that dies makes the demo stop too: its log is printed and the exit
code is 1, unless it exited cleanly (code 0: someone stopped it on purpose, e.g. Ctrl-C
sent to the whole process group by the terminal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import yaml

from pyproxy.demo.ports import free_ports
from pyproxy.demo.scenarios import Plan, Ports, admin_ports, build_plan
from pyproxy.tasks import TaskGroup

READY_TIMEOUT = 15.0  # seconds for every child to answer its readiness probe
STOP_TIMEOUT = 10.0  # seconds a child may take to exit after SIGTERM before it is killed
REPORT_EVERY = 5.0  # seconds between load summaries
MAX_IN_FLIGHT = 64  # the load generator skips a beat rather than pile up requests
LOAD_PATH = "/store/stocklevel"
LOAD_TIMEOUT = aiohttp.ClientTimeout(total=10)
LOG_TAIL_LINES = 40


def run_demo(args: argparse.Namespace) -> int:
    if args.load < 0:
        print("pyproxy demo: --load must be 0 (off) or a positive rate", file=sys.stderr)
        return 2
    busy = _busy_admin_port(args.scenario, args.admin_port)
    if busy is not None:
        print(busy, file=sys.stderr)
        return 2
    return asyncio.run(_demo(args.scenario, args.port, args.admin_port, args.load))


def _busy_admin_port(scenario: str, first: int) -> str | None:
    """A message naming the first fixed admin port something else holds, else None."""
    for name, port in admin_ports(scenario, first).items():
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return (f"pyproxy demo: port {port}, the {name} proxy's admin (dashboard), is "
                        "already in use — another demo or pyproxy may be running.\n"
                        f"  Stop it, or move the demo's admin ports: --admin-port N uses N, "
                        f"N+1 and N+2 (now {first}, {first + 1}, {first + 2}).")
    return None


def say(line: str = "") -> None:
    # Flushed at once: the demo's output is often piped (tests, tee) and must not lag.
    print(line, flush=True)


async def _demo(scenario: str, port: int, admin_port: int, rps: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    with tempfile.TemporaryDirectory(prefix="pyproxy-demo-") as tmp:
        workdir = Path(tmp)
        plan = build_plan(scenario, _pick_ports(scenario, port, admin_port), workdir)
        for proxy in plan.proxies:
            proxy.config_path.write_text(_config_yaml(plan.scenario, proxy.config))
        say(f"pyproxy demo: starting {len(plan.fake_services)} fake services and "
            f"{len(plan.proxies)} proxies (scenario {plan.scenario}) ...")
        children = Children(workdir)
        try:
            for fake in plan.fake_services:
                await children.start(fake.name, fake.argv())
            for proxy in plan.proxies:
                await children.start(f"{proxy.name}-proxy", proxy.argv())
            exit_code = await _wait_ready(plan, children, stop)
            if exit_code is not None:
                return exit_code
            _print_banner(plan, workdir, rps)
            return await _serve(plan, children, stop, rps)
        finally:
            await children.stop()


def _pick_ports(scenario: str, port: int, first_admin_port: int) -> Ports:
    """The storefront proxy listens on ``port``, every admin on its fixed port; the other
    proxies and the fake services listen on free ports."""
    admin = admin_ports(scenario, first_admin_port)
    (stockmanager_proxy, zipkin_proxy, storefront, stockmanager_v1, stockmanager_v2,
     zipkin) = free_ports(6)
    return Ports(port, admin["storefront"], stockmanager_proxy, admin["stockmanager"],
                 zipkin_proxy, admin["zipkin"], storefront, stockmanager_v1, stockmanager_v2,
                 zipkin)


def _config_yaml(scenario: str, config: dict[str, Any]) -> str:
    header = (f"# Generated by `pyproxy demo --scenario {scenario}`; deleted when the demo stops.\n"
              "# Edit and save: the proxy reloads it (an invalid edit is refused, the old\n"
              "# config keeps serving).\n")
    return header + yaml.safe_dump(config, sort_keys=False)


# ------------------------------------------------------------------------------ children


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    def log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(no output)"


class Children:
    """The demo's child processes: started with their output in ``NAME.log``, stopped together."""

    def __init__(self, log_dir: Path):
        self._log_dir = log_dir
        self.all: list[Child] = []
        self._tasks = TaskGroup()

    async def start(self, name: str, argv: list[str]) -> None:
        log_path = self._log_dir / f"{name}.log"
        with _new_log(log_path) as log:  # the child keeps its own descriptor
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pyproxy", *argv,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
            )
        self.all.append(Child(name, process, log_path))

    def exited(self) -> Child | None:
        return next((c for c in self.all if c.process.returncode is not None), None)

    async def first_exit(self) -> Child:
        waits = {self._tasks.spawn(c.process.wait(), f"wait-{c.name}"): c for c in self.all}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        return waits[done.pop()]

    async def stop(self) -> None:
        """SIGTERM every child still running, wait for them, kill the ones that hang."""
        running = [c for c in self.all if c.process.returncode is None]
        for child in running:
            child.process.terminate()
        for child in running:
            try:
                await asyncio.wait_for(child.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                say(f"pyproxy demo: {child.name} did not stop within {STOP_TIMEOUT:.0f}s; "
                    "killing it")
                child.process.kill()
                await child.process.wait()


def _new_log(path: Path) -> BinaryIO:
    # A local file, created empty: too quick to need a thread, even inside the event loop.
    return path.open("wb")


def _exit_code_after(child: Child) -> int:
    """The demo's exit code once ``child`` has exited on its own; a failure shows its log."""
    if child.process.returncode == 0:
        say(f"pyproxy demo: {child.name} stopped; stopping the rest ...")
        return 0
    say(f"pyproxy demo: {child.name} exited with code {child.process.returncode}; "
        f"its output ({child.log_path.name}):")
    say(child.log_tail())
    return 1


async def _wait_ready(plan: Plan, children: Children, stop: asyncio.Event) -> int | None:
    """Poll each fake service's /health and each proxy's admin /readyz until all answer 200.

    Returns None once everything is ready, else the exit code the demo should end with.
    """
    probes = {f"http://127.0.0.1:{fake.port}/health": fake.name for fake in plan.fake_services}
    probes.update({f"{proxy.admin_url}/readyz": f"{proxy.name} proxy" for proxy in plan.proxies})
    deadline = time.monotonic() + READY_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while probes:
            if stop.is_set():
                return 0
            child = children.exited()
            if child is not None:
                return _exit_code_after(child)
            if time.monotonic() > deadline:
                waiting = ", ".join(f"{name} ({url})" for url, name in probes.items())
                say(f"pyproxy demo: not ready after {READY_TIMEOUT:.0f}s: {waiting}")
                return 1
            for url in list(probes):
                if await _answers_200(session, url):
                    del probes[url]
            if probes:
                await asyncio.sleep(0.1)
    return None


async def _answers_200(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as response:
            return response.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


async def _serve(plan: Plan, children: Children, stop: asyncio.Event, rps: float) -> int:
    """Drive the load until asked to stop (exit 0) or until a child exits on its own."""
    storefront = plan.proxies[0]
    group = TaskGroup()
    tasks: dict[asyncio.Task[Any], str] = {
        group.spawn(stop.wait(), "demo-stop"): "stop",
             group.spawn(children.first_exit(), "demo-children"): "child"}
    if rps:
        load = generate_load(f"{storefront.url}{LOAD_PATH}", rps, plan.tester_every)
        tasks[group.spawn(load, "demo-load")] = "load"
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finished = {tasks[task]: task for task in done}
    if "stop" in finished:
        say("pyproxy demo: stopping ...")
        return 0
    if "child" in finished:
        child: Child = finished["child"].result()
        return _exit_code_after(child)
    finished["load"].result()  # the load never ends by itself: this raises what stopped it
    raise AssertionError("the load generator returned")


# ------------------------------------------------------------------------------ banner


def _print_banner(plan: Plan, workdir: Path, rps: float) -> None:
    storefront = plan.proxies[0]
    focus = next(proxy for proxy in plan.proxies if proxy.name == plan.focus)
    say()
    say(f"pyproxy demo · {plan.scenario}: {plan.description}")
    say()
    say(f"  dashboard   {focus.admin_url}/   the {focus.name} proxy, where this scenario's "
        "routes are (`pyproxy status` asks it)")
    say(f"  metrics     {focus.admin_url}/metrics")
    say(f"  send to     {storefront.url}{LOAD_PATH}   (Host: storefront; the load goes here)")
    say()
    say("  Every proxy has its own dashboard, on a fixed port:")
    say(f"  {'proxy':<14}{'listens on':<25}{'dashboard (admin)':<25}in front of")
    for proxy in sorted(plan.proxies, key=lambda p: p.admin_port):
        say(f"  {proxy.name:<14}{proxy.url:<25}{proxy.admin_url + '/':<25}{proxy.fronts}")
    say()
    say(f"  configs     {workdir}/{{{','.join(p.name for p in plan.proxies)}}}.yaml  "
        "(edit and save: the proxy reloads)")
    say()
    say(f"  {'service':<18}listens on")
    for fake in plan.fake_services:
        say(f"  {fake.name:<18}{f'http://127.0.0.1:{fake.port}':<25}{fake.description}".rstrip())
    say()
    say(f"  logs        {workdir}/*.log")
    say()
    say("Try:")
    for line in plan.try_next:
        say(f"  {line}")
    say()
    if rps:
        tester = (f"; one in {plan.tester_every} sends `end-user: tester`"
                  if plan.tester_every else "")
        say(f"Load: {rps:g} requests/s to the storefront{tester}; a summary every "
            f"{REPORT_EVERY:.0f}s.")
    say("Ready. Ctrl-C stops everything.")


# ------------------------------------------------------------------------------ load


@dataclass
class LoadStats:
    """What the load generator saw in one reporting window."""

    statuses: Counter[str] = field(default_factory=Counter)  # storefront status, or "no answer"
    answered_by: Counter[str] = field(default_factory=Counter)  # upstream name → calls
    failed_by: Counter[str] = field(default_factory=Counter)  # upstream name → failed calls
    skipped: int = 0  # beats skipped because MAX_IN_FLIGHT requests were pending

    def record(self, status: int | None, body: bytes = b"") -> None:
        self.statuses["no answer" if status is None else str(status)] += 1
        for name, failed in _upstream_results(body):
            self.answered_by[name] += 1
            self.failed_by[name] += failed

    def line(self) -> str:
        total = sum(self.statuses.values())
        if not total:
            return f"{time.strftime('%H:%M:%S')}  no requests"
        ok = sum(n for status, n in self.statuses.items() if status.startswith(("2", "3")))
        statuses = ", ".join(f"{status} ×{n}" for status, n in sorted(self.statuses.items()))
        upstreams = " · ".join(
            f"{name} ×{n}" + (f" ({self.failed_by[name]} failed)" if self.failed_by[name] else "")
            for name, n in sorted(self.answered_by.items()))
        line = f"{time.strftime('%H:%M:%S')}  {total} requests, {ok / total:.0%} ok [{statuses}]"
        if upstreams:
            line += f"  stockmanager: {upstreams}"
        if self.skipped:
            line += f"  ({self.skipped} skipped: too many pending)"
        return line


def _upstream_results(body: bytes) -> list[tuple[str, bool]]:
    """(who answered, whether it failed) for each upstream call in a storefront reply.

    A chained fake service names itself in its JSON body; a proxy-generated error has a
    plain-text body, counted as ``proxy <status>``; no response at all is ``unreachable``.
    """
    try:
        reply = json.loads(body)
        calls = reply.get("upstream_calls", {}).values()
    except (ValueError, AttributeError):
        return []
    results = []
    for call in calls:
        code = call.get("code", -1)
        answer = call.get("body")
        if isinstance(answer, dict) and "name" in answer:
            name = answer["name"]
        elif "error" in call:
            name = "unreachable"
        else:
            name = f"proxy {code}"
        results.append((name, not 0 < code < 500))
    return results


async def generate_load(url: str, rps: float, tester_every: int = 0) -> None:
    """GET ``url`` ``rps`` times a second (``Host: storefront``) until cancelled.

    Requests are paced on a fixed schedule, not one after another, so a slow answer does
    not slow the load down; at most ``MAX_IN_FLIGHT`` are pending at once.
    """
    loop = asyncio.get_running_loop()
    window = LoadStats()
    in_flight: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, headers: dict[str, str]) -> None:
        try:
            async with session.get(url, headers=headers) as response:
                body = await response.read()
        except (TimeoutError, aiohttp.ClientError):
            window.record(None)
            return
        window.record(response.status, body)  # the window current when the answer came

    async def report() -> None:
        nonlocal window
        while True:
            await asyncio.sleep(REPORT_EVERY)
            say(window.line())
            window = LoadStats()

    async with aiohttp.ClientSession(timeout=LOAD_TIMEOUT) as session:
        tasks = TaskGroup()
        reporter = tasks.spawn(report(), "demo-load-report")
        sent = 0
        next_send = loop.time()
        try:
            while True:
                if len(in_flight) < MAX_IN_FLIGHT:
                    headers = {"Host": "storefront"}
                    if tester_every and sent % tester_every == 0:
                        headers["end-user"] = "tester"
                    task = tasks.spawn(one(session, headers), "demo-load-request")
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                else:
                    window.skipped += 1
                sent += 1
                next_send += 1.0 / rps
                await asyncio.sleep(max(0.0, next_send - loop.time()))
        finally:
            reporter.cancel()
            for task in in_flight:
                task.cancel()
            await asyncio.gather(reporter, *in_flight, return_exceptions=True)
