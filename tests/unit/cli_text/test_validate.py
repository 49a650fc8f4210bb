"""``pyproxy validate``: the human summary, the JSON form and the exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyproxy.cli_text.validate import format_duration, validate_command

CONFIG = """\
listen: 0.0.0.0:8080
admin: {listen: 127.0.0.1:9901, token: hunter2}
services:
  shop:
    endpoints:
      - {address: 10.0.0.1:8080, labels: {version: v1}}
      - {address: 10.0.0.2:8080, labels: {version: v1}}
      - {address: "https://shop-v2:8443", labels: {version: v2}}
    subsets: {v1: {version: v1}, v2: {version: v2}}
    load_balancer: {consistent_hash: {header: x-user}}
    connection_pool: {max_connections: 100}
    outlier_detection: {consecutive_5xx: 3}
    health_check: {path: /ready, interval: 2s}
routes:
  - name: shop
    hosts: [shop.example]
    match:
      - path: {prefix: /api}
        method: [GET, POST]
        headers: {x-canary: "yes", x-debug: {present: true}}
      - query: {v: {regex: "2.*"}}
    backends:
      - {service: shop, subset: v1, weight: 2}
      - {service: shop, subset: v2, weight: 1}
    sticky: {cookie: {name: shop-version, ttl: 1h30m}}
    fault: {delay: {fixed: 250ms, percent: 0.1}, abort: {status: 503, percent: 5},
            header_secret: sesame}
    timeout: 15s
    retries: {attempts: 2, per_try_timeout: 1s, status_codes: [503]}
    mirror: {service: shop, subset: v2, percent: 10}
  - name: old
    redirect: {host: shop.example, status: 301}
canaries:
  - {name: shop, route: shop, primary: shop/v1, candidate: shop/v2, max_weight: 30}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> str:
    path = tmp_path / "pyproxy.yaml"
    path.write_text(CONFIG)
    return str(path)


@pytest.fixture
def broken_file(tmp_path: Path) -> str:
    path = tmp_path / "broken.yaml"
    path.write_text("listen: 8080\nroutes:\n  - name: x\n    backends: [{service: nope}]\n")
    return str(path)


def section(text: str, title: str) -> str:
    """The part of the summary under ``title``, up to the next title (an unindented line)."""
    after = text.split(f"\n{title}\n", 1)[1]
    return re.split(r"\n\n(?=\S)", after, maxsplit=1)[0]


def test_summary_shows_routes_with_shares_and_policies(config_file, capsys):
    assert validate_command([config_file], as_json=False) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("valid: 1 file, 2 routes, 1 service, 1 canary, 0 warnings\n")
    assert "admin      127.0.0.1:9901 (token set)" in out
    assert "hunter2" not in out and "sesame" not in out
    routes = section(out, "Routes (first match wins)")
    assert "\n".join([
        "  shop",
        "    hosts      shop.example",
        "    match      path prefix /api, method GET|POST, header x-canary = yes, "
        "header x-debug present",
        "               or query v regex 2.*",
        "    backends   shop/v1  66.7%  (weight 2)",
        "               shop/v2  33.3%  (weight 1)",
        "    sticky     cookie shop-version (ttl 1h30m)",
        "    fault      delay 250ms on 0.1% of requests",
        "               abort 503 on 5% of requests",
        "               header-triggered faults enabled (secret set)",
        "    timeout    15s",
        "    retries    2 retries on connect-failure, reset, gateway-error, "
        "retriable-status-codes 503; 1s per try; backoff 25ms to 250ms",
        "    mirror     shop/v2 (10% of requests)",
    ]) in routes
    assert "redirect   301, host shop.example" in routes


def test_summary_shows_services_and_canaries(config_file, capsys):
    validate_command([config_file], as_json=False)
    out = capsys.readouterr().out
    services = section(out, "Services")
    assert "endpoints  10.0.0.1:8080         version=v1" in services
    assert "           https://shop-v2:8443  version=v2" in services
    assert "subsets    v1  version=v1  2 endpoints" in services
    assert "           v2  version=v2  1 endpoint" in services
    assert "balancer   consistent hash on header x-user" in services
    assert "pool       100 connections" in services
    assert "outlier    eject after 3 consecutive 5xx" in services
    assert "health     GET /ready every 2s, timeout 1s" in services
    canaries = section(out, "Canaries")
    assert "route      shop: shop/v1 -> shop/v2" in canaries
    assert "steps      +10% every 30s, up to 30%" in canaries


def test_summary_lists_warnings_last(tmp_path, capsys):
    path = tmp_path / "w.yaml"
    path.write_text("services: {a: {endpoints: ['a:80']}}\n"
                    "routes: [{name: a, backends: [{service: a, weight: 0}]}]\n")
    assert validate_command([str(path)], as_json=False) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(
        f"Warnings\n  {path}:2: warning: routes[0].backends: every backend has weight 0: "
        "the route answers 503 until a weight is raised")
    assert "a  0.0%  (weight 0)" in out


def test_json_summary(config_file, capsys):
    assert validate_command([config_file], as_json=True) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["valid"] is True and result["errors"] == [] and result["warnings"] == []
    shop = result["routes"][0]
    assert [(b["name"], b["share"]) for b in shop["backends"]] == [("shop/v1", 66.667),
                                                                   ("shop/v2", 33.333)]
    assert shop["matches"][0]["headers"]["x-canary"] == {"kind": "exact", "value": "yes",
                                                         "ignore_case": False, "invert": False}
    assert shop["fault"]["header_secret"] == "<redacted>"
    assert result["admin"] == {"listen": "127.0.0.1:9901", "token": "<redacted>"}
    (service,) = result["services"]
    assert service["name"] == "shop"
    assert service["subset_endpoints"] == {"v1": ["10.0.0.1:8080", "10.0.0.2:8080"],
                                           "v2": ["shop-v2:8443"]}
    assert service["endpoints"][2]["tls"] is True
    assert result["canaries"][0]["candidate"] == "shop/v2"


def test_errors_go_to_stderr_with_file_line_and_path(broken_file, capsys):
    assert validate_command([broken_file], as_json=False) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{broken_file}:1: listen: must be host:port, e.g. '0.0.0.0:8080', got '8080'",
        f"{broken_file}:4: routes[0].backends[0].service: unknown service 'nope'; "
        "services are: none",
        "invalid: 2 errors",
    ]


def test_json_errors(broken_file, capsys):
    assert validate_command([broken_file], as_json=True) == 2
    result = json.loads(capsys.readouterr().out)
    assert result["valid"] is False
    assert result["errors"][0] == {"file": broken_file, "line": 1, "path": "listen",
                                   "message": "must be host:port, e.g. '0.0.0.0:8080', got '8080'"}
    assert len(result["errors"]) == 2 and result["routes"] == [] and result["services"] == []


@pytest.mark.parametrize("fixture, code", [("config_file", 0), ("broken_file", 2)])
def test_python_m_pyproxy_validate_exit_codes(request, fixture, code):
    path = request.getfixturevalue(fixture)
    done = subprocess.run([sys.executable, "-m", "pyproxy", "validate", "--json", path],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert json.loads(done.stdout)["valid"] is (code == 0)


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.025, "25ms"), (0.25, "250ms"), (1, "1s"), (2.5, "2.5s"), (60, "1m"),
    (90, "1m30s"), (3600, "1h"), (5400, "1h30m"), (300, "5m"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_summary_shows_inverted_matches_and_fixed_status_backends():
    from pyproxy.cli_text.validate import _backend_lines, _string_match
    from pyproxy.config.model import Backend, Route, StringMatch

    assert _string_match(StringMatch("exact", "tester", invert=True)) == "!= tester"
    assert _string_match(StringMatch("prefix", "te", invert=True)) == "not prefix te"
    route = Route("r", backends=(Backend("a"), Backend("gone", direct_status=500)))
    assert "answers 500" in " ".join(_backend_lines(route))


# ---------------------------------------------------------------------------- several paths

ALTERNATIVE = "listen: 0.0.0.0:{port}\nservices: {{a: {{endpoints: ['a:80']}}}}\n" \
              "routes: [{{name: a, backends: [{{service: a}}]}}]\n"


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A directory of alternative configs: each valid alone, not together (both set listen
    and define service a and route a)."""
    folder = tmp_path / "examples"
    folder.mkdir()
    (folder / "one.yaml").write_text(ALTERNATIVE.format(port=8080))
    (folder / "two.yaml").write_text(ALTERNATIVE.format(port=8081))
    return folder


def test_a_directory_is_one_config_and_the_output_says_so(examples, capsys):
    assert validate_command([str(examples)], as_json=False) == 2
    err = capsys.readouterr().err
    assert "is already set at" in err and "is already defined at" in err
    assert err.splitlines()[-1] == (
        "invalid: 3 errors (2 files checked as one config, as `pyproxy run -c` reads them; "
        "--each checks each file on its own)")


def test_a_single_file_needs_no_mode_note(config_file, capsys):
    validate_command([config_file], as_json=False)
    assert "checked as one config" not in capsys.readouterr().out


def test_each_checks_every_file_on_its_own(examples, capsys):
    assert validate_command([str(examples)], as_json=False, each=True) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{examples / 'one.yaml'}: valid: 1 file, 1 route, 1 service, 0 canaries, 0 warnings",
        f"{examples / 'two.yaml'}: valid: 1 file, 1 route, 1 service, 0 canaries, 0 warnings",
        "2 of 2 configs valid, each file checked on its own",
    ]


def test_each_reports_per_file_and_fails_when_any_file_is_invalid(examples, broken_file,
                                                                   capsys):
    code = validate_command([str(examples), broken_file, "missing.yaml"], as_json=False,
                            each=True)
    assert code == 2
    out, err = capsys.readouterr()
    assert f"{examples / 'one.yaml'}: valid" in out
    assert f"{broken_file}:1: listen: must be host:port" in err
    assert f"{broken_file}: invalid: 2 errors" in err
    assert "missing.yaml: no such file or directory" in err
    assert err.splitlines()[-1] == "2 of 4 configs valid, each file checked on its own"


def test_each_as_json(examples, broken_file, capsys):
    assert validate_command([str(examples), broken_file], as_json=True, each=True) == 2
    result = json.loads(capsys.readouterr().out)
    assert result["valid"] is False
    assert [(item["path"], item["valid"]) for item in result["each"]] == [
        (str(examples / "one.yaml"), True), (str(examples / "two.yaml"), True),
        (broken_file, False)]
    assert result["each"][0]["routes"][0]["name"] == "a"


def test_python_m_pyproxy_validate_each(examples):
    done = subprocess.run([sys.executable, "-m", "pyproxy", "validate", "--each",
                           str(examples)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "2 of 2 configs valid, each file checked on its own"
def test_when_backend_unavailable_is_parsed_summarised_and_checked(tmp_path, capsys):
    path = tmp_path / "canary.yaml"
    path.write_text("""\
services:
  shop:
    endpoints:
      - {address: 10.0.0.1:8080, labels: {version: v1}}
      - {address: 10.0.0.2:8080, labels: {version: v2}}
    subsets: {v1: {version: v1}, v2: {version: v2}}
routes:
  - name: canary
    backends: [{service: shop, subset: v1, weight: 90}, {service: shop, subset: v2, weight: 10}]
  - name: panicky
    backends: [{service: shop}]
    when_backend_unavailable: panic
  - name: plain
    backends: [{service: shop}]
""")
    assert validate_command([str(path)], as_json=False) == 0
    routes = section(capsys.readouterr().out, "Routes (first match wins)")
    canary, panicky, plain = routes.split("\n\n")
    assert ("unhealthy  failover: its share goes to the other available backends, by weight "
            "(503 UH if none)") in canary
    assert "unhealthy  panic: its share goes to its endpoints anyway" in panicky
    assert "unhealthy" not in plain  # one backend on the default: nowhere to fail over to

    assert validate_command([str(path)], as_json=True) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["when_backend_unavailable"] for r in result["routes"]] == [
        "failover", "panic", "failover"]

    path.write_text(path.read_text().replace("when_backend_unavailable: panic",
                                             "when_backend_unavailable: failvoer"))
    assert validate_command([str(path)], as_json=False) == 2
    err = capsys.readouterr().err
    assert "routes[1].when_backend_unavailable" in err and "did you mean 'failover'?" in err
