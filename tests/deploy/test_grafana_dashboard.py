"""deploy/grafana/pyproxy-dashboard.json: well-formed, and every metric its queries name is
one a live pyproxy actually exposes.

A proxy is started with routes that make every kind of series appear -- a split, an
injected fault, retries, a mirror, an outlier ejection, a circuit-breaker overflow and a
reload -- and traffic is sent through them. Then each metric name in the dashboard's
``expr``s must be a sample the scrape really has: ``X_bucket``/``X_sum``/``X_count`` of a
histogram family ``X``, ``X_total`` of a counter family ``X``, or the plain name of a gauge.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.deploy.support import DEPLOY
from tests.support.backends import free_port
from tests.support.harness import ProxyProcess
from tests.support.metrics import metric_value
from tests.support.processes import http, wait_status

DASHBOARD = DEPLOY / "grafana" / "pyproxy-dashboard.json"

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    found = []
    for panel in panels:
        found.append(panel)
        found += all_panels(panel.get("panels", []))
    return found


def expressions(board: dict) -> list[str]:
    exprs = [t["expr"] for p in all_panels(board["panels"]) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board.get("annotations", {}).get("list", []) if "expr" in a]
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict) and "query" in query:
            exprs.append(query["query"])
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Label matchers (``{...}``), string literals, range/offset durations, grouping label
    lists (``by (...)``, ``on (...)``, ``group_left (...)``) and Grafana ``$variables`` are
    removed; what is left that is not a function call, keyword or number is a metric name.
    """
    text = re.sub(r"label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)", r" \1 ", expr)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)
    names = set()
    for found in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", text):
        word, call = found.group(1), found.group(2)
        if call or word.lower() in PROMQL_WORDS or word == "label_values":
            continue
        names.add(word)
    return names


def exposed(name: str, families: dict[str, tuple[str, set[str]]]) -> bool:
    """Whether ``name`` is a series of a scraped family that has samples, suffix included:
    ``_bucket``/``_sum``/``_count`` only of a histogram, ``_total`` only of a counter."""
    for suffix, kinds in (("_bucket", {"histogram"}), ("_sum", {"histogram", "summary"}),
                          ("_count", {"histogram", "summary"}), ("_total", {"counter"})):
        if name.endswith(suffix):
            family = families.get(name[: -len(suffix)])
            if family and family[0] in kinds and name in family[1]:
                return True
    family = families.get(name)
    return bool(family and family[0] in ("gauge", "untyped") and name in family[1])


def scrape_families(text: str) -> dict[str, tuple[str, set[str]]]:
    """family name → (type, names of its samples) for families with samples."""
    from prometheus_client.parser import text_string_to_metric_families

    return {family.name: (family.type, {s.name for s in family.samples})
            for family in text_string_to_metric_families(text) if family.samples}


# --------------------------------------------------------------------------- tests


def test_dashboard_json_is_well_formed():
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    panels = all_panels(board["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    for expr in expressions(board):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("success rate", "requests/s", "latency", "configured vs observed", "ejected",
                  "circuit-breaker", "reload"):
        assert topic in titles, topic
    quantiles = [e for e in expressions(board) if "histogram_quantile" in e]
    assert {re.search(r"histogram_quantile\(([\d.]+)", e).group(1) for e in quantiles} \
        == {"0.5", "0.95", "0.99"}
    assert all("pyproxy_request_duration_seconds_bucket" in e and " le" in e.replace("(le", "( le")
               for e in quantiles)


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.99, sum by (le, route) (rate('
                        'pyproxy_request_duration_seconds_bucket{route=~"$route"}'
                        '[$__rate_interval])))') == {"pyproxy_request_duration_seconds_bucket"}
    assert metric_names('sum by (route, backend) (rate(a_total{code!~"5..|none"}[5m])) / '
                        'on (route) group_left sum by (route) (rate(b_total[1m]))') \
        == {"a_total", "b_total"}
    assert metric_names("label_values(pyproxy_backend_weight, route)") == \
        {"pyproxy_backend_weight"}
    families = {"x": ("histogram", {"x_bucket", "x_sum", "x_count"}),
                "c": ("counter", {"c_total"}), "g": ("gauge", {"g"})}
    assert exposed("x_bucket", families) and exposed("c_total", families) and exposed("g", families)
    assert not exposed("c_bucket", families) and not exposed("g_total", families)
    assert not exposed("x", families) and not exposed("c", families)


CONFIG = """
debug_headers: true
services:
  shop:
    endpoints:
      - {{address: "127.0.0.1:{ok}", labels: {{version: v1}}}}
      - {{address: "127.0.0.1:{half}", labels: {{version: v2}}}}
    subsets: {{v1: {{version: v1}}, v2: {{version: v2}}}}
  flaky:
    endpoints: [{{address: "127.0.0.1:{broken}"}}, {{address: "127.0.0.1:{ok}"}}]
    outlier_detection: {{consecutive_5xx: 2, interval: 1s, base_ejection_time: 30s,
                        max_ejection_percent: 50}}
  slow:
    endpoints: [{{address: "127.0.0.1:{slow}"}}]
    connection_pool: {{max_connections: 1, max_pending_requests: 1}}
  broken:
    endpoints: [{{address: "127.0.0.1:{broken}"}}]
routes:
  - name: canary
    hosts: [shop]
    backends:
      - {{service: shop, subset: v1, weight: 90}}
      - {{service: shop, subset: v2, weight: 10}}
    retries: {{attempts: 2, retry_on: [5xx]}}
    mirror: {{service: shop, subset: v1, percent: 100}}
  - name: chaos
    hosts: [chaos]
    backends: [{{service: shop, subset: v1}}]
    fault:
      delay: {{fixed: 5ms, percent: 50}}
      abort: {{status: 503, percent: 50}}
  - name: flaky
    hosts: [flaky]
    backends: [{{service: flaky}}]
  - name: slow
    hosts: [slow]
    backends: [{{service: slow}}]
  - name: retrying              # always fails, so every request is retried (deterministic)
    hosts: [retrying]
    backends: [{{service: broken}}]
    retries: {{attempts: 1, retry_on: [5xx]}}
"""


def test_dashboard_queries_only_metrics_a_live_pyproxy_exposes(tmp_path, processes):
    ports = {name: free_port() for name in ("ok", "half", "broken", "slow")}
    processes.fake_service("ok", ports["ok"])
    processes.fake_service("half", ports["half"], "--error-rate", "0.5")
    processes.fake_service("broken", ports["broken"], "--error-rate", "1")
    processes.fake_service("slow", ports["slow"], "--latency", "300ms")
    for port in ports.values():
        wait_status(f"http://127.0.0.1:{port}/health")
    config = tmp_path / "pyproxy.yaml"
    config.write_text(CONFIG.format(**ports))
    proxy = ProxyProcess(config).start()
    try:
        def get(host: str) -> int:
            return http(f"{proxy.url}/stocklevel", headers={"Host": host}, timeout=10)[0]

        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(get, ["shop"] * 60 + ["chaos"] * 30 + ["flaky"] * 12
                                     + ["retrying"] * 3))
            overflow = list(pool.map(get, ["slow"] * 12))  # one connection, one waiting
        assert 503 in statuses  # the chaos route's injected aborts
        assert 503 in overflow, overflow
        assert http(f"{proxy.admin_url}/api/v1/reload", method="POST")[0] == 200
        text = http(f"{proxy.admin_url}/metrics")[2].decode()
    finally:
        assert proxy.stop() == 0
    assert metric_value(text, "pyproxy_faults_injected_total", route="chaos", kind="abort") > 0
    assert metric_value(text, "pyproxy_circuit_breaker_overflows_total", service="slow") > 0
    assert metric_value(text, "pyproxy_endpoint_ejections_total", service="flaky") > 0
    assert metric_value(text, "pyproxy_retries_total", route="retrying") > 0

    families = scrape_families(text)
    referenced = set().union(*(metric_names(e) for e in expressions(dashboard())))
    assert referenced, "no metric names found in the dashboard"
    missing = sorted(name for name in referenced if not exposed(name, families))
    assert not missing, (f"the dashboard queries metrics this pyproxy does not expose: "
                         f"{missing}; exposed: {sorted(families)}")
    # Every family of docs/metrics.md the proxy exposes has a panel (mirrors and retries included).
    unused = sorted(f for f in families if f.startswith("pyproxy_")
                    and not any(n == f or n.startswith(f + "_") for n in referenced))
    assert not unused, f"exposed but not on the dashboard: {unused}"


@pytest.mark.parametrize("expr", ["rate(pyproxy_requests_bucket[5m])",
                                  "pyproxy_backend_weight_total", "pyproxy_nonexistent"])
def test_a_wrong_name_would_be_caught(expr):
    text = ("# TYPE pyproxy_requests counter\npyproxy_requests_total 1\n"
            "# TYPE pyproxy_backend_weight gauge\npyproxy_backend_weight 0.5\n")
    families = scrape_families(text)
    assert not all(exposed(name, families) for name in metric_names(expr))
