"""A small admin API client for the CLI (stdlib only: the CLI should start fast).

Errors become ``AdminError`` with a message a person can act on: the admin is not
reachable (and where the CLI looked), the token is missing or wrong, or what the API said.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

DEFAULT_ADMIN = "http://127.0.0.1:9901"


class AdminError(Exception):
    pass


class AdminClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 5.0):
        self.url = (url or os.environ.get("PYPROXY_ADMIN") or DEFAULT_ADMIN).rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        self.token = token if token is not None else os.environ.get("PYPROXY_ADMIN_TOKEN", "")
        self.timeout = timeout

    # Answers are decoded JSON whose shape depends on the endpoint (docs/admin-api.md):
    # the CLI reads the keys it knows, so they stay ``dict[str, Any]``.
    def request(self, method: str, path: str,
                body: Mapping[str, object] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer: dict[str, Any] = json.loads(response.read() or b"{}")
                return answer
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            if exc.code == 401:
                hint = ("set PYPROXY_ADMIN_TOKEN to the admin token" if not self.token
                        else "PYPROXY_ADMIN_TOKEN does not match the admin token")
                raise AdminError(f"the admin at {self.url} refused the request: {hint}") from None
            raise AdminError(f"{method} {path}: {exc.code} {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(
                f"cannot reach the pyproxy admin at {self.url} ({reason}).\n"
                "  Is pyproxy running? Point at it with --admin URL or PYPROXY_ADMIN.") from None

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)
