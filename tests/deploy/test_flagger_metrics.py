"""Flagger's and Argo Rollouts' view of pyproxy: every query they would run, rendered as they
render it, sent to a real Prometheus (tests/support/prometheus.py) scraping a real
``pyproxy run`` carrying known traffic, returns the value that traffic implies.

- deploy/kubernetes/flagger/metric-templates.yaml: the canary's success rate and p99
  latency over pyproxy's own series;
- Flagger's built-in ``linkerd`` queries (``provider: linkerd``) over the Linkerd-compatible
  series (``metrics: {linkerd_compat: true}``), their text as data in
  tests/support/prometheus.py, with their source;
- deploy/kubernetes/argo/analysis-template.yaml: the same over pyproxy's series, with Argo's
  ``{{args.NAME}}`` filled in.

The canary ``podinfo-canary`` fails half of its requests (fake-service ``--error-rate 0.5``);
``checkout-canary`` answers after 150 ms (``--latency 150ms``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import DEPLOY
from tests.stats_bounds import assert_binomial
from tests.support.backends import free_port
from tests.support.processes import Processes, http, wait_status
from tests.support.prometheus import (
    LINKERD_DURATION,
    LINKERD_SUCCESS_RATE,
    Prometheus,
    render_flagger_query,
)

TEMPLATES = DEPLOY / "kubernetes" / "flagger" / "metric-templates.yaml"
ANALYSIS = DEPLOY / "kubernetes" / "argo" / "analysis-template.yaml"
NAMESPACE = "test"
INTERVAL = "1m"  # the Canary's analysis.metrics[].interval


def render(query: str, target: str) -> str:
    """The query as Flagger sends it for a Canary named ``target`` in ``NAMESPACE``."""
    return render_flagger_query(query, namespace=NAMESPACE, target=target, interval=INTERVAL)


def argo_queries(**args: str) -> dict[str, str]:
    """The AnalysisTemplate's queries by metric name, ``{{args.NAME}}`` replaced as Argo
    Rollouts does (an argument not given is an error there too)."""
    template = yaml.safe_load(ANALYSIS.read_text())
    assert {a["name"] for a in template["spec"]["args"]} == set(args)
    rendered = {}
    for metric in template["spec"]["metrics"]:
        query = metric["provider"]["prometheus"]["query"]
        for name, value in args.items():
            query = query.replace(f"{{{{args.{name}}}}}", value)
        assert "{{" not in query
        rendered[metric["name"]] = query
    return rendered


def templates() -> dict[str, str]:
    return {doc["metadata"]["name"]: doc["spec"]["query"]
            for doc in yaml.safe_load_all(TEMPLATES.read_text()) if doc}


def test_templates_use_only_fields_flagger_renders() -> None:
    found = templates()
    assert set(found) == {"pyproxy-success-rate", "pyproxy-latency"}
    for query in found.values():
        rendered = render(query, "podinfo")
        assert "{{" not in rendered and "podinfo-canary([.]test)?" in rendered


@pytest.fixture
def proxy(processes: Processes, tmp_path: Path) -> tuple[str, str]:
    """(proxy URL, admin host:port) of a pyproxy carrying two Flagger canaries."""
    ports = {name: free_port() for name in ("podinfo-primary", "podinfo-canary",
                                            "checkout-primary", "checkout-canary")}
    processes.fake_service("podinfo-primary", ports["podinfo-primary"])
    processes.fake_service("podinfo-canary", ports["podinfo-canary"], "--error-rate", "0.5",
                           "--seed", "14")
    processes.fake_service("checkout-primary", ports["checkout-primary"])
    processes.fake_service("checkout-canary", ports["checkout-canary"], "--latency", "150ms")
    listen, admin = free_port(), free_port()
    # The endpoints' labels name the Linkerd workload, as docs/metrics.md says for files
    # (in-cluster mode reads them off the EndpointSlices): the canary Service's pods belong
    # to the target Deployment itself, as Flagger arranges it.
    services = {name: {"endpoints": [{
        "address": f"127.0.0.1:{port}",
        "labels": {"namespace": NAMESPACE, "deployment": name.removesuffix("-canary")}}]}
        for name, port in ports.items()}
    config = tmp_path / "pyproxy.yaml"
    config.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{listen}", "admin": {"listen": f"127.0.0.1:{admin}"},
        "debug_headers": True, "access_log": {"format": "off"},
        "metrics": {"linkerd_compat": True},
        "services": services,
        # as pyproxy names the rule of Flagger's HTTPRoute NAME: NAME-0
        "routes": [{"name": f"{app}-0", "hosts": [app], "backends": [
            {"service": f"{app}-primary", "weight": 50},
            {"service": f"{app}-canary", "weight": 50}]} for app in ("podinfo", "checkout")],
    }))
    process = processes.pyproxy("proxy", "run", "-c", str(config))
    for port in ports.values():
        wait_status(f"http://127.0.0.1:{port}/health")
    wait_status(f"http://127.0.0.1:{admin}/metrics", process=process)
    return f"http://127.0.0.1:{listen}", f"127.0.0.1:{admin}"


def send(url: str, host: str, count: int) -> Counter[tuple[str, int]]:
    """``count`` requests to ``host``, ten at a time: (backend, status) → responses."""
    def one(_: int) -> tuple[str, int]:
        status, headers, _body = http(f"{url}/", headers={"Host": host}, timeout=10.0)
        return headers.get("x-pyproxy-backend", ""), status

    with ThreadPoolExecutor(10) as pool:
        return Counter(pool.map(one, range(count)))


def success_percent(counts: Mapping[tuple[str, int], int], backend: str) -> tuple[float, int]:
    answered = {status: n for (name, status), n in counts.items() if name == backend}
    total = sum(answered.values())
    return 100 * sum(n for status, n in answered.items() if status < 500) / total, total


def test_flagger_queries_report_what_the_traffic_did(proxy: tuple[str, str],
                                                     tmp_path: Path) -> None:
    url, admin = proxy
    prometheus = Prometheus(targets=[admin], log_dir=tmp_path)
    try:
        prometheus.wait_for_targets_up()
        # A few requests first, so every series exists before the counted traffic: a
        # series' first sample is where rate() starts counting.
        primed = send(url, "podinfo", 20) + send(url, "checkout", 10)
        assert {status for (_, status) in primed} == {200, 500}
        prometheus.wait_for_scrapes()
        counts = send(url, "podinfo", 800)
        send(url, "checkout", 300)
        prometheus.wait_for_scrapes()

        observed, n = success_percent(counts, "podinfo-canary")
        assert_binomial(round(observed * n / 100), n, 0.5)
        assert success_percent(counts, "podinfo-primary")[0] == 100
        # priming is at most 20 of the canary's ~400 requests counted here
        tolerance = 100 * 20 / n

        queries = templates()
        success = prometheus.query(render(queries["pyproxy-success-rate"], "podinfo"))
        assert success is not None and abs(success - observed) <= tolerance, (success, observed)
        linkerd_success = prometheus.query(render(LINKERD_SUCCESS_RATE, "podinfo"))
        assert linkerd_success is not None and abs(linkerd_success - observed) <= tolerance
        argo = argo_queries(**{"canary-service": "podinfo-canary"})
        argo_success = prometheus.query(argo["success-rate"])
        assert argo_success is not None and abs(100 * argo_success - observed) <= tolerance

        # the healthy canary: every request below 500
        assert prometheus.query(render(queries["pyproxy-success-rate"], "checkout")) == 100
        assert prometheus.query(render(LINKERD_SUCCESS_RATE, "checkout")) == 100

        # 150 ms answers: p99 inside pyproxy's (100 ms, 250 ms] bucket, Linkerd's (100, 200]
        latency = prometheus.query(render(queries["pyproxy-latency"], "checkout"))
        assert latency is not None and 0.1 < latency <= 0.25, latency
        argo_latency = prometheus.query(
            argo_queries(**{"canary-service": "checkout-canary"})["latency-p99"])
        assert argo_latency is not None and 0.1 < argo_latency <= 0.25, argo_latency
        linkerd_latency = prometheus.query(render(LINKERD_DURATION, "checkout"))
        assert linkerd_latency is not None and 100 < linkerd_latency <= 200, linkerd_latency
        # the canary without --latency reads lower (not a bound: the machine may be busy)
        fast = prometheus.query(render(queries["pyproxy-latency"], "podinfo"))
        assert fast is not None and fast < latency, (fast, latency)

        # the figures, for a run's record (pytest -s or -rP shows them)
        print(f"podinfo-canary: {n} requests, {observed:.1f}% below 500; "
              f"pyproxy-success-rate {success:.1f}, linkerd request-success-rate "
              f"{linkerd_success:.1f}; checkout-canary (150 ms) pyproxy-latency "
              f"{latency:.4f}s, linkerd request-duration {linkerd_latency:.1f}ms, Argo "
              f"latency-p99 {argo_latency:.4f}s; Argo success-rate {argo_success:.3f}; "
              f"podinfo-canary pyproxy-latency {fast:.4f}s")

        # a target with no traffic has no value: Flagger reports "no values found"
        assert prometheus.query(render(queries["pyproxy-success-rate"], "nothing")) is None
        assert prometheus.query(render(LINKERD_SUCCESS_RATE, "nothing")) is None
    finally:
        prometheus.stop()
