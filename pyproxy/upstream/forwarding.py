"""Header hygiene for forwarded messages (RFC 9110 §7.6): pure functions, no I/O.

Hop-by-hop fields and every field named in ``Connection`` are dropped in both directions;
framing (Content-Length / Transfer-Encoding) is never copied but rebuilt by the engine.
The fields pyproxy adds itself (X-Forwarded-*, Via, x-request-id) are added after the
stripping, so ``Connection: X-Forwarded-For`` cannot remove them.

Behind a load balancer (docs/responses.md, "Behind a load balancer"): only a peer in
``trusted_proxies`` is believed. From such a peer, ``client_address`` walks
X-Forwarded-For from the right past every trusted address to the client (nginx's
``set_real_ip_from`` with ``real_ip_recursive on``, Traefik's
``forwardedHeaders.trustedIPs``); its X-Forwarded-Proto and -Host are passed on. From any
other peer the peer is the client and those two are overwritten. Either way the peer is
appended to X-Forwarded-For, so the header stays the list of hops.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from random import getrandbits as _random_bits

from pyproxy.messages import RequestHead

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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


def _parse_ip(text: str) -> IPAddress | None:
    """An address from an X-Forwarded-For element: ``1.2.3.4``, ``1.2.3.4:5678``,
    ``2001:db8::1`` or ``[2001:db8::1]:5678``; None for anything else (``unknown``)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; match them as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    parsed = _parse_ip(address)
    return parsed is not None and any(parsed in network for network in trusted)


def client_address(head: RequestHead, trusted: Sequence[Network]) -> tuple[str, bool]:
    """(the client's address, whether the peer is trusted) for a request from ``head.peer``.

    An untrusted peer is the client. A trusted peer forwarded for the right-most
    X-Forwarded-For element that is not trusted itself; if every element is trusted, for
    the left-most. An element that is no address (``unknown``, garbage) ends the walk at
    the last trusted hop: nothing left of it can be believed.
    """
    peer = head.peer
    if not trusted or not is_trusted(peer, trusted):
        return peer, False
    client = peer
    values = [value for name, value in head.headers if name == "x-forwarded-for"]
    hops = [hop for value in values for hop in value.split(",")]
    for hop in reversed(hops):
        address = _parse_ip(hop)
        if address is None:
            break
        client = str(address)
        if not any(address in network for network in trusted):
            break
    return client, True


def _forwarded_element(head: RequestHead) -> str:
    """pyproxy's own RFC 7239 element: ``for=<peer>;proto=<scheme>;host=<host>``."""
    peer = head.peer
    node = f'"[{peer}]"' if ":" in peer else (peer or "unknown")
    element = f"for={node};proto={head.scheme}"
    original_host = head.header("host")
    if original_host:
        element += f";host={_token_or_quoted(original_host)}"
    return element


def _token_or_quoted(value: str) -> str:
    if value and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in value) and value.isascii():
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def request_headers(head: RequestHead, host: str, request_id: str,
                    *, websocket: bool = False) -> list[tuple[str, str]]:
    """The headers to send upstream (without framing).

    ``host`` is the Host to send (after any rewrite). The original Host goes to
    X-Forwarded-Host; the peer is appended to X-Forwarded-For and, when the request has a
    ``Forwarded`` header, pyproxy's element to it. From a trusted peer its
    X-Forwarded-Proto and -Host are kept.
    """
    has_connection = False
    forwarded_for = None
    forwarded = None
    via = None
    trusted_proto = trusted_host = None
    out: list[tuple[str, str]] = [("host", host)]
    for name, value in head.headers:
        if name in _NOT_COPIED_REQUEST or name.startswith(CONTROL_PREFIX):
            if name == "connection":
                has_connection = True
            elif head.peer_trusted and name == "x-forwarded-proto":
                trusted_proto = value
            elif head.peer_trusted and name == "x-forwarded-host":
                trusted_host = value
            continue
        if name == "x-forwarded-for":
            forwarded_for = f"{forwarded_for}, {value}" if forwarded_for else value
            continue
        if name == "forwarded":
            forwarded = f"{forwarded}, {value}" if forwarded else value
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
            if "forwarded" in named:
                forwarded = None
            if "via" in named:
                via = None
    out.append(("x-request-id", request_id))
    peer = head.peer
    out.append(("x-forwarded-for", f"{forwarded_for}, {peer}" if forwarded_for else peer))
    if forwarded is not None:
        # Extended, never started: pyproxy speaks X-Forwarded-*, but a chain a client or
        # load balancer began must not lose this hop.
        out.append(("forwarded", f"{forwarded}, {_forwarded_element(head)}"))
    out.append(("x-forwarded-proto", trusted_proto or head.scheme))
    original_host = trusted_host or head.header("host")
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
