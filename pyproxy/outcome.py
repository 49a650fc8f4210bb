"""What happened to one request: the single record metrics and the access log both read.

The pipeline fills one ``RequestOutcome`` per downstream request and hands it to
``Accounting.record`` and the ``RequestLog`` when the response is finished (or abandoned).
Slots keep it cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class RequestOutcome:
    start: float  # time.time() when the request head was complete
    request_id: str = ""
    client: str = ""  # the client's address (the peer, or behind trusted_proxies the forwarded one)
    method: str = ""
    host: str = ""
    path: str = ""
    route: str = ""  # "" when no route matched
    backend: str = ""  # service or service/subset; "" when none was picked
    endpoint: str = ""  # host:port of the last attempt
    status: int = 0  # 0 = the client went away before any response
    flags: str = ""  # comma-free concatenation of flags, e.g. "URX" or "DI,FI" joined with ","
    attempts: int = 0
    duration: float = 0.0  # seconds
    bytes_in: int = 0  # request body bytes received from the client
    bytes_out: int = 0  # response body bytes sent to the client


@dataclass(slots=True)
class AttemptOutcome:
    """One upstream attempt (first try, retry or mirror)."""

    service: str
    endpoint: str
    status: int  # 0 = no response (connect failure, reset, timeout)


class Accounting(Protocol):
    """Where the pipeline reports what happened (``metrics.Stats``); every method is a few
    counter updates, cheap enough for the request path."""

    def request_started(self, route: str) -> None: ...

    def request_finished(self, route: str) -> None: ...

    def record(self, o: RequestOutcome) -> None: ...

    def record_attempt(self, a: AttemptOutcome) -> None: ...

    def record_retry(self, route: str, backend: str) -> None: ...

    def record_fault(self, route: str, kind: str) -> None: ...

    def record_mirror(self, route: str, backend: str, result: str) -> None: ...

    def record_failover(self, route: str, from_backend: str, to_backend: str) -> None: ...

    def record_overflow(self, service: str, limit: str) -> None: ...

    def record_ejection(self, service: str, endpoint: str, reason: str) -> None: ...


class RequestLog(Protocol):
    """The access log (``access_log.AccessLog``): one line per finished request, or none."""

    def log(self, o: RequestOutcome) -> None: ...
