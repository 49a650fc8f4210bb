"""The request path routes match on, which is also the path sent upstream (HD-16).

A route on ``/admin`` must not be bypassed by a path that an upstream reads as ``/admin``
but pyproxy would not: ``//admin`` (many servers merge slashes), ``/%61dmin`` (``%61`` is
``a``), ``/x/../admin`` (dot segments). So, before any route is matched (the engine calls
``normalise_path`` while it validates the request head, once for every request):

* percent-encoded unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded and the hex
  digits of every other percent-encoding upper-cased (RFC 3986 §6.2.2.1-2: the same
  URI either way). ``%2F`` stays encoded: it is not ``/``;
* runs of ``/`` become one (Envoy's ``merge_slashes``);
* a ``.`` or ``..`` segment (also as ``%2e``, or with ``;params`` as ``/..;/``) refuses the
  request with 400 instead of being resolved: whatever the upstream made of it, pyproxy
  would have routed something else. Envoy's ``normalize_path`` resolves them instead;
  refusing never sends a request somewhere its route did not intend.

The upstream receives the normalised path (after any route rewrite), and the access log
shows it: the decision and the request that carries it out are about the same path. The
query string is passed on as received.
"""

from __future__ import annotations

import re

# A path segment that is "." or ".." once %2e is decoded, with or without ";params"
# ("/..;/" is ".." to Tomcat).
_DOT_SEGMENT = re.compile(r"(?:^|/)(?:\.|%2e){1,2}(?:;[^/]*)?(?:/|\Z)", re.IGNORECASE)
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(r"//+")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match[1], 16))
    return char if char in _UNRESERVED else f"%{match[1].upper()}"


def normalise_path(path: str) -> str | None:
    """The path to route on and forward; None when it must be refused (a dot segment)."""
    if "%" in path:
        path = _PERCENT.sub(_decode_unreserved, path)
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if _DOT_SEGMENT.search(path):
        return None
    return path
