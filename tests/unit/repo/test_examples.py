"""Every shipped config loads cleanly on its own (the examples in config/ are alternatives,
one per lab, and are run one at a time), and so does each demo scenario's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pyproxy.config.load import load_config
from pyproxy.demo.scenarios import FOCUS, SCENARIOS, V2_FAILS, Ports, admin_ports, build_plan

REPO = Path(__file__).parents[3]
EXAMPLES = sorted((REPO / "config").glob("*.yaml")) + sorted(
    (REPO / "docs" / "tutorials" / "configs").glob("*.yaml"))


def test_the_examples_are_there():
    assert {path.name for path in EXAMPLES} >= {
        "pyproxy.yaml", "canary-90-10.yaml", "zipkin-fault.yaml", "dark-launch.yaml",
        "blue-green.yaml", "test-user-faults.yaml", "sticky-canary.yaml", "circuit-breaker.yaml"}


def test_config_readme_lists_every_example():
    readme = (REPO / "config" / "README.md").read_text()
    for path in EXAMPLES:
        assert f"{path.name}" in readme, path.name


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_loads_without_errors_or_warnings(path):
    loaded = load_config([str(path)])
    assert loaded.config.routes
    assert not loaded.warnings, [str(warning) for warning in loaded.warnings]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_demo_scenario_configs_load_without_errors_or_warnings(scenario, tmp_path):
    plan = build_plan(scenario, Ports(*range(20001, 20011)), tmp_path)
    for proxy in plan.proxies:
        proxy.config_path.write_text(yaml.safe_dump(proxy.config, sort_keys=False))
        loaded = load_config([str(proxy.config_path)])
        assert [route.name for route in loaded.config.routes] == [
            route["name"] for route in proxy.config["routes"]]
        assert not loaded.warnings, [str(warning) for warning in loaded.warnings]


def test_canary_scenario_splits_90_10():
    plan = build_plan("canary", Ports(*range(20001, 20011)), Path("/nowhere"))
    stockmanager = plan.proxies[1].config
    assert [(b["subset"], b["weight"]) for b in stockmanager["routes"][0]["backends"]] == [
        ("v1", 90), ("v2", 10)]


def test_dark_launch_keeps_v2_at_weight_0_so_the_shift_is_a_weight_change():
    loaded = load_config([str(REPO / "config" / "dark-launch.yaml")])
    default = next(route for route in loaded.config.routes if route.name == "stockmanager")
    assert [(b.subset, b.weight) for b in default.backends] == [("v1", 100), ("v2", 0)]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_only_the_failure_scenarios_have_a_failing_v2(scenario):
    plan = build_plan(scenario, Ports(*range(20001, 20011)), Path("/nowhere"))
    v2 = next(fake for fake in plan.fake_services if fake.name == "stockmanager-v2")
    assert (v2.error_rate > 0) == (scenario in {"canary", "circuit-breaker"}) == (
        scenario in V2_FAILS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_scenarios_proxy_gets_the_first_admin_port(scenario):
    ports = admin_ports(scenario, 9901)
    assert ports[FOCUS[scenario]] == 9901
    assert sorted(ports.values()) == [9901, 9902, 9903]
    assert ports["storefront"] == 9902
    assert FOCUS["chaos"] == "zipkin" and FOCUS["canary"] == "stockmanager"
