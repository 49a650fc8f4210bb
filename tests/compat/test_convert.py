"""``pyproxy convert``: upstream manifests → native YAML that loads back to the same config;
``pyproxy explain`` on imported routes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pyproxy.cli import main
from pyproxy.cli_text.convert import convert
from pyproxy.config.load import load_config
from tests.compat.test_validate_examples import (
    GW,
    ISTIO,
    SERVICES,
    SMI,
    _companions,
    _examples,
)


def _round_trip(files: list[Path], tmp_path: Path) -> str:
    original = load_config([str(f) for f in files])
    text, warnings = convert([str(f) for f in files])
    assert [str(w) for w in warnings] == [str(w) for w in original.warnings]
    out = tmp_path / "converted.yaml"
    out.write_text(text)
    back = load_config([str(out)])
    # What could not be honoured is now a comment, not a field; only the native checks of
    # the result itself (a rule that never matches) can warn again.
    assert all("never matches" in w.message for w in back.warnings), back.warnings
    assert back.config == original.config
    return text


@pytest.mark.parametrize("path,services", list(_examples()))
def test_every_upstream_example_round_trips(path, services, tmp_path):
    _round_trip([services, *_companions(path), path], tmp_path)


def test_mixed_native_and_manifests_round_trip(tmp_path):
    native = tmp_path / "native.yaml"
    native.write_text("""\
listen: 0.0.0.0:8081
debug_headers: true
timeouts: {request_header: 5s}
services:
  web: {endpoints: ["web:80"], health_check: {path: /ready}}
routes:
  - name: web
    hosts: [web.example]
    match: [{path: {prefix: /}, query: {v: {regex: "[0-9]+"}}, cookies: {beta: {present: true}}}]
    backends: [{service: web, weight: 1}]
    sticky: {header: x-user}
    fault: {delay: {fixed: 250ms, percent: 0.5}, scope: attempt}
    retries: {attempts: 3, retry_on: [5xx], backoff: {base: 10ms, max: 1s}}
    headers: {response: {add: {x-from: "pyproxy $$HOME"}}}
canaries:
  - {name: web, route: reviews-1, primary: reviews/v1, candidate: reviews/v2, interval: 1m,
     step_weights: [5, 20, 50]}
""")
    reviews = tmp_path / "reviews.yaml"
    reviews.write_text((ISTIO / "virtual-service-reviews-test-v2.yaml").read_text().replace(
        "        subset: v1\n", "        subset: v1\n      weight: 100\n    - destination:\n"
        "        host: reviews\n        subset: v2\n      weight: 0\n"))
    text = _round_trip([SERVICES / "bookinfo.yaml", native, ISTIO / "destination-rule-all.yaml",
                        reviews], tmp_path)
    assert "x-from: \"pyproxy $$HOME\"" in text


def test_convert_command_keeps_warnings_as_comments(tmp_path, capsys):
    out = tmp_path / "native.yaml"
    code = main(["convert", str(SERVICES / "bookinfo.yaml"),
                 str(ISTIO / "fault-injection-details-v1.yaml"),
                 str(ISTIO / "egress-rule-google-apis.yaml"), "-o", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "never matches" in err and f"wrote {out} (4 warnings kept as comments)" in err
    text = out.read_text()
    lines = text.splitlines()
    # The warning sits right above the route it is about, after the manifest it came from.
    index = lines.index("  - name: details-1")
    assert lines[index - 2].startswith("  # from VirtualService details (")
    assert lines[index - 1].startswith("  # warning: ") and "never matches" in lines[index - 1]
    assert "# warning: " in text and "ServiceEntry googleapis: is not imported" in text
    assert [w.message for w in load_config([str(out)]).warnings] == [
        "never matches: route 'details-0' before it matches every request for these hosts "
        "(first match wins)"]


def test_convert_to_stdout_and_errors(tmp_path, capsys):
    assert main(["convert", str(SERVICES / "smi.yaml"),
                 str(SMI / "traffic-split-v1alpha4-canary.yaml")]) == 0
    out = capsys.readouterr().out
    assert "  - name: canary\n    hosts: [website]\n" in out
    assert "{service: website-v1, weight: 90}" in out
    # Backends without endpoints load (their share answers 503 UH, a warning each); an
    # apex without endpoints that unmatched requests would go to is an error.
    assert main(["convert", str(SMI / "traffic-split-v1alpha4-canary.yaml")]) == 0
    captured = capsys.readouterr()
    assert "{service: website-v1, weight: 90, status: 503}" in captured.out
    assert "backend service 'website-v1' has no endpoints" in captured.err
    assert main(["convert", str(SMI / "traffic-split-v1alpha4-ab-test.yaml")]) == 2
    err = capsys.readouterr().err
    assert "apex service 'website' has no endpoints" in err and "not converted: 1 error" in err


def test_explain_an_imported_route(capsys):
    config = [str(SERVICES / "bookinfo.yaml"), str(ISTIO / "destination-rule-all.yaml"),
              str(ISTIO / "virtual-service-reviews-test-v2.yaml")]
    args = ["explain", "--host", "reviews.default.svc.cluster.local", "--path", "/reviews/1",
            "-H", "end-user: jason", "--json"]
    assert main(args + [arg for path in config for arg in ("-c", path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["route"] == "reviews-0"
    assert "first match wins: route #1" in result["reason"]
    assert "header end-user exact 'jason'" in result["reason"]
    assert [(b["backend"], b["probability"]) for b in result["backends"]] == [("reviews/v2", 1.0)]
    args = ["explain", "--host", "reviews", "--path", "/reviews/1"]
    assert main(args + [arg for path in config for arg in ("-c", path)]) == 0
    text = capsys.readouterr().out
    assert "route reviews-1" in text and "reviews/v1" in text


def test_explain_gateway_api_precedence(capsys):
    config = [SERVICES / "gateway-api.yaml", GW / "base-gateways.yaml",
              GW / "httproute-path-match-order.yaml"]
    args = ["explain", "--host", "gw.example", "--path", "/match/prefix/one/any", "--json"]
    assert main(args + [a for path in config for a in ("-c", str(path))]) == 0
    result = json.loads(capsys.readouterr().out)
    # Rule 5 (the longest prefix) wins over rules 3 and 4, written before it.
    assert result["route"] == "path-matching-order-5"
    assert [c["route"] for c in result["considered"]][:4] == [
        "path-matching-order-2", "path-matching-order-1", "path-matching-order-0",
        "path-matching-order-5"]


def test_the_configuration_reference_examples_round_trip(tmp_path):
    """docs/configuration.md's examples use nearly every native key; converting them gives
    back the same config."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.DOTALL)
    examples = tmp_path / "examples.yaml"
    examples.write_text("\n---\n".join(blocks))
    _round_trip([examples], tmp_path)


def test_every_timeout_is_written_as_a_duration(tmp_path):
    native = tmp_path / "native.yaml"
    native.write_text("timeouts: {request_header: 1s, body_idle: 2s, keep_alive: 3s, "
                      "tunnel_idle: 2h, drain_delay: 250ms, drain_timeout: 1m}\n"
                      "services: {web: {endpoints: ['web:80']}}\n")
    text = _round_trip([native], tmp_path)
    assert "tunnel_idle: \"7200s\"" in text
