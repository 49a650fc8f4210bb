"""Path/host rewrites and redirect targets, decided from the route and the request head."""

from __future__ import annotations

import re

from pyproxy.config.model import Redirect, Rewrite
from pyproxy.messages import RequestHead


def _replace_prefix(path: str, prefix: str, replacement: str) -> str:
    rest = path[len(prefix):]
    if not replacement:
        replacement = "/"
    if replacement.endswith("/") and rest.startswith("/"):
        rest = rest[1:]
    elif (rest and not rest.startswith("/") and not replacement.endswith("/")
          and prefix.endswith("/")):
        rest = "/" + rest
    return replacement + rest


def rewrite_path(rewrite: Rewrite, path: str, matched_prefix: str | None,
                 compiled_regex: re.Pattern[str] | None = None) -> str:
    """The path to send upstream. ``path_prefix`` replaces the prefix that matched (or the
    whole path when the route matched without a prefix)."""
    if rewrite.path_full is not None:
        return rewrite.path_full
    if rewrite.path_prefix is not None:
        if matched_prefix is not None and path.startswith(matched_prefix):
            return _replace_prefix(path, matched_prefix, rewrite.path_prefix)
        return rewrite.path_prefix
    if rewrite.path_regex is not None:
        pattern = compiled_regex or re.compile(rewrite.path_regex[0])
        return pattern.sub(rewrite.path_regex[1], path)
    return path


def redirect_location(redirect: Redirect, head: RequestHead, matched_prefix: str | None) -> str:
    scheme = redirect.scheme or head.scheme
    host = redirect.host or head.host
    port = redirect.port
    if redirect.host is None and port is None and redirect.scheme in (None, head.scheme):
        # Same host, same scheme: keep the port the client used (Host carries it).
        _, sep, client_port = (head.header("host") or "").rpartition(":")
        if sep and client_port.isdigit():
            port = int(client_port)
    if redirect.path is not None:
        path = redirect.path
    elif redirect.path_prefix is not None and matched_prefix is not None:
        path = _replace_prefix(head.path, matched_prefix, redirect.path_prefix)
    else:
        path = head.path
    default_port = {"http": 80, "https": 443}.get(scheme)
    authority = host if port is None or port == default_port else f"{host}:{port}"
    query = f"?{head.query}" if head.query else ""
    return f"{scheme}://{authority}{path}{query}"
