"""The access log (docs/operations.md): one line per request on stdout, JSON or text.

Writing to stdout can block (a full pipe, a slow terminal, a paused ``docker logs``), and
formatting costs microseconds the event loop should not pay, so a daemon thread formats and
writes. Waking that thread costs system calls on both sides (a futex to signal it, more as
the two threads pass the GIL back and forth): woken per request, it made about eight futex
calls per request under load. So the event loop wakes it once per batch, never per
request: ``log()`` appends the
``RequestOutcome`` to a plain list; the first one of a batch arms a timer on the loop, and
when the timer fires (``FLUSH_INTERVAL``) or the list reaches ``BATCH_LINES``, the whole list
is handed to the writer, which formats it and writes it in one go. Lines accepted but not
yet written are bounded (``MAX_PENDING``): beyond that they are dropped and counted
(``dropped``) rather than letting memory grow without limit. ``close()`` hands over what is
left and waits for it to be written, so a clean shutdown loses nothing.

With ``pyproxy run --workers N`` every worker writes to the same stdout. A pipe keeps a write
of at most ``PIPE_BUF`` bytes whole, but may interleave longer ones with other writers' — so
there (``shared=True``) each write() carries whole lines and at most ``PIPE_BUF`` bytes
(a single longer line goes alone). A regular file keeps every write whole anyway.
"""

from __future__ import annotations

import asyncio
import select
import sys
import time
from collections import deque
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_string
from threading import Event, Thread
from typing import TextIO

from pyproxy.outcome import RequestOutcome

FORMATS = ("json", "text", "off")
MAX_PENDING = 100_000  # lines accepted but not yet written; beyond this they are dropped
# The longest a line waits before the writer gets it: well under what a person tailing the
# log notices, while at thousands of requests per second one wake-up still carries hundreds
# of lines, so its cost per request is a rounding error.
FLUSH_INTERVAL = 0.05
# A burst hands its batch over at this many lines without waiting for the timer: it bounds
# the memory and the size of one hand-over (about 300 KB of JSON) and the time the writer
# holds the GIL formatting it, while still making one wake-up per thousand requests.
BATCH_LINES = 1000


class _Timestamps:
    """RFC 3339 UTC timestamps with milliseconds. The seconds part is formatted once per
    second, and the whole stamp once per millisecond: under load many lines share one."""

    __slots__ = ("_last", "_millis", "_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._millis = -1
        self._last = ""

    def __call__(self, t: float) -> str:
        millis = int(t * 1000)
        if millis == self._millis:
            return self._last
        second, ms = divmod(millis, 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._millis = millis
        self._last = f"{self._prefix}.{ms:03d}Z"
        return self._last


class AccessLog:
    """``log()`` and ``close()`` are called on the event loop (or, with no loop running, from
    one thread: then each line is handed to the writer at once); ``close()`` flushes."""

    def __init__(self, fmt: str = "json", stream: TextIO | None = None, *,
                 shared: bool = False, flush_interval: float = FLUSH_INTERVAL):
        if fmt not in FORMATS:
            raise ValueError(f"access log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.format = fmt
        self._stream = stream if stream is not None else sys.stdout
        self._shared = shared  # other processes write to the same stream
        self._flush_interval = flush_interval
        # Event loop side: the batch being filled and the timer that will hand it over.
        self._batch: list[RequestOutcome] = []
        self._timer: asyncio.TimerHandle | None = None
        # Batches handed over, oldest first: the loop appends, the writer pops (both atomic).
        self._handed: deque[list[RequestOutcome]] = deque()
        self._wakeup = Event()
        self._closing = False
        # Each counter is written by one thread only, so no increment is lost to a race;
        # lines waiting anywhere = accepted - finished.
        self._accepted = 0  # event loop: lines taken by log()
        self._dropped_full = 0  # event loop: MAX_PENDING lines were already waiting
        self._finished = 0  # writer: lines written, or lost to a failed write
        self._dropped_write = 0  # writer: the stream refused them
        self._time = _Timestamps()
        self._format_line: Callable[[RequestOutcome], str] = (
            self._json_line if fmt == "json" else self._text_line
        )
        self._thread: Thread | None = None
        if fmt != "off":
            self._thread = Thread(target=self._run, name="pyproxy-access-log", daemon=True)
            self._thread.start()

    @property
    def dropped(self) -> int:
        """Lines lost to a full queue or a failed write."""
        return self._dropped_full + self._dropped_write

    def log(self, o: RequestOutcome) -> None:
        if self._thread is None or self._closing:
            return
        if self._accepted - self._finished >= MAX_PENDING:
            self._dropped_full += 1
            return
        self._accepted += 1
        batch = self._batch
        batch.append(o)
        if len(batch) >= BATCH_LINES:
            self._hand_over()
        elif len(batch) == 1:
            self._arm_timer()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is waiting and stop the writer. Waits at most ``timeout`` seconds,
        so a blocked stdout cannot hold up shutdown. Idempotent."""
        if self._thread is None or self._closing:
            return
        self._hand_over()
        self._closing = True
        self._wakeup.set()
        self._thread.join(timeout)

    def _arm_timer(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to batch on: a script or a test calling log()
            self._hand_over()
            return
        self._timer = loop.call_later(self._flush_interval, self._hand_over)

    def _hand_over(self) -> None:
        """Give the batch to the writer: the only place the event loop wakes it."""
        if self._timer is not None:
            self._timer.cancel()  # when the batch filled up first; harmless once fired
            self._timer = None
        if not self._batch:
            return
        self._handed.append(self._batch)
        self._batch = []
        # Event.set() takes a lock: skip it while the writer is awake anyway.
        if not self._wakeup.is_set():
            self._wakeup.set()

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            self._wakeup.wait()
            # Clear before draining: a batch handed over after the drain sets the event again.
            self._wakeup.clear()
            self._drain()
            if self._closing:
                self._drain()  # anything handed over between the drain and the flag check
                return

    def _drain(self) -> None:
        handed = self._handed
        while handed:
            # Small batches (no event loop, or a writer that fell behind) are joined, so
            # one write() carries up to about BATCH_LINES lines.
            lines: list[str] = []
            while handed and len(lines) < BATCH_LINES:
                lines.extend(map(self._format_line, handed.popleft()))
            self._write(lines)
            self._finished += len(lines)

    def _write(self, lines: list[str]) -> None:
        for chunk in _pipe_sized(lines) if self._shared else [lines]:
            try:
                self._stream.write("\n".join(chunk) + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # broken pipe, closed stream: lose it, keep serving
                self._dropped_write += len(chunk)

    def _json_line(self, o: RequestOutcome) -> str:
        """What ``json.dumps(record, separators=(",", ":"))`` gives, byte for byte (a test
        compares them), at a third of its cost: dumps() builds a new encoder per call when
        given separators. Strings go through the function dumps uses for them, which escapes
        quotes, control characters and any non-ASCII a client put in host or path; numbers
        are written as dumps writes them (``repr`` of the rounded float)."""
        q = _json_string
        return (
            f'{{"time":"{self._time(o.start)}","request_id":{q(o.request_id)},'
            f'"client":{q(o.client)},"method":{q(o.method)},"host":{q(o.host)},'
            f'"path":{q(o.path)},"route":{q(o.route)},"backend":{q(o.backend)},'
            f'"endpoint":{q(o.endpoint)},"status":{o.status:d},"flags":{q(o.flags)},'
            f'"attempts":{o.attempts:d},"duration_ms":{round(o.duration * 1000, 3)!r},'
            f'"bytes_in":{o.bytes_in:d},"bytes_out":{o.bytes_out:d}}}'
        )

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
