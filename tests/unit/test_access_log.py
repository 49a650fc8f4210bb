"""AccessLog: real writer thread, real streams."""

from __future__ import annotations

import calendar
import io
import json
import threading

import pytest

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
    assert log.dropped == 7

    stream.release.set()
    log.close()
    ids = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
    assert ids == ["first", "0", "1", "2"]


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
    import select

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
