"""Loading native config: files → model, and every error located by file:line and key path."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from pyproxy.config.load import ConfigInvalid, ConfigIssue, LoadedConfig, load_config
from pyproxy.config.model import (
    Address,
    Backend,
    ConsistentHash,
    Endpoint,
    HeaderChanges,
    Mirror,
    PathMatch,
    Redirect,
    Rewrite,
    StringMatch,
)

SPEC_EXAMPLE = """\
listen: 0.0.0.0:8080
admin: {listen: 127.0.0.1:9901, token: "${PYPROXY_ADMIN_TOKEN:-}"}
debug_headers: false

services:
  stockmanager:
    endpoints:
      - {address: 10.0.0.5:8081, labels: {version: 0.0.1}}
      - {address: stockmanager-v2:8081, labels: {version: 0.0.2}}
    subsets: {v1: {version: 0.0.1}, v2: {version: 0.0.2}}
    load_balancer: round_robin
    connection_pool: {max_connections: 256, max_pending_requests: 256, max_requests: 1024,
                      max_retries: 3, connect_timeout: 2s, idle_timeout: 60s}
    outlier_detection: {consecutive_5xx: 5, consecutive_gateway_errors: 0, interval: 10s,
                        base_ejection_time: 30s, max_ejection_time: 300s,
                        max_ejection_percent: 50, min_healthy_endpoints: 1}
    health_check: {path: /health, interval: 5s, timeout: 1s, healthy_threshold: 1,
                   unhealthy_threshold: 3}

routes:
  - name: stockmanager
    hosts: [stockmanager, "*.shop.example"]
    match:
      - path: {prefix: /}
        method: [GET, POST]
        headers: {end-user: {exact: tester}}
        query: {debug: {exact: "1"}}
        cookies: {canary: {exact: always}}
    backends:
      - {service: stockmanager, subset: v1, weight: 90}
      - {service: stockmanager, subset: v2, weight: 10}
    sticky: {cookie: {name: pyproxy-stockmanager, ttl: 1h}}
    fault:
      delay: {fixed: 2.5s, percent: 10}
      abort: {status: 503, percent: 5}
    timeout: 15s
    retries: {attempts: 2, per_try_timeout: 1s, retry_on: [connect-failure, reset, gateway-error],
              status_codes: [503], backoff: {base: 25ms, max: 250ms}}
    mirror: {service: stockmanager, subset: v2, percent: 10}
    headers: {request: {set: {}, add: {}, remove: []}, response: {set: {}, add: {}, remove: []}}
    rewrite: {path_prefix: /api, host: internal.example}

canaries:
  - name: stockmanager
    route: stockmanager
    primary: stockmanager/v1
    candidate: stockmanager/v2
    interval: 30s
    step_weight: 10
    max_weight: 50
    threshold: 3
    min_requests: 20
    checks: {success_rate_min: 99, latency_p99_max: 500ms}
    webhooks: [{type: confirm-promotion, url: "http://ci.example/ok", timeout: 5s}]
"""

SERVICES = """\
services:
  web:
    endpoints:
      - {address: 10.0.0.1:80, labels: {version: v1}}
      - {address: 10.0.0.2:80, labels: {version: v2}}
    subsets: {v1: {version: v1}, v2: {version: v2}}
"""


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> LoadedConfig:
    return load_config([write(tmp_path, "pyproxy.yaml", text)], env=env or {})


def errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigInvalid) as caught:
        load(tmp_path, text, env)
    assert caught.value.issues, "ConfigInvalid without issues"
    return list(caught.value.issues)


def only_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigIssue:
    found = errors(tmp_path, text, env)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line containing ``needle``."""
    for number, line in enumerate(textwrap.dedent(text).splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


def with_route(route: str) -> str:
    """SERVICES plus one route given as YAML lines (indented for a list item)."""
    return SERVICES + "routes:\n" + textwrap.indent(textwrap.dedent(route), "  ")


# ---------------------------------------------------------------------------- the whole format


def test_spec_example_loads_into_the_model(tmp_path):
    loaded = load(tmp_path, SPEC_EXAMPLE)
    config = loaded.config
    assert loaded.warnings == ()
    assert config.listen == Address("0.0.0.0", 8080)
    assert config.admin.listen == Address("127.0.0.1", 9901) and config.admin.token == ""

    service = config.services["stockmanager"]
    assert service.endpoints[1] == Endpoint("stockmanager-v2", 8081, {"version": "0.0.2"})
    assert service.subset_endpoints("v1") == (service.endpoints[0],)
    assert service.connection_pool.connect_timeout == 2.0
    assert service.outlier_detection.max_ejection_time == 300.0
    assert service.health_check.unhealthy_threshold == 3

    (route,) = config.routes
    assert route.hosts == ("stockmanager", "*.shop.example")
    (match,) = route.matches
    assert match.path == PathMatch("prefix", "/")
    assert match.methods == ("GET", "POST")
    assert match.headers == (("end-user", StringMatch("exact", "tester")),)
    assert match.query == (("debug", StringMatch("exact", "1")),)
    assert [(b.name, b.weight) for b in route.backends] == [("stockmanager/v1", 90.0),
                                                            ("stockmanager/v2", 10.0)]
    assert route.sticky.cookie.ttl == 3600.0
    assert route.fault.delay.fixed == 2.5 and route.fault.abort.percent == 5.0
    assert route.timeout == 15.0
    assert route.retries.backoff.base == 0.025 and route.retries.per_try_timeout == 1.0
    assert route.mirrors == (Mirror("stockmanager", "v2", 10.0),)
    assert route.rewrite.path_prefix == "/api"

    (canary,) = config.canaries
    assert canary.checks.latency_p99_max == 0.5 and canary.webhooks[0].timeout == 5.0


def test_an_empty_file_gives_the_defaults_and_a_warning(tmp_path):
    loaded = load(tmp_path, "# nothing yet\n")
    assert loaded.config.listen == Address("0.0.0.0", 8080)
    assert loaded.config.timeouts.drain_timeout == 20.0
    assert loaded.warnings == ()  # no document at all: nothing to warn about
    loaded = load(tmp_path, "listen: 127.0.0.1:8080\n")
    assert [w.message for w in loaded.warnings] == [
        "no routes and no services: every request gets 404"]


def test_the_model_is_frozen(tmp_path):
    config = load(tmp_path, SPEC_EXAMPLE).config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes[0].timeout = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------- scalars


@pytest.mark.parametrize("text, seconds", [
    ("250ms", 0.25), ("2.5s", 2.5), ("1m", 60.0), ("1h30m", 5400.0), ("1h", 3600.0),
    ("0s", 0.0), ("1m30s", 90.0),
])
def test_durations(tmp_path, text, seconds):
    config = load(tmp_path, f"timeouts: {{drain_delay: {text}}}\n").config
    assert config.timeouts.drain_delay == pytest.approx(seconds)


@pytest.mark.parametrize("value, message", [
    ("5", "durations need a unit, e.g. '2s' or '250ms', got 5"),
    ("'5'", "durations need a unit, e.g. '2s' or '250ms', got '5'"),
    ("5x", "must be a duration such as '250ms', '2.5s', '1m' or '1h30m', got '5x'"),
    ("-1s", "must be a duration such as '250ms', '2.5s', '1m' or '1h30m', got '-1s'"),
    ("[1s]", "must be a duration such as '2s', got a list"),
])
def test_bad_durations(tmp_path, value, message):
    text = f"timeouts:\n  drain_delay: {value}\n"
    issue = only_error(tmp_path, text)
    assert (issue.line, issue.path, issue.message) == (2, "timeouts.drain_delay", message)


def test_timeouts_must_be_positive(tmp_path):
    issue = only_error(tmp_path, "timeouts: {keep_alive: 0s}\n")
    assert issue.message == "must be more than 0s, got '0s'"


@pytest.mark.parametrize("percent", [0, 0.1, 12.5, 100])
def test_percentages_accept_fractions(tmp_path, percent):
    config = load(tmp_path, with_route(f"""\
        - name: web
          backends: [{{service: web}}]
          fault: {{delay: {{fixed: 1s, percent: {percent}}}}}
        """)).config
    assert config.routes[0].fault.delay.percent == percent


@pytest.mark.parametrize("percent", ["101", "-1", "ten", "true"])
def test_percentages_outside_0_to_100_are_errors(tmp_path, percent):
    text = with_route(f"""\
        - name: web
          backends: [{{service: web}}]
          fault:
            abort: {{status: 503, percent: {percent}}}
        """)
    issue = only_error(tmp_path, text)
    assert issue.path == "routes[0].fault.abort.percent"
    assert issue.message.startswith("must be a percentage from 0 to 100, got ")
    assert issue.line == line_of(text, "abort:")


@pytest.mark.parametrize("weight, expected", [
    ("500m", 0.5), ("1500m", 1.5), ("0.25", 0.25), ("3", 3.0), ("0", 0.0), ("'7'", 7.0),
])
def test_weights(tmp_path, weight, expected):
    config = load(tmp_path, with_route(f"""\
        - name: web
          backends: [{{service: web, subset: v1, weight: {weight}}}, {{service: web, subset: v2}}]
        """)).config
    assert [b.weight for b in config.routes[0].backends] == [expected, 1.0]


def test_a_bad_weight_is_reported_at_its_line_and_key_path(tmp_path):
    text = with_route("""\
        - name: web
          backends:
            - {service: web, subset: v1, weight: 90}
            - {service: web, subset: v2, weight: ten}
        """)
    issue = only_error(tmp_path, text)
    assert str(issue) == (f"{tmp_path / 'pyproxy.yaml'}:{line_of(text, 'weight: ten')}: "
                          "routes[0].backends[1].weight: must be a non-negative number "
                          "(or a milli-quantity such as '500m'), got 'ten'")


def test_negative_weights_are_errors(tmp_path):
    issue = only_error(tmp_path, with_route("""\
        - name: web
          backends: [{service: web, weight: -1}]
        """))
    assert issue.path == "routes[0].backends[0].weight" and "got -1" in issue.message


@pytest.mark.parametrize("status", [99, 199, 600, "'abc'"])
def test_abort_status_must_be_a_final_status(tmp_path, status):
    issue = only_error(tmp_path, with_route(f"""\
        - name: web
          backends: [{{service: web}}]
          fault: {{abort: {{status: {status}}}}}
        """))
    assert issue.path == "routes[0].fault.abort.status"
    assert issue.message.startswith("must be a whole number from 200 to 599")


# ---------------------------------------------------------------------------- environment


def test_variables_are_substituted_in_string_values(tmp_path):
    text = SERVICES + """\
listen: "${HOST}:${PORT:-8080}"
admin: {token: "${TOKEN}"}
routes:
  - name: web
    backends: [{service: web, subset: v1, weight: "${CANARY_WEIGHT:-10}"}]
    timeout: "${TIMEOUT:-3s}"
    headers: {request: {set: {x-price: "$$5", x-empty: "${EMPTY:-fallback}"}}}
"""
    config = load(tmp_path, text, env={"HOST": "127.0.0.1", "TOKEN": "s3cret", "EMPTY": ""}).config
    assert config.listen == Address("127.0.0.1", 8080)
    assert config.admin.token == "s3cret"
    route = config.routes[0]
    assert route.backends[0].weight == 10.0
    assert route.timeout == 3.0
    assert route.headers.request.set == (("x-price", "$5"), ("x-empty", "fallback"))


def test_a_set_variable_wins_over_its_default(tmp_path):
    config = load(tmp_path, 'listen: "0.0.0.0:${PORT:-8080}"\n', env={"PORT": "9000"}).config
    assert config.listen.port == 9000


def test_an_unset_variable_without_default_is_an_error_naming_it(tmp_path):
    text = "listen: 0.0.0.0:8080\nadmin:\n  token: ${ADMIN_TOKEN}\n"
    issue = only_error(tmp_path, text)
    assert (issue.line, issue.path) == (3, "admin.token")
    assert issue.message == ("environment variable ADMIN_TOKEN is not set "
                             "(write ${ADMIN_TOKEN:-default} to give a default)")


def test_load_config_reads_os_environ_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("PYPROXY_TEST_PORT", "8123")
    path = write(tmp_path, "a.yaml", 'listen: "127.0.0.1:${PYPROXY_TEST_PORT}"\n')
    assert load_config([path]).config.listen.port == 8123


# ---------------------------------------------------------------------------- keys and types


@pytest.mark.parametrize("text, path, message", [
    ("lisen: 0.0.0.0:80\n", "lisen", "unknown key 'lisen'; did you mean 'listen'?"),
    ("timeouts: {drain: 1s}\n", "timeouts.drain",
     "unknown key 'drain'; did you mean 'drain_delay'?"),
    (with_route("- name: web\n  backend: {service: web}\n  backends: [{service: web}]\n"),
     "routes[0].backend", "unknown key 'backend'; did you mean 'backends'?"),
    ("metrics: {zzz: 1}\n", "metrics.zzz", "unknown key 'zzz'; expected one of: linkerd_compat"),
])
def test_unknown_keys_suggest_the_closest_known_key(tmp_path, text, path, message):
    issue = only_error(tmp_path, text)
    assert (issue.path, issue.message) == (path, message)


@pytest.mark.parametrize("text, path, message", [
    ("routes: {name: web}\n", "routes", "must be a list of routes, got a mapping"),
    ("services: [web]\n", "services",
     "must be a mapping of service name to service, got a list"),
    (with_route("- name: web\n  hosts: web.example\n  backends: [{service: web}]\n"),
     "routes[0].hosts", "must be a list, got 'web.example'"),
    (with_route("- name: web\n  backends: [web]\n"), "routes[0].backends[0]",
     "must be a mapping, got 'web'"),
    ("debug_headers: maybe\n", "debug_headers", "must be true or false, got 'maybe'"),
    ("- listen\n", "", "a config document must be a mapping with keys such as listen, "
                       "services and routes; got a list"),
])
def test_wrong_types_say_what_was_expected(tmp_path, text, path, message):
    issue = only_error(tmp_path, text)
    assert (issue.path, issue.message) == (path, message)


@pytest.mark.parametrize("route, path, message", [
    ("- name: web\n", "routes[0]",
     "needs one of 'backends', 'redirect' or 'direct_response'"),
    ("- name: web\n  backends: [{service: web}]\n  direct_response: {status: 200}\n",
     "routes[0].direct_response", "cannot be combined with 'backends': give exactly one of "
                                  "'backends', 'redirect' or 'direct_response'"),
    ("- name: web\n  backends: [{service: web}]\n  match: [{path: {exact: /a, prefix: /}}]\n",
     "routes[0].match[0].path.prefix",
     "cannot be combined with 'exact': give exactly one of 'exact', 'prefix', 'regex' or "
     "'segment_prefix'"),
    ("- name: web\n  backends: [{service: web}]\n  match: [{headers: {x-a: {}}}]\n",
     "routes[0].match[0].headers.x-a", "needs one of 'exact', 'prefix', 'suffix', 'regex', "
                                       "'present' or 'absent'"),
    ("- name: web\n  backends: [{service: web}]\n  sticky: {header: x-user, cookie: {name: c}}\n",
     "routes[0].sticky.header",
     "cannot be combined with 'cookie': give exactly one of 'cookie' or 'header'"),
    ("- name: web\n  backends: [{service: web}]\n  mirror: {service: web}\n"
     "  mirrors: [{service: web}]\n", "routes[0].mirrors",
     "cannot be combined with 'mirror': give at most one of 'mirror' or 'mirrors'"),
    ("- name: web\n  backends: [{service: web}]\n  match: [{path: /api}]\n",
     "routes[0].match[0].path", "must be a mapping such as {prefix: /api} or {exact: /api}"),
    ("- name: web\n  backends: [{service: web}]\n  match: [{headers: {x-a: {present: false}}}]\n",
     "routes[0].match[0].headers.x-a.present", "must be true (leave the key out otherwise)"),
    ("- name: web\n  redirect: {}\n", "routes[0].redirect",
     "needs at least one of 'scheme', 'host', 'port', 'path' or 'path_prefix'"),
    ("- name: web\n  redirect: {host: a.example, status: 305}\n", "routes[0].redirect.status",
     "must be one of 301, 302, 303, 307, 308, got 305"),
])
def test_exactly_one_of_and_other_route_rules(tmp_path, route, path, message):
    issue = only_error(tmp_path, with_route(route))
    assert (issue.path, issue.message) == (path, message)


def test_matches_normalise_names_and_accept_plain_strings(tmp_path):
    config = load(tmp_path, with_route("""\
        - name: web
          backends: [{service: web}]
          match:
            - method: get
              headers: {X-Canary: "yes", X-Version: 2, x-debug: {present: true}}
              cookies: {user: {regex: "a.*"}}
            - path: {regex: "/v[0-9]+/.*", ignore_case: true}
              query: {q: {suffix: ".json"}}
        """)).config
    first, second = config.routes[0].matches
    assert first.methods == ("GET",)
    assert first.headers == (("x-canary", StringMatch("exact", "yes")),
                             ("x-version", StringMatch("exact", "2")),
                             ("x-debug", StringMatch("present")))
    assert first.cookies == (("user", StringMatch("regex", "a.*")),)
    assert second.path == PathMatch("regex", "/v[0-9]+/.*", ignore_case=True)
    assert second.query == (("q", StringMatch("suffix", ".json")),)


def test_hosts_are_lower_cased_and_star_means_any(tmp_path):
    config = load(tmp_path, with_route("""\
        - name: a
          hosts: [Web.Example, "*.Shop.Example"]
          match: [{path: {prefix: /a}}]
          backends: [{service: web}]
        - name: b
          hosts: ["*"]
          backends: [{service: web}]
        """)).config
    assert config.routes[0].hosts == ("web.example", "*.shop.example")
    assert config.routes[1].hosts == ()


def test_invalid_regexes_name_the_key(tmp_path):
    text = with_route("""\
        - name: web
          backends: [{service: web}]
          match:
            - path: {regex: "/("}
        """)
    issue = only_error(tmp_path, text)
    assert issue.path == "routes[0].match[0].path.regex"
    assert issue.line == line_of(text, "regex:")
    assert issue.message.startswith("is not a valid regular expression: missing )")


def test_rewrite_regex_group_references_are_checked(tmp_path):
    issue = only_error(tmp_path, with_route(r"""
        - name: web
          backends: [{service: web}]
          rewrite: {path_regex: {pattern: "^/v1/(.*)$", substitution: "/\\2"}}
        """))
    assert issue.path == "routes[0].rewrite.path_regex.substitution"
    assert issue.message == "refers to group '2', which the pattern does not have"


def test_redirects_direct_responses_and_mirrors(tmp_path):
    config = load(tmp_path, with_route("""\
        - name: moved
          match: [{path: {prefix: /old}}]
          redirect: {scheme: https, path_prefix: /new, status: 308}
        - name: teapot
          match: [{path: {exact: /tea}}]
          direct_response: {status: 418, body: "short and stout"}
        - name: web
          backends: [{service: web}]
          mirrors: [{service: web, subset: v2, percent: 0.5}, {service: web}]
          websocket: false
        """)).config
    moved, teapot, web = config.routes
    assert moved.redirect == Redirect(scheme="https", path_prefix="/new", status=308)
    assert teapot.direct_response.status == 418 and teapot.direct_response.body == "short and stout"
    assert web.mirrors == (Mirror("web", "v2", 0.5), Mirror("web"))
    assert web.websocket is False


def test_retries(tmp_path):
    config = load(tmp_path, with_route("""\
        - name: web
          backends: [{service: web}]
          retries: {attempts: 3, retry_on: [5xx], status_codes: [503, 504], buffer_bytes: 0}
        """)).config
    retries = config.routes[0].retries
    assert retries.attempts == 3 and retries.buffer_bytes == 0
    # status codes given: retrying on them is implied
    assert retries.retry_on == ("5xx", "retriable-status-codes")
    assert retries.status_codes == (503, 504)


@pytest.mark.parametrize("retries, path, message", [
    ("{retry_on: [retriable-status-codes]}", "routes[0].retries.retry_on",
     "retriable-status-codes needs status_codes, e.g. [503]"),
    ("{backoff: {base: 1s, max: 100ms}}", "routes[0].retries.backoff",
     "base must not be longer than max"),
    ("{retry_on: [gateway_error]}", "routes[0].retries.retry_on[0]",
     "must be one of 5xx, gateway-error, connect-failure, reset, retriable-status-codes, "
     "got 'gateway_error'; did you mean 'gateway-error'?"),
    ("{attempts: -1}", "routes[0].retries.attempts", "must be a whole number, 0 or more, got -1"),
])
def test_bad_retries(tmp_path, retries, path, message):
    issue = only_error(tmp_path, with_route(f"""\
        - name: web
          backends: [{{service: web}}]
          retries: {retries}
        """))
    assert (issue.path, issue.message) == (path, message)


# ---------------------------------------------------------------------------- services


def test_endpoint_forms_and_load_balancers(tmp_path):
    config = load(tmp_path, """\
        services:
          a:
            endpoints: [10.0.0.1:80, "http://b.local:8080/", "https://c.local:8443", "[::1]:9000"]
            load_balancer: least_request
          b:
            endpoints: [{address: "https://d.local:443"}]
            load_balancer: {consistent_hash: {header: X-User}}
        """).config
    a, b = config.services["a"], config.services["b"]
    assert [(e.host, e.port, e.tls) for e in a.endpoints] == [
        ("10.0.0.1", 80, False), ("b.local", 8080, False), ("c.local", 8443, True),
        ("::1", 9000, False)]
    assert a.load_balancer.kind == "least_request"
    assert b.endpoints[0].tls is True
    assert b.load_balancer.kind == "consistent_hash"
    assert b.load_balancer.hash_on == ConsistentHash(header="x-user")


@pytest.mark.parametrize("service, path, message", [
    ("{endpoints: [web]}", "services.web.endpoints[0]",
     "needs a port: host:port, e.g. 'web:8080'"),
    ("{endpoints: ['ftp://web:21']}", "services.web.endpoints[0]",
     "only http:// and https:// endpoints are supported, got 'ftp://web:21'"),
    ("{endpoints: ['web:70000']}", "services.web.endpoints[0]",
     "has port 70000; ports are 1 to 65535"),
    ("{endpoints: []}", "services.web.endpoints", "must not be empty"),
    ("{subsets: {}}", "services.web.endpoints", "is required"),
    ("{endpoints: ['web:80'], subsets: {v1: {version: v1}}}", "services.web.subsets.v1",
     "selects no endpoint: none has labels version=v1"),
    ("{endpoints: ['web:80'], load_balancer: consistent_hash}", "services.web.load_balancer",
     "consistent_hash needs a key: {consistent_hash: {header: NAME}} "
     "(or cookie: NAME, or source_ip: true)"),
    ("{endpoints: ['web:80', 'web:80']}", "services.web.endpoints[1]",
     "endpoint web:80 is listed twice"),
    ("{endpoints: [{address: 'web:80', labels: {version: 1.0}}]}",
     "services.web.endpoints[0].labels.version", "must be a string, got 1.0 (put it in quotes)"),
    ("{endpoints: ['web:80'], health_check: {path: health}}", "services.web.health_check.path",
     "must start with '/', got 'health'"),
])
def test_bad_services(tmp_path, service, path, message):
    issue = only_error(tmp_path, f"services:\n  web: {service}\n")
    assert (issue.path, issue.message) == (path, message)


@pytest.mark.parametrize("name", [
    "web", "web.shop", "web.shop.svc", "web.shop.svc.cluster.local"])
def test_kubernetes_service_names_resolve_to_the_native_service(tmp_path, name):
    config = load(tmp_path, with_route(f"""\
        - name: web
          backends: [{{service: {name}, subset: v1}}]
          mirror: {{service: {name}}}
        """)).config
    assert config.routes[0].backends == (Backend("web", "v1"),)
    assert config.routes[0].mirrors == (Mirror("web"),)


@pytest.mark.parametrize("backend, path, message", [
    ("{service: web.shop.cluster}", "routes[0].backends[0].service",
     "unknown service 'web.shop.cluster'; a Kubernetes name is NAME.NS, NAME.NS.svc or "
     "NAME.NS.svc.cluster.local"),
    ("{service: wbe}", "routes[0].backends[0].service",
     "unknown service 'wbe'; did you mean 'web'?"),
    ("{service: zzz}", "routes[0].backends[0].service",
     "unknown service 'zzz'; services are: web"),
    ("{service: web, subset: v3}", "routes[0].backends[0].subset",
     "service 'web' has no subset 'v3' (subsets: v1, v2)"),
])
def test_backends_must_name_known_services_and_subsets(tmp_path, backend, path, message):
    issue = only_error(tmp_path, with_route(f"- name: web\n  backends: [{backend}]\n"))
    assert (issue.path, issue.message) == (path, message)


def test_a_broken_service_is_reported_once_not_again_by_its_routes(tmp_path):
    issue = only_error(tmp_path, """\
        services:
          web: {endpoints: [web]}
        routes:
          - name: web
            backends: [{service: web, subset: v1}]
        """)
    assert issue.path == "services.web.endpoints[0]"


# ---------------------------------------------------------------------------- many errors


def test_every_error_of_a_file_is_reported_with_its_line(tmp_path):
    text = """\
        listen: 8080
        services:
          web:
            endpoints: [web:80]
            load_balancer: fastest
        routes:
          - name: web
            backends: [{service: web, weight: -2}]
            timeout: 10
          - name: web
            backends: [{service: nope}]
        """
    found = errors(tmp_path, text)
    assert [(issue.line, issue.path) for issue in found] == [
        (line_of(text, "listen"), "listen"),
        (line_of(text, "load_balancer"), "services.web.load_balancer"),
        (line_of(text, "weight: -2"), "routes[0].backends[0].weight"),
        (line_of(text, "timeout"), "routes[0].timeout"),
        (line_of(text, "nope"), "routes[1].backends[0].service"),
    ]
    assert all(issue.file == str(tmp_path / "pyproxy.yaml") for issue in found)


def test_config_invalid_lists_one_issue_per_line(tmp_path):
    with pytest.raises(ConfigInvalid) as caught:
        load(tmp_path, "listen: 8080\nlimits: {max_headers: 0}\n")
    file = tmp_path / "pyproxy.yaml"
    assert str(caught.value).splitlines() == [
        f"{file}:1: listen: must be host:port, e.g. '0.0.0.0:8080', got '8080'",
        f"{file}:2: limits.max_headers: must be a whole number, 1 or more, got 0",
    ]


def test_issue_formats():
    assert str(ConfigIssue("a.yaml", 3, "routes[0]", "oops")) == "a.yaml:3: routes[0]: oops"
    assert str(ConfigIssue("a.yaml", None, "", "no such file")) == "a.yaml: no such file"
    assert str(ConfigIssue("a.yaml", 7, "x", "hm", "warning")) == "a.yaml:7: warning: x: hm"


# ---------------------------------------------------------------------------- files and merging


def test_a_directory_merges_its_yaml_files_in_name_order(tmp_path):
    write(tmp_path, "20-routes.yml", """\
        routes:
          - name: b
            match: [{path: {prefix: /b}}]
            backends: [{service: web}]
        ---
        routes:
          - name: c
            backends: [{service: web}]
        """)
    write(tmp_path, "10-services.yaml", SERVICES + textwrap.dedent("""\
        routes:
          - name: a
            match: [{path: {prefix: /a}}]
            backends: [{service: web}]
        """))
    write(tmp_path, "notes.txt", "not: config")
    write(tmp_path, ".#10-services.yaml", "an editor's lock file: [")
    loaded = load_config([str(tmp_path)], env={})
    assert loaded.files == (str(tmp_path / "10-services.yaml"), str(tmp_path / "20-routes.yml"))
    assert [route.name for route in loaded.config.routes] == ["a", "b", "c"]


def test_a_file_given_twice_is_read_once(tmp_path):
    path = write(tmp_path, "a.yaml", SERVICES)
    assert load_config([str(tmp_path), path], env={}).files == (path,)


def test_a_service_defined_twice_names_both_places(tmp_path):
    first = write(tmp_path, "a.yaml", SERVICES)
    write(tmp_path, "b.yaml", "listen: 0.0.0.0:80\n" + SERVICES)
    issue = only_error_in([str(tmp_path)])
    assert (issue.file, issue.line, issue.path) == (str(tmp_path / "b.yaml"), 3, "services.web")
    assert issue.message == f"service 'web' is already defined at {first}:2"


def test_a_setting_given_by_two_documents_names_both_places(tmp_path):
    path = write(tmp_path, "a.yaml", "listen: 0.0.0.0:80\n---\nlisten: 0.0.0.0:81\n")
    issue = only_error_in([path])
    assert (issue.line, issue.path) == (3, "listen")
    assert issue.message == f"'listen' is already set at {path}:1; set it in one document only"


def test_route_names_are_unique_across_files(tmp_path):
    first = write(tmp_path, "a.yaml", with_route("- name: web\n  backends: [{service: web}]\n"))
    write(tmp_path, "b.yaml", "routes:\n  - name: web\n    direct_response: {status: 204}\n")
    issue = only_error_in([str(tmp_path)])
    assert (issue.file, issue.path) == (str(tmp_path / "b.yaml"), "routes[0].name")
    assert issue.message == f"route 'web' is already defined at {first}:8"


def test_mesh_manifests_are_imported_with_located_issues(tmp_path):
    # The importers themselves are tested in tests/compat; here: issues keep file and line.
    path = write(tmp_path, "mesh.yaml", SERVICES + textwrap.dedent("""\
        ---
        apiVersion: networking.istio.io/v1beta1
        kind: VirtualService
        metadata: {name: web}
        ---
        apiVersion: split.smi-spec.io/v1alpha4
        kind: TrafficSplit
        """))
    with pytest.raises(ConfigInvalid) as raised:
        load_config([path])
    assert [(issue.line, issue.path, issue.message) for issue in raised.value.issues] == [
        (12, "metadata", "must be a mapping with at least a name")]
    assert [(issue.line, issue.message) for issue in raised.value.warnings] == [
        (8, "VirtualService web: has no hosts, so it is only a delegate, and no "
            "VirtualService delegates to it: it routes nothing")]


def test_yaml_syntax_errors_of_every_file_are_reported_with_their_lines(tmp_path):
    write(tmp_path, "a.yaml", "routes:\n  - name: web\n    backends: [{service: web}\n")
    write(tmp_path, "b.yaml", "listen: 0.0.0.0:80\n  admin: x\n")
    found = errors_in([str(tmp_path)])
    assert [(Path(issue.file).name, issue.line) for issue in found] == [
        ("a.yaml", 4), ("b.yaml", 2)]
    assert all(issue.message.startswith("invalid YAML: ") for issue in found)


def test_duplicate_yaml_keys_are_errors(tmp_path):
    issue = only_error(tmp_path, "listen: 0.0.0.0:80\nadmin: {}\nlisten: 0.0.0.0:81\n")
    assert (issue.line, issue.path, issue.message) == (
        3, "listen", "duplicate key 'listen' (first at line 1)")


def test_anchors_and_merge_keys_work(tmp_path):
    config = load(tmp_path, """\
        services:
          a: &base
            endpoints: [a:80]
            connection_pool: &pool {max_connections: 10, connect_timeout: 1s}
          b:
            <<: *base
            endpoints: [b:80]
            connection_pool: {<<: *pool, max_connections: 20}
        """).config
    assert config.services["b"].endpoints[0].host == "b"
    assert config.services["b"].connection_pool.max_connections == 20
    assert config.services["b"].connection_pool.connect_timeout == 1.0


@pytest.mark.parametrize("text, line, message", [
    ("a: &x [*x]\n", 1, "an alias refers to a mapping or list that contains it"),
    ("listen: 2001-13-45\n", 1,
     "'2001-13-45' is not a valid timestamp (quote it if you mean text)"),
    ("listen: !custom x\n", 1, "could not determine a constructor for the tag '!custom'"),
    ("? [a]\n: 1\n", 1, "keys must be plain strings, not lists or mappings"),
])
def test_yaml_oddities_are_issues(tmp_path, text, line, message):
    issue = only_error(tmp_path, text)
    assert (issue.line, issue.message) == (line, message)


def test_missing_paths_and_empty_directories(tmp_path):
    (tmp_path / "empty").mkdir()
    found = errors_in([str(tmp_path / "nope.yaml"), str(tmp_path / "empty")])
    assert [(issue.file, issue.line, issue.message) for issue in found] == [
        (str(tmp_path / "nope.yaml"), None, "no such file or directory"),
        (str(tmp_path / "empty"), None, "no *.yaml or *.yml files in this directory"),
    ]


def test_the_digest_changes_only_with_the_files(tmp_path):
    path = write(tmp_path, "a.yaml", SERVICES)
    first = load_config([path], env={}).digest
    assert load_config([path], env={}).digest == first
    write(tmp_path, "a.yaml", SERVICES + "listen: 0.0.0.0:81\n")
    assert load_config([path], env={}).digest != first


# ---------------------------------------------------------------------------- warnings


def test_warnings(tmp_path):
    text = with_route("""\
        - name: dark
          backends: [{service: web, subset: v1, weight: 0}, {service: web, subset: v2, weight: 0}]
        - name: hidden
          hosts: [web.example, web.example]
          match: [{path: {prefix: /}}]
          backends: [{service: web}]
        """)
    loaded = load(tmp_path, text)
    assert [(w.line, w.path, w.message) for w in loaded.warnings] == [
        (line_of(text, "backends: [{service: web, subset: v1, weight: 0}"), "routes[0].backends",
         "every backend has weight 0: the route answers 503 until a weight is raised"),
        (line_of(text, "name: hidden"), "routes[1]",
         "never matches: route 'dark' before it matches every request for these hosts "
         "(first match wins)"),
        (line_of(text, "hosts: [web.example"), "routes[1].hosts[1]",
         "host 'web.example' is listed twice"),
    ]
    assert all(w.severity == "warning" for w in loaded.warnings)


def test_warnings_travel_with_errors(tmp_path):
    with pytest.raises(ConfigInvalid) as caught:
        load(tmp_path, SERVICES + "admin: {listen: 0.0.0.0:9901}\nlisten: 80\n")
    assert [issue.path for issue in caught.value.issues] == ["listen"]
    assert [issue.path for issue in caught.value.warnings] == ["admin"]


# ---------------------------------------------------------------------------- canaries


def test_canaries(tmp_path):
    text = with_route("""\
        - name: web
          backends: [{service: web, subset: v1, weight: 100}, {service: web, subset: v2, weight: 0}]
        """) + """\
canaries:
  - {name: web, route: web, primary: web/v1, candidate: web/v2, step_weights: [5, 10, 50]}
"""
    config = load(tmp_path, text).config
    (canary,) = config.canaries
    assert canary.step_weights == (5.0, 10.0, 50.0) and canary.step_weight == 10.0
    assert canary.interval == 30.0


@pytest.mark.parametrize("canary, path, message", [
    ("{name: c, route: api, primary: web/v1, candidate: web/v2}", "canaries[0].route",
     "unknown route 'api'"),
    ("{name: c, route: web, primary: web/v1, candidate: web/v3}", "canaries[0].candidate",
     "'web/v3' is not a backend of route 'web' (backends: web/v1, web/v2)"),
    ("{name: c, route: web, primary: web/v1, candidate: web/v1}", "canaries[0].candidate",
     "must differ from primary"),
    ("{name: c, route: web, primary: web/v1, candidate: web/v2, step_weights: [10, 5]}",
     "canaries[0].step_weights", "must increase step by step, e.g. [5, 10, 25, 50]"),
    ("{name: c, route: web, primary: web/v1, candidate: web/v2, step_weight: 0}",
     "canaries[0].step_weight", "must be more than 0"),
    ("{name: c, route: web, primary: web/v1, candidate: web/v2, webhooks: [{type: gate, url: x}]}",
     "canaries[0].webhooks[0].type", "must be one of pre-rollout, rollout, confirm-promotion, "
                                     "post-rollout, rollback, got 'gate'"),
])
def test_bad_canaries(tmp_path, canary, path, message):
    text = with_route("""\
        - name: web
          backends: [{service: web, subset: v1}, {service: web, subset: v2}]
        """)
    found = errors(tmp_path, text + f"canaries:\n  - {canary}\n")
    assert [(issue.path, issue.message) for issue in found][:1] == [(path, message)]


# ---------------------------------------------------------------------------- helpers


def errors_in(paths: list[str]) -> list[ConfigIssue]:
    with pytest.raises(ConfigInvalid) as caught:
        load_config(paths, env={})
    return list(caught.value.issues)


def only_error_in(paths: list[str]) -> ConfigIssue:
    found = errors_in(paths)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def test_backend_own_response_headers_rewrite_and_redirect(tmp_path: Path) -> None:
    loaded = load(tmp_path, """\
        services:
          a: {endpoints: ["10.0.0.1:80"]}
        routes:
          - name: main
            backends:
              - service: a
                response_headers: {add: {set-cookie: "c=1"}}
                rewrite: {path_full: /v2}
              - {service: moved, redirect: {host: example.com, status: 301}}
        """)
    own, moved = loaded.config.routes[0].backends
    assert own.response_headers == HeaderChanges(add=(("set-cookie", "c=1"),))
    assert own.rewrite == Rewrite(path_full="/v2")
    # A redirecting backend answers by itself: its service only names it.
    assert moved.redirect == Redirect(host="example.com", status=301)
    issue = only_error(tmp_path, """\
        services:
          a: {endpoints: ["10.0.0.1:80"]}
        routes:
          - name: main
            backends: [{service: a, status: 503, redirect: {host: example.com}}]
        """)
    assert issue.path == "routes[0].backends[0].status" and "redirect" in issue.message
