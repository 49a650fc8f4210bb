"""A real Prometheus for tests: Debian's ``prometheus`` package (``/usr/bin/prometheus``,
installed by .ci/run) scraping pyproxy admin ports on 127.0.0.1, queried through its HTTP API
as Flagger and Argo Rollouts query it.

    prom = Prometheus(targets=["127.0.0.1:9901"])
    prom.wait_for_targets_up()
    prom.query('sum(rate(pyproxy_requests_total[30s]))')   # a float, or None for no data
    prom.stop()

``render_flagger_query`` and the linkerd provider's queries turn a query into what Flagger
sends. Without the binary the calling test is skipped with the install line, unless ``CI``
is set: there a missing Prometheus is a broken CI machine, and the test fails saying so.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import pytest

from tests.support.backends import free_port
from tests.support.processes import http, stop_process, wait_status, wait_until

PROMETHEUS_BINARY = "/usr/bin/prometheus"  # Debian's path (package ``prometheus``)
INSTALL = "apt-get install -y prometheus"


def prometheus_binary() -> str:
    """The binary's path; skips the calling test without it (fails in CI)."""
    found = PROMETHEUS_BINARY if os.access(PROMETHEUS_BINARY, os.X_OK) else shutil.which(
        "prometheus")
    if found is None:
        message = f"prometheus is not installed ({INSTALL})"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI installs it in .ci/run", pytrace=False)
        pytest.skip(message)
    return found


def scrape_config(targets: list[str], scrape_interval: str, job: str = "pyproxy") -> str:
    """prometheus.yml scraping ``targets`` (``host:port`` admin addresses) at /metrics,
    keeping the exposed labels as docs/metrics.md asks of a scrape (``honor_labels``).
    JSON is YAML, so no YAML writer is needed."""
    return json.dumps({
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [{
            "job_name": job,
            "metrics_path": "/metrics",
            "honor_labels": True,
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "static_configs": [{"targets": list(targets)}],
        }],
    }, indent=2)


class Prometheus:
    """One Prometheus process with its own config and storage in a temporary directory,
    listening on a free 127.0.0.1 port (``url``)."""

    def __init__(self, targets: list[str], scrape_interval: str = "1s",
                 log_dir: Path | None = None) -> None:
        binary = prometheus_binary()
        self.targets = list(targets)
        self._workdir = tempfile.TemporaryDirectory(prefix="pyproxy-prometheus-")
        work = Path(self._workdir.name)
        config = work / "prometheus.yml"
        config.write_text(scrape_config(self.targets, scrape_interval))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = (log_dir or work) / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 # A sample is current for 5 minutes by default; a test that stops a
                 # target wants its series to end sooner.
                 "--query.lookback-delta=30s"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_status(f"{self.url}/-/ready", 200, timeout=30.0, process=self.process)
        except AssertionError:
            self.stop()
            raise AssertionError(f"prometheus did not start:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> object:
        """The ``data`` of a successful API answer (``/api/v1/...``); fails on an error."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        status, _, body = http(url, timeout=10.0)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: {status} {body[:500]!r}")
        return answer["data"]

    def query_vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's samples as (labels, value)."""
        data = self.api("/api/v1/query", query=promql)
        assert isinstance(data, dict)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]

    def query(self, promql: str) -> float | None:
        """An instant query's single value, as Flagger reads it: None when the result is
        empty or NaN (no traffic in the window); fails when it has several series."""
        samples = self.query_vector(promql)
        if not samples:
            return None
        if len(samples) > 1:
            raise AssertionError(f"{promql!r} returned {len(samples)} series: {samples}")
        value = samples[0][1]
        return None if math.isnan(value) else value

    def targets_health(self) -> dict[str, str]:
        """scrape URL's ``host:port`` → ``up``, ``down`` or ``unknown``."""
        data = self.api("/api/v1/targets", state="active")
        assert isinstance(data, dict)
        return {target["labels"]["instance"]: target["health"]
                for target in data["activeTargets"]}

    def wait_for_targets_up(self, timeout: float = 30.0) -> None:
        """Wait until every target has been scraped successfully."""
        def all_up() -> object:
            health = self.targets_health()
            return True if health and all(h == "up" for h in health.values()) else health

        wait_until(all_up, "every target up", timeout, process=self.process)

    def wait_for_value(self, promql: str, timeout: float = 30.0) -> float:
        """Wait until ``promql`` has a value; the value."""
        def has_value() -> object:
            value = self.query(promql)
            return True if value is not None else value

        wait_until(has_value, f"a value for {promql}", timeout, process=self.process)
        value = self.query(promql)
        assert value is not None
        return value

    def wait_for_scrapes(self, count: int = 2) -> None:
        """Wait until every target has been scraped ``count`` more times, so the counters
        as they are now are in the TSDB (``up`` has one sample per scrape)."""
        def scrapes() -> float:
            return self.query("sum(count_over_time(up[1h]))") or 0.0

        wanted = scrapes() + count * len(self.targets)

        def enough() -> object:
            done = scrapes()
            return True if done >= wanted else done

        wait_until(enough, f"{count} more scrapes of each target", 30.0, process=self.process)

    def stop(self) -> None:
        stop_process(self.process, timeout=15.0)
        self._workdir.cleanup()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()



# ---------------------------------------------------------------------------- Flagger's view

# fluxcd/flagger v1.44.0 (commit 15bd6ad555e6c935da55f0ab95977be74c149bd6)
# pkg/metrics/observers/linkerd.go, linkerdQueries (tabs as there; trailing
# spaces dropped: trimQuery folds every run of whitespace into one space anyway).
LINKERD_SUCCESS_RATE = """
	sum(
		rate(
			response_total{
				namespace="{{ namespace }}",
				deployment=~"{{ target }}",
				classification!="failure",
				direction="inbound"
			}[{{ interval }}]
		)
	)
	/
	sum(
		rate(
			response_total{
				namespace="{{ namespace }}",
				deployment=~"{{ target }}",
				direction="inbound"
			}[{{ interval }}]
		)
	)
	* 100"""
LINKERD_DURATION = """
	histogram_quantile(
		0.99,
		sum(
			rate(
				response_latency_ms_bucket{
					namespace="{{ namespace }}",
					deployment=~"{{ target }}",
					direction="inbound"
				}[{{ interval }}]
			)
		) by (le)
	)"""




def render_flagger_query(query: str, *, namespace: str, target: str, interval: str,
                         service: str | None = None, name: str | None = None) -> str:
    """A query (a MetricTemplate's, or a built-in one) as Flagger sends it to Prometheus:
    each ``{{ field }}`` of the MetricTemplateModel (pkg/apis/flagger/v1beta1/metric.go; an
    unknown field is an error, as with Flagger's ``missingkey=error``) filled in for a
    Canary named ``name`` (default: ``target``) in ``namespace``
    (pkg/controller/scheduler_metrics.go toMetricModel: ``service`` is spec.service.name,
    else the target; ``ingress`` and ``route`` are the target without an
    ingressRef/routeRef), then every run of whitespace made one space
    (pkg/metrics/providers/prometheus.go trimQuery)."""
    model = {"name": name or target, "namespace": namespace, "target": target,
             "service": service or target, "ingress": target, "route": target,
             "interval": interval}

    def field(found: re.Match[str]) -> str:
        if found.group(1) not in model:
            raise KeyError(f"Flagger has no template field {found.group(1)!r}")
        return model[found.group(1)]

    return re.sub(r"\s+", " ", re.sub(r"\{\{\s*(\w+)\s*\}\}", field, query))
