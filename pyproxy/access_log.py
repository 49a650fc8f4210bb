"""The access log (docs/operations.md): one line per request on stdout, JSON or text.

Writing to stdout can block (a full pipe, a slow terminal, a paused ``docker logs``), and
formatting costs microseconds the event loop should not pay. So ``log()`` only appends the
``RequestOutcome`` to a deque; a daemon thread formats whatever has accumulated and writes it
as one batch. When the writer cannot keep up, the queue is bounded: lines are dropped and
counted (``dropped``) rather than letting memory grow without limit.

With ``pyproxy run --workers N`` every worker writes to the same stdout. A pipe keeps a write
of at most ``PIPE_BUF`` bytes whole, but may interleave longer ones with other writers' — so
there (``shared=True``) each write() carries whole lines and at most ``PIPE_BUF`` bytes
(a single longer line goes alone). A regular file keeps every write whole anyway.
"""

from __future__ import annotations

import json
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from pyproxy.outcome import RequestOutcome

FORMATS = ("json", "text", "off")
MAX_PENDING = 100_000  # lines waiting for the writer; beyond this they are dropped
BATCH_LINES = 1000  # lines per write() call: few syscalls, bounded memory per batch
# After writing a batch the writer rests this long before waiting for more. Woken per line,
# it took the GIL back from the event loop for every request or two: ~3 futex calls and
# 0.4 write() per request at c=50 (docs/performance.md, "Syscalls per request"). Resting
# lets lines gather into one wake-up and one write(); a line waits at most this much longer.
BATCH_PAUSE = 0.05


class _Timestamps:
    """RFC 3339 UTC timestamps with milliseconds; the seconds part is formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, t: float) -> str:
        millis = int(t * 1000)
        second, ms = divmod(millis, 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{ms:03d}Z"


class AccessLog:
    """``log()`` is safe to call on the event loop; ``close()`` flushes what is queued."""

    def __init__(self, fmt: str = "json", stream: TextIO | None = None, *,
                 shared: bool = False):
        if fmt not in FORMATS:
            raise ValueError(f"access log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.format = fmt
        # Two counters, each written by one thread only, so no increment is lost to a race.
        self._dropped_full = 0  # event loop: the queue was full
        self._dropped_write = 0  # writer: the stream refused a batch
        self._stream = stream if stream is not None else sys.stdout
        self._shared = shared  # other processes write to the same stream
        self._pending: deque[RequestOutcome] = deque()
        self._wakeup = threading.Event()
        self._closing = False
        self._time = _Timestamps()
        self._format_line: Callable[[RequestOutcome], str] = (
            self._json_line if fmt == "json" else self._text_line
        )
        self._thread: threading.Thread | None = None
        if fmt != "off":
            self._thread = threading.Thread(target=self._run, name="pyproxy-access-log",
                                            daemon=True)
            self._thread.start()

    @property
    def dropped(self) -> int:
        """Lines lost to a full queue or a failed write."""
        return self._dropped_full + self._dropped_write

    def log(self, o: RequestOutcome) -> None:
        if self._thread is None or self._closing:
            return
        if len(self._pending) >= MAX_PENDING:
            self._dropped_full += 1
            return
        self._pending.append(o)  # deque.append is atomic: no lock shared with the writer
        # Only pay for Event.set() (a lock) when the writer is asleep.
        if not self._wakeup.is_set():
            self._wakeup.set()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer. Waits at most ``timeout`` seconds,
        so a blocked stdout cannot hold up shutdown. Idempotent."""
        if self._thread is None or self._closing:
            return
        self._closing = True
        self._wakeup.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            self._wakeup.wait()
            # Clear before draining: a line appended after the drain sets the event again.
            self._wakeup.clear()
            self._drain()
            if self._closing:
                self._drain()  # anything appended between the drain and the flag check
                return
            time.sleep(BATCH_PAUSE)

    def _drain(self) -> None:
        pending = self._pending
        while pending:
            # Only this thread pops, so len() is a safe lower bound of what can be popped.
            count = min(len(pending), BATCH_LINES)
            self._write([self._format_line(pending.popleft()) for _ in range(count)])

    def _write(self, lines: list[str]) -> None:
        for chunk in _pipe_sized(lines) if self._shared else [lines]:
            try:
                self._stream.write("\n".join(chunk) + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # broken pipe, closed stream: lose it, keep serving
                self._dropped_write += len(chunk)

    def _json_line(self, o: RequestOutcome) -> str:
        # ensure_ascii (the default) escapes any non-ASCII a client put in host or path.
        return json.dumps({
            "time": self._time(o.start),
            "request_id": o.request_id,
            "client": o.client,
            "method": o.method,
            "host": o.host,
            "path": o.path,
            "route": o.route,
            "backend": o.backend,
            "endpoint": o.endpoint,
            "status": o.status,
            "flags": o.flags,
            "attempts": o.attempts,
            "duration_ms": round(o.duration * 1000, 3),
            "bytes_in": o.bytes_in,
            "bytes_out": o.bytes_out,
        }, separators=(",", ":"))

    def _text_line(self, o: RequestOutcome) -> str:
        """``TIME ID METHOD HOST/PATH -> ROUTE BACKEND@ENDPOINT STATUS FLAGS ATTEMPTS DURATION
        in=N out=N``; ``-`` stands for an empty field so every line has the same columns."""
        return (
            f"{self._time(o.start)} {_text(o.request_id)} {_text(o.method)} "
            f"{_text(o.host + o.path)} -> {_text(o.route)} "
            f"{_text(o.backend)}@{_text(o.endpoint)} {o.status} {_text(o.flags)} "
            f"{o.attempts} {o.duration * 1000:.1f}ms in={o.bytes_in} out={o.bytes_out}"
        )


def _pipe_sized(lines: list[str]) -> list[list[str]]:
    """``lines`` in runs of at most PIPE_BUF bytes with their newlines (both formats are
    ASCII, so characters are bytes)."""
    chunks: list[list[str]] = []
    size = select.PIPE_BUF + 1
    for line in lines:
        if size + len(line) + 1 > select.PIPE_BUF:
            chunks.append([])
            size = 0
        chunks[-1].append(line)
        size += len(line) + 1
    return chunks


def _text(value: str) -> str:
    """A field safe for a space-separated line: ``-`` when empty; client-controlled bytes
    (non-ASCII, control characters, spaces in an ``x-request-id``) escaped so that a request
    cannot forge or split log lines."""
    if not value:
        return "-"
    if value.isascii() and value.isprintable() and " " not in value:
        return value
    return value.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")
