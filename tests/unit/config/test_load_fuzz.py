"""Property tests: whatever the input, loading ends in a config or in located issues.

Never in another exception: a traceback from ``pyproxy validate`` or a reload would hide
the message the user needs. Every valid config must also summarise without error.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyproxy.cli_text.validate import config_to_json, format_summary
from pyproxy.config.assemble import assemble
from pyproxy.config.document import Document
from pyproxy.config.load import ConfigInvalid, LoadedConfig, load_config
from pyproxy.config.parse import TOP_LEVEL as TOP_LEVEL_SCHEMA
from pyproxy.config.parse import key_paths

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_FILES = settings(FUZZ, max_examples=100)  # each example writes and reads a file

# Every key the parser accepts, at every level (read from its own schema tables), so random
# structures reach deep into it; apiVersion and kind make some documents manifests.
TOP_LEVEL = [*TOP_LEVEL_SCHEMA.keys, "apiVersion", "kind"]
KEYS = sorted({path.rpartition(".")[2].removesuffix("[]") for path in key_paths()}
              | set(TOP_LEVEL))
SCALARS = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.integers()
           | st.floats() | st.text(max_size=12)
           | st.sampled_from(["250ms", "2s", "1h30m", "0s", "500m", "10.0.0.1:80", "web:80",
                              "web", "web/v1", "v1", "${X}", "${X:-1}", "${UNSET}", "$$", "${",
                              "http://a:1", "https://b:2", "GET", "/", "/(", "*", "503", "5xx"]))
VALUES = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4) | st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5), max_leaves=25)
DOCUMENTS = st.dictionaries(st.sampled_from(TOP_LEVEL), VALUES, max_size=6)

VALID = {
    "listen": "0.0.0.0:8080",
    "services": {"web": {
        "endpoints": [{"address": "10.0.0.1:80", "labels": {"version": "v1"}}, "10.0.0.2:80"],
        "subsets": {"v1": {"version": "v1"}},
        "load_balancer": {"consistent_hash": {"header": "x-user"}},
        "connection_pool": {"max_connections": 10, "connect_timeout": "1s"},
        "outlier_detection": {"consecutive_5xx": 3}, "health_check": {"path": "/health"},
    }},
    "routes": [{
        "name": "web", "hosts": ["web"],
        "match": [{"path": {"prefix": "/"}, "method": ["GET"], "headers": {"x-a": "b"},
                   "query": {"q": {"regex": "a.*"}}}],
        "backends": [{"service": "web", "subset": "v1", "weight": 90},
                     {"service": "web", "weight": "500m"}],
        "sticky": {"cookie": {"name": "c", "ttl": "1h"}},
        "fault": {"delay": {"fixed": "1s", "percent": 1}, "abort": {"status": 503}},
        "timeout": "5s",
        "retries": {"attempts": 2, "status_codes": [503], "backoff": {"base": "10ms"}},
        "mirror": {"service": "web", "percent": 5},
        "headers": {"request": {"set": {"x-b": "c"}, "remove": ["x-c"]}},
        "rewrite": {"path_regex": {"pattern": "^/(.*)$", "substitution": "/v1/\\1"}},
    }, {
        "name": "old", "match": [{"path": {"exact": "/old"}}],
        "redirect": {"path": "/new", "status": 301},
    }],
    "canaries": [{"name": "web", "route": "web", "primary": "web/v1", "candidate": "web",
                  "checks": {"latency_p99_max": "500ms"},
                  "webhooks": [{"type": "rollout", "url": "http://ci/ok"}]}],
    "timeouts": {"drain_delay": "1s"},
}


def check_outcome(outcome: Any, *, every_error_has_a_key_path: bool) -> None:
    """A LoadedConfig or (config, warnings) that summarises, or ConfigInvalid with issues."""
    if isinstance(outcome, ConfigInvalid):
        assert outcome.issues
        for issue in outcome.issues:
            assert issue.file and issue.message and isinstance(issue.path, str)
            assert issue.line is None or issue.line >= 1
            if every_error_has_a_key_path:
                assert issue.path, str(issue)
        return
    loaded = outcome if isinstance(outcome, LoadedConfig) else LoadedConfig(
        outcome[0], outcome[1], ("fuzz.yaml",), "")
    assert format_summary(loaded)
    json.dumps(config_to_json(loaded.config))


def parse(value: Any) -> Any:
    try:
        return assemble([Document("fuzz.yaml", value)], env={"X": "1"})
    except ConfigInvalid as invalid:
        return invalid


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def test_the_valid_base_config_is_valid():
    config, warnings = parse(VALID)
    assert warnings == () and config.routes[0].backends[1].weight == 0.5


@FUZZ
@given(DOCUMENTS)
def test_random_structures(document):
    check_outcome(parse(document), every_error_has_a_key_path=True)


@FUZZ
@given(st.data())
def test_random_changes_to_a_valid_config(data):
    document = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(paths(document))[1:]))
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = data.draw(VALUES)
    check_outcome(parse(document), every_error_has_a_key_path=True)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"


def load_text(path: Path, text: str) -> Any:
    path.write_text(text)
    try:
        return load_config([str(path)], env={"X": "1"})
    except ConfigInvalid as invalid:
        return invalid


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("abx1:-[]{}&*!|>'\"#%@,?<$.\t\n ")),
                    max_size=80))
def test_random_yaml_text(fuzz_file, text):
    check_outcome(load_text(fuzz_file, text), every_error_has_a_key_path=False)


@FUZZ_FILES
@given(documents=st.lists(DOCUMENTS, min_size=1, max_size=3))
def test_random_documents_written_as_yaml(fuzz_file, documents):
    text = yaml.safe_dump_all(documents, sort_keys=False)
    check_outcome(load_text(fuzz_file, text), every_error_has_a_key_path=False)
