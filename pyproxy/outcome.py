"""What happened to one request: the single record metrics and the access log both read.

The pipeline fills one ``RequestOutcome`` per downstream request and hands it to
``Accounting.record`` when the response is finished (or abandoned). Slots keep it cheap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RequestOutcome:
    start: float  # time.time() when the request head was complete
    request_id: str = ""
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
