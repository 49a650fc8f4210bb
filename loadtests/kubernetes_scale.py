"""In-cluster mode at scale: 1,000 HTTPRoutes and 5,000 endpoints on the fake API server.

    python loadtests/kubernetes_scale.py [--routes 1000] [--pods 5]

A benchmark, not a test: it prints what it measured. pyproxy runs as a real process
(``pyproxy run`` with a ``kubernetes:`` block pointing at tests/support/fake_kube through a
kubeconfig) and the script reports:

- time to first ready: from the process start to ``/readyz`` 200 (every kind listed, one
  config built from all of it and swapped in);
- resident memory at ready (VmRSS) and its peak (VmHWM);
- one HTTPRoute change: the time until a new config is serving, and how many HTTPRoutes
  the importers read again for it;
- one EndpointSlice change (a pod replaced): the same two numbers.

The HTTPRoute importer is counted by running pyproxy through this file (``--child``),
which wraps ``config.compat.gateway_api._http_route`` before starting the CLI and writes
the running count to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
        while True:
            Path(count_file).write_text(str(count))
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


def _snapshots(admin: str) -> dict[str, float]:
    from tests.support.metrics import metric_value

    _, text = _get(admin + "/metrics")
    return {r: metric_value(text, "pyproxy_kubernetes_snapshots_total", result=r)
            for r in ("success", "failure", "endpoints")}


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
                results["rss_mib"] = _proc_mib(proc.pid, "VmRSS")
                results["peak_rss_mib"] = _proc_mib(proc.pid, "VmHWM")
                await asyncio.sleep(1.0)  # let the first build's aftermath settle
                results["imports_at_ready"] = float(count_file.read_text())

                async def one_change(kind: str, change: Callable[[], object],
                                     counter: str) -> None:
                    before = await asyncio.to_thread(_snapshots, admin)
                    imports_before = float(count_file.read_text())
                    t0 = time.monotonic()
                    change()
                    while True:
                        now = await asyncio.to_thread(_snapshots, admin)
                        if now[counter] > before[counter]:
                            break
                        await asyncio.sleep(0.02)
                    results[f"{kind}_change_s"] = time.monotonic() - t0
                    await asyncio.sleep(0.2)  # the count file is written every 50 ms
                    results[f"{kind}_change_reimported"] = \
                        float(count_file.read_text()) - imports_before

                name = f"app-{routes // 2:04d}"
                await one_change("route", lambda: kube.patch(
                    "HTTPRoute", "default", name,
                    {"spec": {"hostnames": [f"{name}.example", "changed.example"]}}),
                    "success")
                await one_change("endpoint", lambda: kube.apply(
                    endpoint_slice(name, routes // 2, pods, generation=1)), "endpoints")
                results["rss_after_mib"] = _proc_mib(proc.pid, "VmRSS")
            finally:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 30)
        results["api_requests"] = float(len(kube.requests))
    return results


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5, help="endpoints per Service")
    args = parser.parse_args()
    results = asyncio.run(measure(args.routes, args.pods))
    print(f"in-cluster scale: {args.routes} HTTPRoutes, {args.routes} Services, "
          f"{args.routes * args.pods} endpoints")
    for key, value in results.items():
        print(f"  {key:28} {value:10.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
