"""AccessLog: real writer thread, real streams; batching on a real event loop with short
intervals (no test depends on how fast anything runs)."""

from __future__ import annotations

import asyncio
import calendar
import io
import json
import select
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pyproxy.access_log as access_log_module
from pyproxy.access_log import AccessLog
from pyproxy.outcome import RequestOutcome

# 2026-11-22T04:40:00.123Z
START = calendar.timegm((2026, 11, 22, 4, 40, 0)) + 0.1234


def sample(**changes) -> RequestOutcome:
    fields = dict(start=START, request_id="3f2a9c1e", client="10.1.2.3", method="GET",
                  host="shop.example",
                  path="/store/stocklevel", route="stockmanager", backend="stockmanager/v2",
                  endpoint="127.0.0.1:9002", status=503, flags="UF", attempts=1,
                  duration=0.0123456, bytes_in=0, bytes_out=20)
    fields.update(changes)
    return RequestOutcome(**fields)


def written(fmt: str, *outcomes: RequestOutcome) -> list[str]:
    stream = io.StringIO()
    log = AccessLog(fmt, stream)
    for o in outcomes:
        log.log(o)
    log.close()
    return stream.getvalue().splitlines()


def test_json_line_has_every_spec_field():
    [line] = written("json", sample())
    assert json.loads(line) == {
        "time": "2026-11-22T04:40:00.123Z",
        "request_id": "3f2a9c1e",
        "client": "10.1.2.3",
        "method": "GET",
        "host": "shop.example",
        "path": "/store/stocklevel",
        "route": "stockmanager",
        "backend": "stockmanager/v2",
        "endpoint": "127.0.0.1:9002",
        "status": 503,
        "flags": "UF",
        "attempts": 1,
        "duration_ms": 12.346,
        "bytes_in": 0,
        "bytes_out": 20,
    }


def test_json_escapes_client_bytes_into_one_ascii_line():
    [line] = written("json", sample(host="sh\xf6p.example", path="/a\x85b", request_id='x"\ny'))
    assert line.isascii()
    record = json.loads(line)
    assert record["host"] == "sh\xf6p.example"
    assert record["path"] == "/a\x85b"
    assert record["request_id"] == 'x"\ny'


@given(text=st.text(), number=st.integers(min_value=0, max_value=2**63),
       duration=st.floats(min_value=0, max_value=1e7), start=st.floats(min_value=0, max_value=4e9))
def test_json_line_is_byte_for_byte_what_json_dumps_writes(text, number, duration, start):
    o = sample(start=start, request_id=text, client=text, host=text, path=text, route=text,
               backend=text, endpoint=text, flags=text, method=text, status=number,
               attempts=number, duration=duration, bytes_in=number, bytes_out=number)
    log = AccessLog("off")
    record = {"time": log._time(o.start), "request_id": o.request_id, "client": o.client,
              "method": o.method, "host": o.host, "path": o.path, "route": o.route,
              "backend": o.backend, "endpoint": o.endpoint, "status": o.status,
              "flags": o.flags, "attempts": o.attempts,
              "duration_ms": round(o.duration * 1000, 3), "bytes_in": o.bytes_in,
              "bytes_out": o.bytes_out}
    assert log._json_line(o) == json.dumps(record, separators=(",", ":"))


def test_time_milliseconds_roll_over_seconds_correctly():
    second = START - 0.1234
    lines = written("json", sample(start=second + 0.9996), sample(start=second + 1.0))
    assert [json.loads(line)["time"] for line in lines] == [
        "2026-11-22T04:40:00.999Z", "2026-11-22T04:40:01.000Z"]


def test_text_line():
    [line] = written("text", sample())
    assert line == ("2026-11-22T04:40:00.123Z 3f2a9c1e GET shop.example/store/stocklevel -> "
                    "stockmanager stockmanager/v2@127.0.0.1:9002 503 UF 1 12.3ms in=0 out=20")


def test_text_line_marks_empty_fields_and_escapes_client_values():
    [line] = written("text", sample(route="", backend="", endpoint="", flags="", status=404,
                                    request_id="a b\nc", host="h\xf6st"))
    assert line == ("2026-11-22T04:40:00.123Z a\\x20b\\nc GET h\\xf6st/store/stocklevel -> "
                    "- -@- 404 - 1 12.3ms in=0 out=20")


def test_off_writes_nothing_and_starts_no_thread():
    before = threading.active_count()
    stream = io.StringIO()
    log = AccessLog("off", stream)
    assert threading.active_count() == before
    log.log(sample())
    log.close()
    assert stream.getvalue() == ""


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="json, text, off"):
        AccessLog("xml", io.StringIO())


def test_close_flushes_everything_in_order_and_is_idempotent():
    stream = io.StringIO()
    log = AccessLog("json", stream)
    for i in range(5000):
        log.log(sample(request_id=str(i)))
    log.close()
    log.close()
    log.log(sample(request_id="after close"))
    ids = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
    assert ids == [str(i) for i in range(5000)]
    assert log.dropped == 0


def test_default_stream_is_stdout(capsys):
    log = AccessLog("json")
    log.log(sample())
    log.close()
    assert json.loads(capsys.readouterr().out)["request_id"] == "3f2a9c1e"


class BlockingStream(io.StringIO):
    """Holds the writer inside write() until released."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        assert self.release.wait(5)
        return super().write(text)


def test_a_full_queue_drops_and_counts_instead_of_growing(monkeypatch):
    monkeypatch.setattr(access_log_module, "MAX_PENDING", 3)
    stream = BlockingStream()
    log = AccessLog("json", stream)
    log.log(sample(request_id="first"))
    assert stream.entered.wait(5)  # the writer holds "first" and is stuck in write()
    for i in range(10):
        log.log(sample(request_id=str(i)))
    # "first" is not written yet, so it still counts against the bound.
    assert log.dropped == 8

    stream.release.set()
    log.close()
    ids = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
    assert ids == ["first", "0", "1"]


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError


def test_a_failing_stream_loses_lines_but_not_the_writer():
    log = AccessLog("text", BrokenStream())
    log.log(sample())
    log.log(sample())
    log.close()
    assert log.dropped == 2


class _Writes(io.StringIO):
    """A stream that records each write() as the writer thread made it."""

    def __init__(self):
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_a_shared_stream_gets_whole_lines_at_most_pipe_buf_at_a_time():
    # --workers N: every worker writes to the same stdout, where a pipe keeps only writes of
    # up to PIPE_BUF bytes whole.
    stream = _Writes()
    log = AccessLog("json", stream, shared=True)
    outcomes = [sample(request_id=f"r{i}") for i in range(300)]
    outcomes.append(sample(path="/" + "x" * 5000))  # longer than PIPE_BUF alone: goes alone
    for o in outcomes:
        log.log(o)
    log.close()
    assert len(stream.getvalue().splitlines()) == 301
    for write in stream.writes:
        assert write.endswith("\n")
        assert len(write) <= select.PIPE_BUF or write.count("\n") == 1
    assert len(stream.writes) > 10


# ---------------------------------------------------------------- batching on the event loop


class CountingEvent(threading.Event):
    """The writer's wake-up: counts how often the event loop signals it."""

    def __init__(self):
        super().__init__()
        self.signals = 0

    def set(self) -> None:
        self.signals += 1
        super().set()


@pytest.fixture
def wakeups(monkeypatch) -> list[CountingEvent]:
    """The wake-up events of the AccessLogs a test creates."""
    events: list[CountingEvent] = []

    def make() -> CountingEvent:
        events.append(CountingEvent())
        return events[-1]

    monkeypatch.setattr(access_log_module, "Event", make)
    return events


async def until(condition, timeout: float = 5.0) -> None:
    """Yield to the loop (and the writer) until condition() holds; fail after timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.002)


def ids_in(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]


async def test_many_requests_wake_the_writer_once_and_make_one_write(wakeups):
    stream = _Writes()
    log = AccessLog("json", stream, flush_interval=0.01)
    for i in range(500):
        log.log(sample(request_id=str(i)))
    assert wakeups[0].signals == 0  # nothing handed over while the loop is busy

    await until(lambda: len(stream.writes) == 1)
    assert wakeups[0].signals == 1
    assert ids_in(stream) == [str(i) for i in range(500)]
    log.close()
    assert len(stream.writes) == 1


async def test_a_line_appears_within_the_interval_without_more_traffic():
    stream = io.StringIO()
    log = AccessLog("json", stream, flush_interval=0.01)
    log.log(sample(request_id="lonely"))
    assert stream.getvalue() == ""  # batched, not written on the spot

    await until(lambda: ids_in(stream) == ["lonely"])  # the timer handed it over: no close()
    log.log(sample(request_id="next"))  # the next line starts a new batch and timer
    await until(lambda: ids_in(stream) == ["lonely", "next"])
    log.close()


async def test_a_full_batch_goes_at_once_without_waiting_for_the_timer(monkeypatch, wakeups):
    monkeypatch.setattr(access_log_module, "BATCH_LINES", 10)
    stream = io.StringIO()
    log = AccessLog("json", stream, flush_interval=3600)
    for i in range(25):
        log.log(sample(request_id=str(i)))
    # Two full batches handed over (the second needs no signal if the writer is still
    # awake); the five lines left wait for the timer, an hour away.
    assert 1 <= wakeups[0].signals <= 2
    await until(lambda: len(ids_in(stream)) == 20)
    await asyncio.sleep(0.01)
    assert len(ids_in(stream)) == 20
    log.close()
    assert ids_in(stream) == [str(i) for i in range(25)]


async def test_close_writes_the_batch_still_waiting_for_its_timer():
    stream = io.StringIO()
    log = AccessLog("text", stream, flush_interval=3600)
    for _ in range(3):
        log.log(sample())
    log.close()  # what the server does after draining, on SIGTERM or Ctrl-C
    assert len(stream.getvalue().splitlines()) == 3
    await asyncio.sleep(0.01)  # the cancelled timer does not fire later
    assert log.dropped == 0


async def test_lines_waiting_in_a_batch_count_against_the_bound(monkeypatch):
    monkeypatch.setattr(access_log_module, "MAX_PENDING", 5)
    stream = io.StringIO()
    log = AccessLog("json", stream, flush_interval=3600)
    for i in range(8):
        log.log(sample(request_id=str(i)))
    assert log.dropped == 3
    log.close()
    assert ids_in(stream) == ["0", "1", "2", "3", "4"]


async def test_a_batch_on_a_shared_stream_is_written_in_whole_lines():
    stream = _Writes()
    log = AccessLog("json", stream, shared=True, flush_interval=0.01)
    for i in range(300):
        log.log(sample(request_id=f"r{i}"))
    log.log(sample(path="/" + "x" * 5000))
    await until(lambda: len(stream.getvalue().splitlines()) == 301)
    log.close()
    assert len(stream.writes) > 10
    for write in stream.writes:
        assert write.endswith("\n")
        assert len(write) <= select.PIPE_BUF or write.count("\n") == 1
