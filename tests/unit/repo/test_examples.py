"""Every shipped config loads cleanly: the examples in config/ and each demo scenario's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pyproxy.config.load import load_config
from pyproxy.demo.scenarios import SCENARIOS, Ports, build_plan

EXAMPLES = sorted((Path(__file__).parents[3] / "config").glob("*.yaml"))


def test_the_examples_are_there():
    assert {path.name for path in EXAMPLES} >= {
        "pyproxy.yaml", "canary-90-10.yaml", "zipkin-fault.yaml", "dark-launch.yaml",
        "blue-green.yaml", "test-user-faults.yaml"}


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
