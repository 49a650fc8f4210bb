"""The admin API (docs/admin-api.md): health, readiness, metrics, config, reload and live
route stats.

This is the control plane, never on the request path; it is served by the data plane's own
engine (``admin/http.py`` says why). It reads and drives the proxy only through
``AdminControl``, which the runtime implements.

Security, enforced by one middleware for every route:

* Mutations (POST, PUT, PATCH, DELETE) need ``Authorization: Bearer <token>`` when a token
  is configured; the comparison is constant-time and the 401 body constant.
* CSRF: a mutation carrying an ``Origin`` must come from the admin's own origin, and a
  mutation with a body must declare ``application/json`` — the content types an HTML form
  can send are refused, so a page elsewhere cannot post to the admin.
* DNS rebinding: without a token the admin may only listen on loopback
  (``check_admin_binding``), and then it also refuses requests whose ``Host`` is not a
  loopback name, so a hostile page whose domain was re-pointed to 127.0.0.1 cannot read it.

With ``pyproxy run --workers N`` the leader serves this on the public address and merges the
other workers' ``/metrics`` and live windows (``workers/peers.py``); the other workers serve it
read-only on a private loopback port, for the leader (``read_only``: mutations are refused,
since the state they change is the leader's to write).

Errors are JSON ``{"error": ...}`` with a fixed message: nothing from the request is echoed.
New endpoints go into ``ROUTES``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib.resources
import ipaddress
import logging
import os
from http import HTTPStatus
from typing import Any, Protocol

from pyproxy.admin import http
from pyproxy.admin.http import (
    AdminApp,
    AdminRequest,
    AdminResponse,
    AdminServer,
    Handler,
    HTTPError,
    json_response,
)
from pyproxy.canary.analysis import CommandRefused
from pyproxy.canary.controller import CanaryNotFound
from pyproxy.config.parse import parse_duration
from pyproxy.control import ReloadResult
from pyproxy.errors import InvalidOverride
from pyproxy.metrics.exposition import render_metrics
from pyproxy.metrics.stats import Stats
from pyproxy.workers.peers import Peers

log = logging.getLogger(__name__)

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Keys whose values never leave the process (compared case-insensitively). Header names
# appear as keys in header changes, so credentials set on upstream requests are hidden too.
SECRET_KEYS = frozenset({"token", "secret", "password", "header_secret",
                         "authorization", "proxy-authorization"})
REDACTED = "***"
# What an HTML form can post cross-site without a CORS preflight; refused even with an empty
# body (an empty form post is still a form post). Bodiless clients may send any other type:
# aiohttp's client adds application/octet-stream to every POST.
FORM_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data",
                                "text/plain"})


class AdminControl(Protocol):
    """What the admin needs from the running proxy (implemented by the runtime)."""

    stats: Stats

    def is_ready(self) -> bool:
        """Config loaded, listener bound, not draining."""

    def describe_config(self) -> dict[str, object]:
        """The effective config as plain JSON values, with ``generation`` and the last reload
        result. Secrets may be included: the admin redacts them."""

    async def reload_all(self) -> ReloadResult:
        """Reload from the config sources, in every worker (this process's result)."""


CONTROL = "control"  # the AdminControl
TOKEN = "token"  # the bearer token mutations need ("" = none)
PEERS = "peers"  # workers.peers.Peers of the leader of --workers N, else None
READ_ONLY = "read_only"  # a non-leader worker's private admin


# ---------------------------------------------------------------------- handlers


async def healthz(request: AdminRequest) -> AdminResponse:
    return json_response({"status": "alive"})


async def readyz(request: AdminRequest) -> AdminResponse:
    if request.app[CONTROL].is_ready():
        return json_response({"status": "ready"})
    return json_response({"status": "not ready"}, status=503)


async def metrics(request: AdminRequest) -> AdminResponse:
    body, content_type = render_metrics(request.app[CONTROL].stats)
    peers = request.app[PEERS]
    if peers is not None:
        body = await peers.metrics(body)
    return AdminResponse(body=body, headers={"Content-Type": content_type})


async def get_windows(request: AdminRequest) -> AdminResponse:
    """This process's live windows as raw per-second buckets: the leader of ``--workers N``
    adds them up (``workers/peers.py``)."""
    return json_response({"pid": os.getpid(),
                          "windows": request.app[CONTROL].stats.windows.export()})


async def get_config(request: AdminRequest) -> AdminResponse:
    return json_response(redact(request.app[CONTROL].describe_config()))


async def post_reload(request: AdminRequest) -> AdminResponse:
    """200 when the new config serves (or nothing changed), 422 when it was rejected
    and the last good config keeps serving; the body says which and why."""
    result = await request.app[CONTROL].reload_all()
    return json_response(result, status=422 if result["result"] == "failure" else 200)


async def get_routes(request: AdminRequest) -> AdminResponse:
    return json_response(request.app[CONTROL].describe_routes())


async def get_services(request: AdminRequest) -> AdminResponse:
    return json_response(request.app[CONTROL].describe_services())


async def _json_body(request: AdminRequest) -> dict[str, Any]:
    """The request's JSON object; the handlers check each value they use (it came from the
    network), hence ``Any``."""
    try:
        body = request.json()
    except ValueError:
        raise _BadRequest("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _BadRequest("body must be a JSON object")
    return body


class _BadRequest(Exception):
    """A request the admin refuses with 400 and this (input-free) message."""


async def put_weights(request: AdminRequest) -> AdminResponse:
    """``{"weights": {"svc/v1": 50, "svc/v2": 50}}``: backends not named get 0."""
    body = await _json_body(request)
    weights = body.get("weights")
    if not isinstance(weights, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in weights.values()):
        raise _BadRequest("'weights' must map backend names to numbers")
    request.app[CONTROL].set_weights(request.match_info["route"], weights,
                                     source=str(body.get("source", "api"))[:32])
    return json_response(request.app[CONTROL].describe_routes())


async def delete_weights(request: AdminRequest) -> AdminResponse:
    cleared = request.app[CONTROL].clear_weights(request.match_info["route"])
    return json_response({"cleared": cleared})


async def get_faults(request: AdminRequest) -> AdminResponse:
    return json_response(request.app[CONTROL].describe_faults())


async def post_fault(request: AdminRequest) -> AdminResponse:
    """``{"route": R, "abort": {"status": 503} | "delay": {"fixed": "2s"}, "percent": 50,
    "duration": "30s"}``: the fault removes itself when the duration is up."""
    body = await _json_body(request)
    route = body.get("route")
    abort = body.get("abort") or {}
    delay = body.get("delay") or {}
    try:
        duration = parse_duration(str(body.get("duration", "")))
        delay_s = parse_duration(str(delay["fixed"])) if delay else None
        status = int(abort["status"]) if abort else None
        percent = float(body.get("percent", abort.get("percent", delay.get("percent", 100))))
    except (KeyError, TypeError, ValueError):
        raise _BadRequest("expected route, duration ('30s'), percent and abort.status "
                          "or delay.fixed ('2s')") from None
    if not isinstance(route, str):
        raise _BadRequest("'route' must be a route name")
    view = request.app[CONTROL].add_fault(route, duration, abort_status=status, delay=delay_s,
                                          percent=percent)
    return json_response(view, status=201)


async def delete_faults(request: AdminRequest) -> AdminResponse:
    cleared = request.app[CONTROL].clear_faults(request.match_info.get("route"))
    return json_response({"cleared": cleared})


async def get_canaries(request: AdminRequest) -> AdminResponse:
    return json_response(request.app[CONTROL].describe_canaries())


async def post_canary_action(request: AdminRequest) -> AdminResponse:
    """promote / abort / pause / resume: the canary as it is afterwards; 404 for an unknown
    canary, 409 when the action does not apply in its phase (the body says why)."""
    try:
        view = request.app[CONTROL].canary_command(request.match_info["name"],
                                                   request.match_info["action"])
    except CanaryNotFound as exc:
        return _error(404, str(exc))  # names configured canaries only, never the request's
    except CommandRefused as exc:
        return _error(409, str(exc))
    return json_response(view)


async def post_explain(request: AdminRequest) -> AdminResponse:
    """``{"host": H, "path": P, "method": M, "headers": {k: v}}`` → the routing decision."""
    body = await _json_body(request)
    host, path = body.get("host"), body.get("path", "/")
    headers = body.get("headers") or {}
    if not isinstance(host, str) or not isinstance(path, str) or not isinstance(headers, dict):
        raise _BadRequest("expected host, path, optional method and headers")
    return json_response(request.app[CONTROL].explain(
        host, path, str(body.get("method", "GET")),
        [(str(k), str(v)) for k, v in headers.items()]))


# The dashboard (``GET /``, docs/dashboard.md): static files shipped in the package, served
# from an allow-list, so no part of the request path ever reaches the filesystem. The page only
# loads its own files and calls this API: the CSP forbids everything else (inline script
# and style included). ``no-cache`` + ETag: revalidated on each load, so an upgraded proxy
# never runs with yesterday's app.js.
DASHBOARD_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
DASHBOARD_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                 "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
                 "frame-ancestors 'none'")


@functools.cache
def _dashboard_file(name: str) -> tuple[bytes, str]:
    body = (importlib.resources.files("pyproxy.admin") / "dashboard" / name).read_bytes()
    return body, f'"{hashlib.sha256(body).hexdigest()[:24]}"'


async def dashboard(request: AdminRequest) -> AdminResponse:
    """``GET /`` (the page) and ``GET /ui/{name}`` (its script, styles and icon)."""
    name = request.match_info.get("name", "index.html")
    content_type = DASHBOARD_FILES.get(name)
    if content_type is None:
        raise HTTPError(404)
    body, etag = _dashboard_file(name)
    headers = {"ETag": etag, "Cache-Control": "no-cache",
               "Content-Security-Policy": DASHBOARD_CSP, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
    if etag in (tag.strip() for tag in request.header("If-None-Match", "").split(",")):
        return AdminResponse(304, headers=headers)
    return AdminResponse(body=body, headers={**headers, "Content-Type": content_type})


ROUTES = [
    http.get("/", dashboard),
    http.get("/ui/{name}", dashboard),
    http.get("/healthz", healthz),
    http.get("/readyz", readyz),
    http.get("/metrics", metrics),
    http.get("/api/v1/windows", get_windows),
    http.get("/api/v1/config", get_config),
    http.post("/api/v1/reload", post_reload),
    http.get("/api/v1/routes", get_routes),
    http.put("/api/v1/routes/{route}/weights", put_weights),
    http.delete("/api/v1/routes/{route}/weights", delete_weights),
    http.get("/api/v1/services", get_services),
    http.get("/api/v1/faults", get_faults),
    http.post("/api/v1/faults", post_fault),
    http.delete("/api/v1/faults", delete_faults),
    http.delete("/api/v1/faults/{route}", delete_faults),
    http.post("/api/v1/explain", post_explain),
    http.get("/api/v1/canaries", get_canaries),
    http.post("/api/v1/canaries/{name}/{action:promote|abort|pause|resume}", post_canary_action),
]


# ---------------------------------------------------------------------- security


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> AdminResponse:
    return json_response({"error": message}, status=status, headers=headers)


async def _guard(request: AdminRequest, handler: Handler) -> AdminResponse:
    token = request.app[TOKEN]
    # A missing Host is fine: browsers, the only rebinding vector, always send one.
    host = request.header("Host")
    if not token and host is not None and not _is_loopback(_hostname(host)):
        return _error(403, "forbidden")
    if request.method in MUTATING_METHODS:
        if request.app[READ_ONLY]:
            return _error(403, "this is a worker's private admin, read-only: "
                               "send changes to the public admin address")
        if token and not _bearer_matches(request.header("Authorization", ""), token):
            return _error(401, "unauthorized", {"WWW-Authenticate": "Bearer"})
        origin = request.header("Origin")
        if origin is not None and not _same_origin(origin, host or ""):
            return _error(403, "forbidden")
        if request.content_type != "application/json" and (
            request.has_body or request.content_type in FORM_CONTENT_TYPES
        ):
            return _error(415, "content type must be application/json")
    return await handler(request)


async def _json_errors(request: AdminRequest, handler: Handler) -> AdminResponse:
    """No such route (404), method (405) and unexpected exceptions, as JSON with a fixed
    message."""
    try:
        return await handler(request)
    except (_BadRequest, InvalidOverride) as exc:
        # Messages are ours (they name config entities, never request bytes).
        return _error(400, str(exc))
    except HTTPError as exc:
        headers = {"Allow": ",".join(sorted(exc.allow))} if exc.allow else None
        return _error(exc.status, HTTPStatus(exc.status).phrase.lower(), headers)
    except Exception:
        log.exception("admin %s %s failed", request.method, request.path)
        return _error(500, "internal error")


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, credentials = header.partition(" ")
    # Compare even on a wrong scheme so a bad header costs the same time as a bad token.
    matches = hmac.compare_digest(credentials.strip().encode("utf-8", "replace"),
                                  token.encode("utf-8", "replace"))
    return matches and scheme.lower() == "bearer"


def _same_origin(origin: str, host: str) -> bool:
    """``Origin: http://host:port`` must name the host the request was sent to; ``null``
    (sandboxed frames, file:// pages) never matches."""
    scheme, sep, netloc = origin.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and netloc.lower() == host.lower()


def _hostname(host: str) -> str:
    """``Host`` without its port: ``[::1]:9901`` → ``::1``, ``localhost:9901`` → ``localhost``."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_admin_binding(host: str, token: str) -> None:
    """Refuse an admin listener reachable beyond this machine without a token
    (docs/admin-api.md)."""
    if token or _is_loopback(host.strip("[]")):
        return
    shown = host or "all interfaces"
    raise ValueError(
        f"refusing to serve the admin API on {shown} without a token: anyone who can reach it "
        "could change routing. Set admin.token (e.g. token: \"${PYPROXY_ADMIN_TOKEN}\") or "
        "listen on 127.0.0.1."
    )


def _is_secret(key: Any, value: Any) -> bool:
    return isinstance(key, str) and key.lower() in SECRET_KEYS and value not in (None, "")


def redact(value: Any) -> Any:
    """A copy of ``value`` with the values of ``SECRET_KEYS`` replaced by ``***`` at any depth.

    Empty values stay as they are: "no token set" is not a secret, and showing it tells the
    operator mutations are open.
    """
    if isinstance(value, dict):
        return {key: REDACTED if _is_secret(key, item) else redact(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value


# ---------------------------------------------------------------------- app


def build_admin_app(control: AdminControl, token: str, *, peers: Peers | None = None,
                    read_only: bool = False) -> AdminApp:
    """``peers``: the leader of ``--workers N`` merges the other workers' metrics;
    ``read_only``: the private admin of any other worker."""
    # _json_errors is outermost so that errors raised by the guard's handler are shaped too.
    app = AdminApp(ROUTES, middlewares=[_json_errors, _guard])
    app[CONTROL] = control
    app[TOKEN] = token
    app[PEERS] = peers
    app[READ_ONLY] = read_only
    return app


async def start_admin(app: AdminApp, host: str, port: int) -> AdminServer:
    """Serve ``app`` on ``host:port`` (port 0: any free port, see ``server.addresses``).
    The caller owns the server and calls ``await server.cleanup()``. Requests are not
    logged: scrapes every few seconds would drown the operational log."""
    return await http.start_admin(app, host, port)
