"""What to tell a person whose ``pyproxy run`` cannot bind because the port is taken.

The usual cause is an earlier pyproxy: stopped with SIGTERM it keeps its port while it
drains (``drain_delay``, then in-flight requests), and one never stopped keeps serving its
old config. Both answer on their admin address, so the message can say which it is — and
that a restart is rarely needed, since pyproxy reloads its config files when they change.
"""

from __future__ import annotations

import errno
import json
import urllib.error
import urllib.request

from pyproxy.config.model import Address

PROBE_TIMEOUT = 1.0  # seconds: the admin of a live pyproxy answers in milliseconds


def is_address_in_use(exc: OSError) -> bool:
    return exc.errno == errno.EADDRINUSE


def _admin_url(admin: Address) -> str:
    host = "127.0.0.1" if admin.host in ("", "0.0.0.0") else admin.host
    host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
    return f"http://{host}:{admin.port}"


def _readyz(url: str) -> str | None:
    """``ready`` or ``not ready`` if a pyproxy admin answers at ``url``, else None."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=PROBE_TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503: a pyproxy that is not ready (draining)
        body = exc.read()
    except (OSError, ValueError):
        return None
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return None
    return status if status in ("ready", "not ready") else None


def port_in_use_message(what: str, address: Address, admin: Address | None) -> str:
    """The message for ``what`` (``listen`` or ``admin``) failing to bind ``address``.

    ``admin`` is the admin address this pyproxy was going to use: an earlier pyproxy
    started with the same config answers there.
    """
    where = "admin " if what == "admin" else ""
    lines = [f"pyproxy: cannot listen on {where}{address}: the port is already in use."]
    url = _admin_url(admin) if admin is not None and admin.port else None
    status = _readyz(url) if url is not None else None
    if status == "not ready":
        lines += [
            f"  Another pyproxy is draining there (its admin at {url} says "
            "/readyz: not ready); it lets go of the port once its drain is over "
            "(drain_delay, then in-flight requests).",
            "  Wait a few seconds and start again. Next time there is no need to restart: "
            "edit the config files it runs with and it reloads them."]
    elif status == "ready":
        lines += [
            f"  Another pyproxy is running there (its admin answers at {url}), "
            "still serving the config it was started with.",
            "  To change what it serves, edit its config files: it reloads them, no restart "
            "needed. To replace it, stop it first (pyproxy status shows what it serves)."]
    else:
        lines.append(f"  Stop whatever listens there, or choose another address "
                     f"(--{what} HOST:PORT).")
    return "\n".join(lines)
