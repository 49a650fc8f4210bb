"""DNS discovery with a fake resolver and a fake clock: which names are resolved, what
counts as a change, the last good answer, and the runtime's endpoints after each round."""

from __future__ import annotations

import asyncio
import socket

import pytest

from pyproxy.config.load import ConfigInvalid, load_config
from pyproxy.config.model import (
    Backend,
    Config,
    DnsDiscovery,
    Endpoint,
    OutlierDetection,
    Route,
    Service,
)
from pyproxy.discovery.dns import (
    Answers,
    DnsWatcher,
    canonical_answer,
    names_to_resolve,
)
from pyproxy.runtime import Runtime


class FakeResolver:
    """Answers from a table; a name mapped to an exception raises it."""

    def __init__(self, table: dict[str, list[str] | Exception]):
        self.table = table
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        answer = self.table[host]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dns_config(*endpoints: Endpoint, interval: float = 5.0, outlier: bool = False) -> Config:
    service = Service("stock", endpoints, subsets={"v2": {"version": "v2"}},
                      discovery=DnsDiscovery(interval),
                      outlier_detection=OutlierDetection(consecutive_5xx=1) if outlier else None)
    return Config(services={"stock": service},
                  routes=(Route("r", backends=(Backend("stock", "v2"),)),))


V2 = Endpoint("stock-v2", 8081, {"version": "v2"})


def watcher(config: Config, resolver: FakeResolver) -> tuple[DnsWatcher, Runtime, FakeClock]:
    runtime = Runtime()
    runtime.swap(runtime.compile(config))
    clock = FakeClock()
    return DnsWatcher(runtime, resolver, clock=clock, wall_clock=clock), runtime, clock


def addresses(runtime: Runtime) -> list[str]:
    return [ep.address for ep in runtime.current.config.services["stock"].endpoints]


def backend_addresses(runtime: Runtime) -> list[str]:
    return [ep.address for ep in runtime.current.routes["r"].backends[0].endpoints]


# ---------------------------------------------------------------------------- pure parts


def test_only_names_of_discovered_services_are_resolved():
    config = Config(services={
        "a": Service("a", (Endpoint("a-host", 80), Endpoint("10.0.0.1", 80),
                           Endpoint("::1", 81)), discovery=DnsDiscovery(2.0)),
        "b": Service("b", (Endpoint("b-host", 80),)),  # no discovery: connected by name
    })
    assert names_to_resolve(config) == {("a", "a-host", 80): 2.0}


def test_answer_order_and_duplicates_are_not_a_change():
    assert canonical_answer(["10.0.0.2", "10.0.0.10", "10.0.0.2", "::1"]) == (
        "10.0.0.2", "10.0.0.10", "::1")
    answers = Answers()
    key = ("s", "h", 80)
    assert answers.record(key, ["10.0.0.2", "10.0.0.1"], now=1.0) is True
    assert answers.record(key, ["10.0.0.1", "10.0.0.2", "10.0.0.1"], now=2.0) is False
    assert answers.names[key].resolved_at == 2.0


def test_failure_and_empty_answer_keep_the_last_good():
    answers = Answers()
    key = ("s", "h", 80)
    answers.record(key, ["10.0.0.1"], now=1.0)
    assert answers.record(key, socket.gaierror(-2, "Name or service not known"), now=2.0) is False
    assert answers.names[key].addresses == ("10.0.0.1",)
    assert "Name or service not known" in (answers.names[key].error or "")
    assert answers.record(key, [], now=3.0) is False
    assert answers.resolved() == {key: ("10.0.0.1",)}
    assert answers.names[key].resolved_at == 1.0
    assert answers.record(key, ["10.0.0.1"], now=4.0) is False  # recovered, same answer
    assert answers.names[key].error is None


def test_a_name_removed_by_a_reload_is_forgotten():
    answers = Answers()
    answers.record(("s", "old", 80), ["10.0.0.1"], now=1.0)
    assert answers.retain([("s", "new", 80)]) is True
    assert set(answers.names) == {("s", "new", 80)}
    assert answers.retain([("s", "new", 80)]) is False  # nothing with an answer went away


# ---------------------------------------------------------------------------- the loop


async def test_one_endpoint_per_address_with_the_names_labels():
    resolver = FakeResolver({"stock-v2": ["10.0.0.3", "10.0.0.1", "10.0.0.2"]})
    dns, runtime, _ = watcher(dns_config(V2), resolver)
    assert addresses(runtime) == ["stock-v2:8081"]  # before the first answer: by name
    generation = runtime.generation
    assert await dns.step() is True
    assert addresses(runtime) == ["10.0.0.1:8081", "10.0.0.2:8081", "10.0.0.3:8081"]
    assert backend_addresses(runtime) == addresses(runtime)  # the v2 subset still selects
    endpoints = runtime.current.config.services["stock"].endpoints
    assert all(ep.labels == {"version": "v2"} and ep.hostname == "stock-v2" for ep in endpoints)
    assert runtime.generation == generation  # no file changed
    # The declared config is untouched: a reload or a later answer starts from the name.
    assert runtime.current.declared.services["stock"].endpoints == (V2,)


async def test_resolved_on_the_interval_only():
    resolver = FakeResolver({"stock-v2": ["10.0.0.1"]})
    dns, _, clock = watcher(dns_config(V2, interval=5.0), resolver)
    await dns.step()
    clock.now += 4.9
    await dns.step()
    assert len(resolver.calls) == 1
    assert dns.next_wait() == pytest.approx(0.1)
    clock.now += 0.1
    await dns.step()
    assert resolver.calls == [("stock-v2", 8081)] * 2


async def test_shrinking_answer_removes_the_address_and_keeps_the_rest():
    resolver = FakeResolver({"stock-v2": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]})
    dns, runtime, clock = watcher(dns_config(V2), resolver)
    await dns.step()
    kept = runtime.current.routes["r"].backends[0].endpoints[0]
    leaving = runtime.current.routes["r"].backends[0].endpoints[2]
    old_snapshot = runtime.current
    resolver.table["stock-v2"] = ["10.0.0.1", "10.0.0.2"]
    clock.now += 5
    assert await dns.step() is True
    assert addresses(runtime) == ["10.0.0.1:8081", "10.0.0.2:8081"]
    # Live state carried over for the address that stayed (the same object, same pool).
    assert runtime.current.routes["r"].backends[0].endpoints[0] is kept
    # The old snapshot still holds the removed endpoint: requests on it finish there.
    assert leaving in old_snapshot.routes["r"].backends[0].endpoints
    assert runtime.endpoint_state("stock", leaving.endpoint) is None
    # Its pool is retired: connections close when their request ends instead of idling.
    assert leaving.pool.retired and not kept.pool.retired
    assert runtime.pools.get("stock", "10.0.0.3", 8081) is not leaving.pool  # if it returns


async def test_resolution_failing_keeps_the_last_good_answer(caplog):
    resolver = FakeResolver({"stock-v2": ["10.0.0.1", "10.0.0.2"]})
    dns, runtime, clock = watcher(dns_config(V2), resolver)
    await dns.step()
    resolver.table["stock-v2"] = socket.gaierror(-3, "Temporary failure in name resolution")
    for _ in range(3):
        clock.now += 5
        assert await dns.step() is False
    assert addresses(runtime) == ["10.0.0.1:8081", "10.0.0.2:8081"]
    warnings = [r for r in caplog.records if "cannot resolve" in r.getMessage()]
    assert len(warnings) == 1  # once per failure streak
    assert dns.describe("stock")[0]["error"] is not None
    resolver.table["stock-v2"] = ["10.0.0.2"]
    clock.now += 5
    assert await dns.step() is True
    assert addresses(runtime) == ["10.0.0.2:8081"]
    assert dns.describe("stock") == [{"name": "stock-v2:8081", "addresses": ["10.0.0.2"],
                                      "resolved_at": clock.now, "error": None}]


async def test_a_name_that_never_resolved_stays_one_endpoint_by_name():
    resolver = FakeResolver({"stock-v2": socket.gaierror(-2, "Name or service not known")})
    dns, runtime, _ = watcher(dns_config(V2), resolver)
    assert await dns.step() is False
    assert addresses(runtime) == ["stock-v2:8081"]


async def test_new_addresses_start_clean_for_outlier_detection():
    resolver = FakeResolver({"stock-v2": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]})
    dns, runtime, clock = watcher(dns_config(V2, outlier=True), resolver)
    await dns.step()
    detector = runtime.services["stock"].detector
    assert detector is not None
    detector.record("10.0.0.1:8081", "5xx")
    assert detector.describe("10.0.0.1:8081")["ejected"]
    # 10.0.0.1 leaves and comes back: a new container behind an old address starts clean.
    resolver.table["stock-v2"] = ["10.0.0.2", "10.0.0.3"]
    clock.now += 5
    await dns.step()
    assert set(detector.describe_all()) == {"10.0.0.2:8081", "10.0.0.3:8081"}
    resolver.table["stock-v2"] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    clock.now += 5
    await dns.step()
    assert not detector.describe("10.0.0.1:8081")["ejected"]


async def test_a_reload_keeps_the_answers_and_drops_removed_names():
    resolver = FakeResolver({"stock-v2": ["10.0.0.1", "10.0.0.2"], "other": ["10.0.0.9"]})
    dns, runtime, _ = watcher(dns_config(V2), resolver)
    await dns.step()
    # A reload (compile + swap of the new files) applies the answers at once.
    runtime.swap(runtime.compile(dns_config(V2, Endpoint("other", 8081, {"version": "v2"}))))
    assert addresses(runtime) == ["10.0.0.1:8081", "10.0.0.2:8081", "other:8081"]
    await dns.step()  # the new name is due at once
    assert addresses(runtime)[-1] == "10.0.0.9:8081"
    runtime.swap(runtime.compile(dns_config(Endpoint("other", 8081, {"version": "v2"}))))
    assert addresses(runtime) == ["10.0.0.9:8081"]
    assert await dns.step() is True  # stock-v2's answer is forgotten
    assert set(dns.answers.names) == {("stock", "other", 8081)}


async def test_two_names_sharing_an_address_make_one_endpoint():
    resolver = FakeResolver({"a": ["10.0.0.1"], "b": ["10.0.0.1", "10.0.0.2"]})
    config = dns_config(Endpoint("a", 80, {"version": "v2"}),
                        Endpoint("b", 80, {"version": "v2", "x": "y"}))
    dns, runtime, _ = watcher(config, resolver)
    await dns.step()
    endpoints = runtime.current.config.services["stock"].endpoints
    assert [(ep.address, ep.hostname) for ep in endpoints] == [
        ("10.0.0.1:80", "a"), ("10.0.0.2:80", "b")]


# ---------------------------------------------------------------------------- config


def _load(tmp_path, text: str):
    path = tmp_path / "pyproxy.yaml"
    path.write_text(text)
    return load_config([str(path)])


def test_discovery_is_read_in_both_forms(tmp_path):
    loaded = _load(tmp_path, """
services:
  a: {discovery: dns, endpoints: [a-host:80]}
  b: {discovery: {type: dns, interval: 250ms}, endpoints: [b-host:80]}
  c: {endpoints: [c-host:80]}
""")
    services = loaded.config.services
    assert services["a"].discovery == DnsDiscovery(5.0)
    assert services["b"].discovery == DnsDiscovery(0.25)
    assert services["c"].discovery is None


@pytest.mark.parametrize("value,message", [
    ("srv", "must be one of dns"),
    ("{interval: 5s}", "type"),
    ("{type: dns, interval: 0s}", "interval"),
])
def test_bad_discovery(tmp_path, value, message):
    with pytest.raises(ConfigInvalid) as failed:
        _load(tmp_path, f"services:\n  a: {{discovery: {value}, endpoints: [a:80]}}\n")
    assert message in str(failed.value.issues[0])


async def test_the_loop_survives_a_failing_round(monkeypatch, caplog):
    resolver = FakeResolver({"stock-v2": ["10.0.0.1"]})
    dns, _, _ = watcher(dns_config(V2), resolver)
    rounds = []

    async def broken_step() -> bool:
        rounds.append(1)
        raise RuntimeError("boom")

    async def no_sleep(seconds: float) -> None:
        assert seconds == 1.0  # a failed round waits MAX_SLEEP, never spins
        if len(rounds) >= 3:
            raise asyncio.CancelledError

    monkeypatch.setattr(dns, "step", broken_step)
    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    with pytest.raises(asyncio.CancelledError):
        await dns.run()
    assert len(rounds) == 3
    assert caplog.text.count("DNS discovery round failed") == 3
