"""Every way a request can fail, each knowing the status and response flag it becomes.

The pipeline raises these; exactly one place (``proxy.Proxy.respond_error``) turns them
into responses, so the status/flag table of docs/responses.md lives here and nowhere else.
Bodies are short and generic: details go to logs and metrics, never to the client.
"""

from __future__ import annotations


class ProxyError(Exception):
    """A request that ends with a proxy-generated response."""

    status = 500
    flag = ""
    body = b"internal error\n"

    def __init__(self, detail: str = "", *, status: int | None = None):
        super().__init__(detail or self.__class__.__name__)
        self.detail = detail
        if status is not None:
            self.status = status


class NoRoute(ProxyError):
    status, flag, body = 404, "NR", b"no route\n"


class NoHealthyUpstream(ProxyError):
    status, flag, body = 503, "UH", b"no healthy upstream\n"


class UpstreamConnectFailure(ProxyError):
    status, flag, body = 503, "UF", b"upstream connect error\n"


class UpstreamReset(ProxyError):
    """The upstream closed or reset the connection before a full response.

    503 when nothing of the response arrived yet, 502 once the response had begun
    (docs/responses.md); the caller chooses by passing ``status``.
    """

    status, flag, body = 503, "UC", b"upstream connection reset\n"


class UpstreamTimeout(ProxyError):
    status, flag, body = 504, "UT", b"upstream request timeout\n"


class Overflow(ProxyError):
    """A circuit-breaker limit refused the request at once."""

    status, flag, body = 503, "UO", b"upstream overloaded\n"


class UpstreamProtocolError(ProxyError):
    status, flag, body = 502, "UPE", b"bad upstream response\n"


class InjectedAbort(ProxyError):
    flag, body = "FI", b"fault filter abort\n"


class DownstreamError(ProxyError):
    """The client sent something we refuse: answered with a 4xx/5xx, nothing forwarded."""

    status, body = 400, b"bad request\n"

    def __init__(self, detail: str = "", *, status: int = 400):
        super().__init__(detail, status=status)
        self.body = _GENERIC_BODIES.get(status, b"bad request\n")


class ClientDisconnected(Exception):
    """The downstream client went away; there is nobody left to answer."""


_GENERIC_BODIES = {
    400: b"bad request\n",
    405: b"method not allowed\n",
    408: b"request timeout\n",
    413: b"payload too large\n",
    414: b"uri too long\n",
    417: b"expectation failed\n",
    431: b"request header fields too large\n",
    501: b"not implemented\n",
    505: b"http version not supported\n",
}


class InvalidOverride(ValueError):
    """A run-time change (weights, fault) the operator asked for and we refuse; the message
    names config entities only, never echoes the request."""
