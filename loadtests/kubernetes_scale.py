"""In-cluster mode at scale: 1,000 HTTPRoutes and 5,000 endpoints on the fake API server.

    python loadtests/kubernetes_scale.py [--routes 1000] [--pods 5] [--json]

A benchmark, not a test: it prints what it measured. pyproxy runs as a real process
(``pyproxy run`` with a ``kubernetes:`` block pointing at tests/support/fake_kube through a
kubeconfig) and the script reports:

- time to first ready: from the process start to ``/readyz`` 200 (every kind listed, one
  config built from all of it and swapped in);
- resident memory at ready (VmRSS) and its peak (VmHWM);
- one HTTPRoute change: the time until a new config is serving, and how many HTTPRoutes
  the importers read again for it;
- one EndpointSlice change (a pod replaced): the same two numbers;
- one status-only change (another controller's entry in one route's status): how many
  HTTPRoutes it re-imports (nothing served depends on it).

The HTTPRoute importer is counted by running pyproxy through this file (``--child``),
which wraps ``config.compat.gateway_api._http_route`` before starting the CLI and writes
the running count to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.fake_kube import FakeKube

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support, when run as a script


def child(count_file: str, argv: list[str]) -> int:
    """Inside the pyproxy process: count HTTPRoute imports, then run the CLI."""
    from pyproxy import cli
    from pyproxy.config.compat import gateway_api

    count = 0
    original = gateway_api._http_route

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        return original(*args, **kwargs)

    gateway_api._http_route = counted

    def publish() -> None:
        target = Path(count_file)
        scratch = target.with_suffix(".tmp")
        while True:
            scratch.write_text(str(count))
            scratch.replace(target)  # atomic: a reader never sees a half-written number
            time.sleep(0.05)

    threading.Thread(target=publish, daemon=True).start()
    return cli.main(argv)


def populate(kube: FakeKube, routes: int, pods: int) -> None:
    from tests.integration.kubernetes.cluster import CONTROLLER
    from tests.support.fake_kube import GATEWAY_GROUP

    kube.apply({"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "GatewayClass",
                "metadata": {"name": "pyproxy"}, "spec": {"controllerName": CONTROLLER}})
    kube.apply({"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "Gateway",
                "metadata": {"name": "public", "namespace": "default"},
                "spec": {"gatewayClassName": "pyproxy",
                         "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}})
    for i in range(routes):
        name = f"app-{i:04d}"
        kube.apply({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        kube.apply(endpoint_slice(name, i, pods, generation=0))
        kube.apply({"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "HTTPRoute",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"parentRefs": [{"name": "public"}],
                             "hostnames": [f"{name}.example"],
                             "rules": [{"backendRefs": [{"name": name, "port": 80}]}]}})


def endpoint_slice(service: str, index: int, pods: int, generation: int) -> dict[str, Any]:
    from tests.integration.kubernetes.cluster import SERVICE_NAME_LABEL

    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-slice", "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": [f"10.{index // 250}.{index % 250}.{10 * generation + p}"],
                 "conditions": {"ready": True}} for p in range(pods)]}


def _progress(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


def _proc_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _serves_host(admin: str, host: str) -> bool:
    _, text = _get(admin + "/api/v1/routes")
    return any(host in route["hosts"] for route in json.loads(text or '{"routes": []}')
               ["routes"])


def _has_endpoint(admin: str, service: str, address: str) -> bool:
    _, text = _get(admin + "/api/v1/services")
    return any(s["name"] == service and address in {e["address"] for e in s["endpoints"]}
               for s in json.loads(text or '{"services": []}')["services"])


def _count(count_file: Path) -> float:
    return float(count_file.read_text())


async def settle(count_file: Path, quiet: float = 2.5, limit: float = 120.0,
                 ) -> tuple[float, float]:
    """Wait until the import count has not moved for ``quiet`` seconds (the leader's first
    status writes, and whatever they set off, are over): (seconds it took, the count)."""
    started = last_change = time.monotonic()
    count = _count(count_file)
    while time.monotonic() - last_change < quiet and time.monotonic() - started < limit:
        await asyncio.sleep(0.1)
        now = _count(count_file)
        if now != count:
            count, last_change = now, time.monotonic()
    return last_change - started, count


async def measure(routes: int, pods: int) -> dict[str, float]:
    from pyproxy.demo import ports
    from tests.support.fake_kube import FakeKube

    results: dict[str, float] = {}
    async with FakeKube() as kube:
        started = time.monotonic()
        populate(kube, routes, pods)
        results["populate_s"] = time.monotonic() - started
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = kube.kubeconfig_path(tmp)
            config = Path(tmp) / "pyproxy.yaml"
            config.write_text(f"kubernetes:\n  kubeconfig: {json.dumps(str(kubeconfig))}\n"
                              "  namespaces: [default]\n  batch_delay: 100ms\n")
            count_file = Path(tmp) / "imports"
            listen, admin_port = ports.free_ports(2)
            admin = f"http://127.0.0.1:{admin_port}"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--child", str(count_file), "--", "run", "-c",
                str(config), "--listen", f"127.0.0.1:{listen}", "--admin",
                f"127.0.0.1:{admin_port}",
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
            try:
                spawned = time.monotonic()
                while (await asyncio.to_thread(_get, admin + "/readyz"))[0] != 200:
                    if proc.returncode is not None:
                        raise SystemExit(f"pyproxy exited {proc.returncode}")
                    if time.monotonic() - spawned > 300:
                        raise SystemExit("pyproxy not ready within 300 s")
                    await asyncio.sleep(0.05)
                results["ready_s"] = time.monotonic() - spawned
                _progress(f"ready after {results['ready_s']:.2f}s")
                results["rss_mib"] = _proc_mib(proc.pid, "VmRSS")
                results["peak_rss_mib"] = _proc_mib(proc.pid, "VmHWM")
                await asyncio.sleep(0.2)  # the count file is written every 50 ms
                results["imports_at_ready"] = _count(count_file)
                results["settle_s"], results["imports_settled"] = await settle(count_file)
                _progress(f"settled after {results['settle_s']:.2f}s")

                async def one_change(kind: str, change: Callable[[], object],
                                     applied: Callable[[], bool]) -> None:
                    """Make ``change``; time it until ``applied`` (read from the admin
                    API) and count the HTTPRoute imports it set off."""
                    imports_before = _count(count_file)
                    t0 = time.monotonic()
                    change()
                    while not await asyncio.to_thread(applied):
                        if time.monotonic() - t0 > 120:
                            raise SystemExit(f"the {kind} change was not applied in 120 s")
                        await asyncio.sleep(0.05)
                    results[f"{kind}_change_s"] = time.monotonic() - t0
                    _progress(f"{kind} change applied")
                    _, imports = await settle(count_file)
                    results[f"{kind}_change_reimported"] = imports - imports_before

                name = f"app-{routes // 2:04d}"
                await one_change("route", lambda: kube.patch(
                    "HTTPRoute", "default", name,
                    {"spec": {"hostnames": [f"{name}.example", "changed.example"]}}),
                    lambda: _serves_host(admin, "changed.example"))
                moved = endpoint_slice(name, routes // 2, pods, generation=1)
                address = f"{moved['endpoints'][0]['addresses'][0]}:8080"
                await one_change("endpoint", lambda: kube.apply(moved),
                                 lambda: _has_endpoint(admin, name, address))
                # Another controller's entry in one route's status: status only, the same
                # generation. Nothing pyproxy serves depends on it.
                route = kube.get("HTTPRoute", "default", name)
                route["status"] = {"parents": [{
                    "parentRef": {"name": "elsewhere"}, "controllerName": "example.com/other",
                    "conditions": []}, *(route.get("status") or {}).get("parents", [])]}
                await one_change("status", lambda: kube.apply(route), lambda: True)
                results["rss_after_mib"] = _proc_mib(proc.pid, "VmRSS")
            finally:
                _progress("stopping pyproxy")
                proc.send_signal(signal.SIGINT)  # SIGTERM would wait out the drain delay
                await asyncio.wait_for(proc.wait(), 30)
        results["api_requests"] = float(len(kube.requests))
    return results


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5, help="endpoints per Service")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--deadline", type=float, default=900,
                        help="give up (and stop pyproxy) after this many seconds")
    args = parser.parse_args()
    results = asyncio.run(asyncio.wait_for(measure(args.routes, args.pods), args.deadline))
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"in-cluster scale: {args.routes} HTTPRoutes, {args.routes} Services, "
          f"{args.routes * args.pods} endpoints")
    for key, value in results.items():
        print(f"  {key:28} {value:10.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
