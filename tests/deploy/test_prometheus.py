"""The Prometheus fixture (tests/support/prometheus.py) against one real ``pyproxy run``: it
scrapes the admin port, and a query counts exactly the requests sent."""

from __future__ import annotations

from pathlib import Path

from tests.support.backends import free_port
from tests.support.processes import Processes, http, wait_status
from tests.support.prometheus import Prometheus


def test_prometheus_scrapes_a_running_proxy(processes: Processes, tmp_path: Path) -> None:
    backend, listen, admin = free_port(), free_port(), free_port()
    processes.fake_service("web", backend)
    config = tmp_path / "pyproxy.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{listen}
admin: {{listen: 127.0.0.1:{admin}}}
services:
  web: {{endpoints: [{{address: 127.0.0.1:{backend}}}]}}
routes:
  - {{name: web, hosts: ["*"], backends: [{{service: web}}]}}
""")
    proxy = processes.pyproxy("proxy", "run", "-c", str(config))
    wait_status(f"http://127.0.0.1:{backend}/health")
    wait_status(f"http://127.0.0.1:{admin}/metrics", process=proxy)

    prometheus = Prometheus(targets=[f"127.0.0.1:{admin}"], log_dir=tmp_path)
    try:
        prometheus.wait_for_targets_up()
        assert prometheus.query('up{job="pyproxy"}') == 1.0
        for _ in range(20):
            assert http(f"http://127.0.0.1:{listen}/")[0] == 200
        prometheus.wait_for_scrapes()
        total = 'sum(pyproxy_requests_total{route="web", backend="web", code="200"})'
        assert prometheus.query(total) == 20.0
        # no such series: no value, as Flagger sees an empty result
        assert prometheus.query('sum(pyproxy_requests_total{route="nope"})') is None
    finally:
        prometheus.stop()
