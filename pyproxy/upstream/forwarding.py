"""Header hygiene for forwarded messages (RFC 9110 §7.6): pure functions, no I/O.

Hop-by-hop fields and every field named in ``Connection`` are dropped in both directions;
framing (Content-Length / Transfer-Encoding) is never copied but rebuilt by the engine.
The fields pyproxy adds itself (X-Forwarded-*, Via, x-request-id) are added after the
stripping, so ``Connection: X-Forwarded-For`` cannot remove them.
"""

from __future__ import annotations

from random import getrandbits as _random_bits

from pyproxy.messages import RequestHead

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
    "trailer", "proxy-authorization", "proxy-authenticate", "http2-settings",
})
# Never copied: framing is rebuilt, Host is set explicitly.
_NOT_COPIED_REQUEST = HOP_BY_HOP | {"content-length", "host", "x-forwarded-proto",
                                    "x-forwarded-host", "expect"}
_NOT_COPIED_RESPONSE = HOP_BY_HOP | {"content-length"}
# Control headers that must never leak to an upstream (docs/responses.md, header-triggered faults).
CONTROL_PREFIX = "x-pyproxy-"
VIA = "1.1 pyproxy"


def new_request_id() -> str:
    """A random id in UUID version 4 text form. Request ids need uniqueness, not secrecy, so
    the per-process PRNG (seeded from the OS) replaces a getrandom() syscall per request."""
    h = f"{_random_bits(128):032x}"
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


# The Connection values nearly every peer sends name only fields we drop anyway.
_PLAIN_CONNECTION = frozenset({"keep-alive", "close", "Keep-Alive", "Close", "upgrade", "Upgrade"})


def _connection_named(headers: list[tuple[str, str]]) -> frozenset[str]:
    named: set[str] = set()
    for name, value in headers:
        if name == "connection" and value not in _PLAIN_CONNECTION:
            named.update(token.strip().lower() for token in value.split(","))
    return frozenset(named)


def request_headers(head: RequestHead, host: str, request_id: str,
                    *, websocket: bool = False) -> list[tuple[str, str]]:
    """The headers to send upstream (without framing).

    ``host`` is the Host to send (after any rewrite). The original Host goes to
    X-Forwarded-Host; the client address is appended to X-Forwarded-For.
    """
    has_connection = False
    forwarded_for = None
    via = None
    out: list[tuple[str, str]] = [("host", host)]
    for name, value in head.headers:
        if name in _NOT_COPIED_REQUEST or name.startswith(CONTROL_PREFIX):
            if name == "connection":
                has_connection = True
            continue
        if name == "x-forwarded-for":
            forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
            continue
        if name == "via":
            via = f"{via}, {value}" if via else value
            continue
        if name == "x-request-id":
            continue  # replaced by ``request_id`` (the client's own, when it sent one)
        out.append((name, value))
    if has_connection:
        named = _connection_named(head.headers)
        if named:
            out = [(n, v) for n, v in out if n not in named or n == "host"]
            # The client's own values of fields we extend are hop-by-hop too when named:
            # pyproxy's additions below stand alone.
            if "x-forwarded-for" in named:
                forwarded_for = None
            if "via" in named:
                via = None
    out.append(("x-request-id", request_id))
    client = head.client_ip
    out.append(("x-forwarded-for", f"{forwarded_for}, {client}" if forwarded_for else client))
    out.append(("x-forwarded-proto", head.scheme))
    original_host = head.header("host")
    if original_host:
        out.append(("x-forwarded-host", original_host))
    out.append(("via", f"{via}, {VIA}" if via else VIA))
    if websocket:
        out.append(("connection", "upgrade"))
        out.append(("upgrade", "websocket"))
    return out


def response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream response headers minus hop-by-hop and framing fields."""
    named = None
    out = []
    for name, value in headers:
        if name in _NOT_COPIED_RESPONSE:
            if name == "connection":
                named = _connection_named(headers)
            continue
        out.append((name, value))
    if named:
        out = [(n, v) for n, v in out if n not in named]
    return out
