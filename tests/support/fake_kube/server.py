"""FakeKube: the fake Kubernetes API server on aiohttp, in-process on 127.0.0.1.

It serves the URL layout of the real one (https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-uris):
``/api/v1[/namespaces/NS]/PLURAL[/NAME[/status]]`` for the core group and
``/apis/GROUP/VERSION[/namespaces/NS]/PLURAL[/NAME[/status]]`` for the others, plus the
discovery documents (``/api``, ``/api/v1``, ``/apis``, ``/apis/GROUP[/VERSION]``) and
``/version``. Errors are ``Status`` objects. See README.md in this directory for the API,
the knobs, and what a real API server does that this one does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from pyproxy.demo import ports

from .kinds import BY_GROUP_PLURAL, BY_KIND, KINDS, KindInfo, groups
from .selectors import Predicate, SelectorError, parse_field_selector, parse_label_selector
from .store import ApiError, Event, Obj, Store, too_old

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    status: int = 0


@dataclass(eq=False)  # identity: each stream is its own
class _Watch:
    """One open watch stream: what it selects and the events waiting to be written."""

    info: KindInfo
    version: str
    namespace: str | None
    label: Predicate
    field_: Predicate
    queue: asyncio.Queue[Obj | None] = field(default_factory=asyncio.Queue)
    transport: asyncio.Transport | None = None
    flowing: asyncio.Event = field(default_factory=asyncio.Event)  # clear: stalled

    def __post_init__(self) -> None:
        self.flowing.set()

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        ns = obj.get("metadata", {}).get("namespace", "")
        if self.namespace is not None and ns != self.namespace:
            return False
        return self.label(obj) and self.field_(obj)

    def translate(self, event: Event) -> Obj | None:
        """The event this watcher sees, or None.

        With a selector, an object that starts matching arrives as ADDED and one that stops
        matching leaves as DELETED, as the watch cache does.
        """
        if event.info.kind != self.info.kind:
            return None
        now, before = self.matches(event.obj), self.matches(event.old)
        if event.type == "DELETED":
            kind = "DELETED" if before else None
        elif now and before:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif before:
            kind = "DELETED"
        else:
            kind = None
        if kind is None:
            return None
        return {"type": kind, "object": with_version(event.obj, self.info, self.version)}


def with_version(obj: Obj, info: KindInfo, version: str) -> Obj:
    """The object as served at ``version`` (only apiVersion changes: no conversion)."""
    return {**obj, "apiVersion": info.api_version(version)}


def _true(flag: str | None) -> bool:
    return (flag or "").lower() in ("1", "true")


def _error_response(err: ApiError) -> web.Response:
    return web.json_response(err.status(), status=err.code, headers=err.headers)


class FakeKube:
    """A fake API server. ``async with FakeKube() as kube:`` or ``await kube.start()``."""

    def __init__(self, *, token: str = "fake-token-1", history_limit: int = 10_000,
                 bookmark_interval: float = 1.0, default_watch_timeout: float = 1800.0,
                 too_old_watch_as_event: bool = False, require_auth: bool = True):
        self.store = Store(history_limit)
        self.port = ports.free_port()  # below the ephemeral range: still ours after a restart
        self.tokens: set[str] = {token}
        self.token = token
        self.require_auth = require_auth
        self.token_file: Path | None = None
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        # A real apiserver answers a watch from a compacted version with HTTP 200 and an
        # ERROR event; the default here is the HTTP 410 status, and this switch selects the
        # other form, so clients can be tested against both.
        self.too_old_watch_as_event = too_old_watch_as_event
        self.requests: list[RequestRecord] = []
        self._watches: set[_Watch] = set()
        self._throttle_left = 0
        self._retry_after = 1
        self._stall_new_watches = False
        self._runner: web.AppRunner | None = None
        self.store.subscribe(self._fan_out)

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeKube:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                    shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        if ("", "default") not in self.store.objects(BY_KIND["Namespace"]):
            self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        return self

    async def stop(self) -> None:
        """Go away like a restarting apiserver: open watch connections are cut, not ended.

        The store survives, so ``start()`` again serves the same objects and versions.
        """
        for watch in list(self._watches):
            if watch.transport is not None:
                watch.transport.abort()
            watch.queue.put_nowait(None)
            watch.flowing.set()  # a stalled handler must see the end too
        self._watches.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, downtime: float = 0.0) -> None:
        await self.stop()
        await asyncio.sleep(downtime)
        await self.start()

    async def __aenter__(self) -> FakeKube:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- credentials ---------------------------------------------------------------------

    def kubeconfig_path(self, directory: str | os.PathLike[str], *,
                        use_token_file: bool = False, namespace: str = "default") -> Path:
        """Write a kubeconfig for this server into ``directory``; return its path.

        With ``use_token_file`` the user entry names ``token_file`` (``tokenFile``) instead of
        embedding the token, so a token rotation is a change of that file.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.token_file = directory / "token"
        self.token_file.write_text(self.token)
        user: dict[str, str] = (
            {"tokenFile": str(self.token_file)} if use_token_file else {"token": self.token})
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": namespace}}],
        }
        path = directory / "kubeconfig"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def rotate_token(self, *, keep_old: bool = False) -> str:
        """Issue a new token (written to ``token_file`` if there is one) and, unless
        ``keep_old``, stop accepting the previous ones — a bound service-account token
        being replaced."""
        new = "fake-token-" + secrets.token_hex(8)
        self.tokens = (self.tokens | {new}) if keep_old else {new}
        self.token = new
        if self.token_file is not None:
            tmp = self.token_file.with_suffix(".tmp")
            tmp.write_text(new)
            tmp.replace(self.token_file)  # atomic, like the kubelet's symlink swap
        return new

    # --- knobs ---------------------------------------------------------------------------

    def compact(self) -> None:
        """Drop the event history: every resourceVersion handed out so far answers 410, and
        every open watch receives an ERROR event (Status code 410) and is closed."""
        self.store.compact()
        expired = too_old(self.store.rv - 1, self.store.compacted_rv)
        for watch in list(self._watches):
            watch.queue.put_nowait({"type": "ERROR", "object": expired.status()})
            watch.queue.put_nowait(None)

    def stall_watches(self, *, new_too: bool = False) -> None:
        """The watch streams open now stay open but send nothing, bookmarks included, and
        ignore timeoutSeconds — a network path that silently stopped delivering. A client
        that notices reconnects to a working stream, unless ``new_too`` stalls those as
        well. Held events are sent on ``unstall_watches()``."""
        for watch in self._watches:
            watch.flowing.clear()
        self._stall_new_watches = new_too

    def unstall_watches(self) -> None:
        self._stall_new_watches = False
        for watch in self._watches:
            watch.flowing.set()

    def throttle(self, n: int, retry_after: int = 1) -> None:
        """Answer the next ``n`` requests with 429 Too Many Requests and ``Retry-After``."""
        self._throttle_left = n
        self._retry_after = retry_after

    def install_group(self, group: str) -> None:
        self.store.installed_groups.add(group)

    def uninstall_group(self, group: str) -> None:
        self.store.installed_groups.discard(group)

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    def watches_of(self, kind: str) -> int:
        return sum(1 for w in self._watches if w.info.kind == kind)

    async def wait_for_watches(self, kind: str, count: int = 1, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.watches_of(kind) < count:
                await asyncio.sleep(0.02)

    def count_requests(self, method: str | None = None, *, contains: str = "",
                       watch: bool | None = None) -> int:
        return sum(1 for r in self.requests
                   if (method is None or r.method == method) and contains in r.path
                   and (watch is None or _true(r.query.get("watch")) == watch))

    # --- direct access for tests (no auth, no throttling, may set status) ----------------

    def apply(self, obj: Obj) -> Obj:
        """Create or replace ``obj`` as the test's own hand: spec and status both taken.

        Its namespace is created if missing. Returns the stored object.
        """
        info = self._info_of(obj)
        meta = obj.get("metadata", {})
        ns = meta.get("namespace", "default") if info.namespaced else ""
        if info.namespaced and ("", ns) not in self.store.objects(BY_KIND["Namespace"]):
            self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        if (ns, meta["name"]) in self.store.objects(info):
            body = {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
            return self.store.update(info, ns, meta["name"], body, admin=True)
        return self.store.create(info, ns, obj, keep_status=True, require_namespace=False)

    def get(self, kind: str, namespace: str, name: str) -> Obj:
        return self.store.get(BY_KIND[kind], namespace, name)

    def get_or_none(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.get(kind, namespace, name)
        except ApiError:
            return None

    def list_objects(self, kind: str, namespace: str | None = None) -> list[Obj]:
        return self.store.list_page(BY_KIND[kind], namespace, lambda o: True)[0]

    def delete(self, kind: str, namespace: str, name: str) -> Obj:
        return self.store.delete(BY_KIND[kind], namespace, name)

    def patch(self, kind: str, namespace: str, name: str, patch: Obj) -> Obj:
        """A merge patch as the test's own hand (status changes ignored like any client's)."""
        return self.store.patch(BY_KIND[kind], namespace, name, patch)

    @staticmethod
    def _info_of(obj: Mapping[str, Any]) -> KindInfo:
        info = BY_KIND.get(str(obj.get("kind")))
        if info is None:
            raise ValueError(f"the fake does not serve kind {obj.get('kind')!r}")
        return info

    # --- HTTP ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = RequestRecord(request.method, request.path, dict(request.query))
        self.requests.append(record)
        try:
            response = await self._dispatch(request)
        except ApiError as err:
            response = _error_response(err)
        record.status = response.status
        return response

    def _authenticate(self, request: web.Request) -> None:
        if not self.require_auth:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.tokens:
            raise ApiError(401, "Unauthorized", "Unauthorized")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self._authenticate(request)
        if self._throttle_left > 0:
            self._throttle_left -= 1
            raise ApiError(429, "TooManyRequests", "the server has received too many requests "
                           "and has asked us to try again later",
                           details={"retryAfterSeconds": self._retry_after},
                           headers={"Retry-After": str(self._retry_after)})
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake",
                                      "platform": "linux/amd64"})
        if parts and parts[0] == "api":
            if len(parts) == 1:
                return web.json_response({"kind": "APIVersions", "versions": ["v1"],
                                          "serverAddressByClientCIDRs": []})
            group, version, rest = "", parts[1], parts[2:]
        elif parts and parts[0] == "apis":
            if len(parts) == 1:
                return web.json_response(self._group_list())
            group = parts[1]
            if group not in groups() or not self._group_served(group):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if len(parts) == 2:
                return web.json_response(self._group(group))
            version, rest = parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return web.json_response(self._resource_list(group, version))
        return await self._resource(request, group, version, rest)

    # discovery

    def _group_served(self, group: str) -> bool:
        return any(self.store.served(k) for k in KINDS if k.group == group)

    def _versions(self, group: str) -> list[str]:
        seen: list[str] = []
        for k in KINDS:
            if k.group == group:
                seen.extend(v for v in k.versions if v not in seen)
        return seen

    def _group(self, group: str) -> Obj:
        versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in self._versions(group)]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions,
                "preferredVersion": versions[0]}

    def _group_list(self) -> Obj:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self._group(g) for g in groups() if self._group_served(g)]}

    def _resource_list(self, group: str, version: str) -> Obj:
        kinds = [k for k in KINDS if k.group == group and version in k.versions
                 and self.store.served(k)]
        if not kinds:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resources: list[Obj] = []
        for k in kinds:
            resources.append({"name": k.plural, "singularName": k.kind.lower(),
                              "namespaced": k.namespaced, "kind": k.kind, "verbs": VERBS,
                              "shortNames": list(k.short_names)})
            if k.status_subresource:
                resources.append({"name": f"{k.plural}/status", "singularName": "",
                                  "namespaced": k.namespaced, "kind": k.kind,
                                  "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources}

    # resources

    def _route(self, group: str, version: str,
               rest: list[str]) -> tuple[KindInfo, str | None, str | None, str | None]:
        """(kind, namespace, name, subresource) from the path after GROUP/VERSION."""
        namespace: str | None = None
        if (len(rest) >= 3 and rest[0] == "namespaces"
                and (group, rest[2]) in BY_GROUP_PLURAL
                and BY_GROUP_PLURAL[(group, rest[2])].namespaced):
            namespace, rest = rest[1], rest[2:]
        info = BY_GROUP_PLURAL.get((group, rest[0]))
        if info is None or version not in info.versions or not self.store.served(info) \
                or len(rest) > 3 or (namespace is not None and not info.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if subresource is not None and (subresource != "status" or not info.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return info, namespace, name, subresource

    async def _resource(self, request: web.Request, group: str, version: str,
                        rest: list[str]) -> web.StreamResponse:
        info, namespace, name, subresource = self._route(group, version, rest)
        method = request.method
        query = request.query
        if name is None:
            if method == "GET":
                if _true(query.get("watch")):
                    return await self._watch(request, info, version, namespace)
                return self._list(info, version, namespace, query)
            if method == "POST":
                if info.namespaced and namespace is None:
                    raise ApiError(405, "MethodNotAllowed", "create needs a namespace")
                body = await self._body(request, JSON)
                created = self.store.create(info, namespace or "", body)
                return web.json_response(with_version(created, info, version), status=201)
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")
        ns = namespace or ""
        if info.namespaced and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if method == "GET":
            return web.json_response(with_version(self.store.get(info, ns, name), info, version))
        if method == "PUT":
            body = await self._body(request, JSON)
            updated = self.store.update(info, ns, name, body, subresource=subresource)
            return web.json_response(with_version(updated, info, version))
        if method == "PATCH":
            body = await self._body(request, MERGE_PATCH)
            patched = self.store.patch(info, ns, name, body, subresource=subresource)
            return web.json_response(with_version(patched, info, version))
        if method == "DELETE" and subresource is None:
            return web.json_response(with_version(self.store.delete(info, ns, name), info,
                                                  version))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    @staticmethod
    async def _body(request: web.Request, content_type: str) -> Obj:
        got = request.content_type
        if content_type == MERGE_PATCH and got != MERGE_PATCH:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format - accepted media "
                           f"types include: {MERGE_PATCH} (the fake serves merge patches only; "
                           f"got {got})")
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"invalid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        return body

    @staticmethod
    def _selectors(query: Mapping[str, str]) -> tuple[Predicate, Predicate]:
        try:
            return (parse_label_selector(query.get("labelSelector")),
                    parse_field_selector(query.get("fieldSelector")))
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from exc

    def _list(self, info: KindInfo, version: str, namespace: str | None,
              query: Mapping[str, str]) -> web.Response:
        label, field_ = self._selectors(query)
        try:
            limit = int(query["limit"]) if query.get("limit") else None
        except ValueError as exc:
            raise ApiError(400, "BadRequest", "limit must be an integer") from exc
        items, rv, token, remaining = self.store.list_page(
            info, namespace, lambda o: label(o) and field_(o),
            limit=limit, continue_=query.get("continue") or None)
        meta: Obj = {"resourceVersion": rv}
        if token:
            meta["continue"] = token
            meta["remainingItemCount"] = remaining
        return web.json_response({
            "kind": info.list_kind, "apiVersion": info.api_version(version), "metadata": meta,
            "items": [with_version(o, info, version) for o in items]})

    def _fan_out(self, event: Event) -> None:
        for watch in list(self._watches):
            line = watch.translate(event)
            if line is not None:
                watch.queue.put_nowait(line)

    async def _watch(self, request: web.Request, info: KindInfo, version: str,
                     namespace: str | None) -> web.StreamResponse:
        query = request.query
        label, field_ = self._selectors(query)
        watch = _Watch(info, version, namespace, label, field_)
        rv_text = query.get("resourceVersion", "")
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") \
                else self.default_watch_timeout
        except ValueError as exc:
            raise ApiError(400, "BadRequest", "timeoutSeconds must be a number") from exc
        bookmarks = _true(query.get("allowWatchBookmarks"))
        # Registering and replaying happen in one synchronous step: no event falls between.
        initial: list[Obj] = []
        expired: ApiError | None = None
        if rv_text in ("", "0"):
            # "Get state and start at most recent" / "start at any": the current objects as
            # synthetic ADDED events, then the changes after them.
            for obj in self.store.list_page(info, namespace, lambda o: True)[0]:
                if watch.matches(obj):
                    initial.append({"type": "ADDED",
                                    "object": with_version(obj, info, version)})
        else:
            try:
                from_rv = int(rv_text)
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv_text!r}") from exc
            try:
                for event in self.store.events_after(info, from_rv):
                    line = watch.translate(event)
                    if line is not None:
                        initial.append(line)
            except ApiError as err:
                if not self.too_old_watch_as_event:
                    raise
                expired = err
        response = web.StreamResponse(status=200, headers={"Content-Type": JSON})
        response.enable_chunked_encoding()
        if expired is None:
            self._watches.add(watch)
            if self._stall_new_watches:
                watch.flowing.clear()
        try:
            await response.prepare(request)
            watch.transport = request.transport
            if expired is not None:
                await self._write(response, {"type": "ERROR", "object": expired.status()})
                return response
            for line in initial:
                watch.queue.put_nowait(line)
            await self._stream(response, watch, timeout, bookmarks)
        except ConnectionResetError:
            return response  # the client went away: nothing left to say
        finally:
            self._watches.discard(watch)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _stream(self, response: web.StreamResponse, watch: _Watch, timeout: float,
                      bookmarks: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not watch.flowing.is_set():
                await watch.flowing.wait()
                continue
            if not watch.queue.empty():  # what is pending goes out, even past the deadline
                line = watch.queue.get_nowait()
                if line is None:
                    return
                await self._write(response, line)
                if line["type"] == "ERROR":
                    return
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return  # timeoutSeconds: the server ends the stream cleanly
            try:
                async with asyncio.timeout(min(remaining, self.bookmark_interval)):
                    line = await watch.queue.get()
            except TimeoutError:
                if bookmarks and loop.time() < deadline and watch.flowing.is_set():
                    # Everything up to the current version has been sent (the queue is empty),
                    # so a bookmark may carry it.
                    info = watch.info
                    await self._write(response, {"type": "BOOKMARK", "object": {
                        "kind": info.kind, "apiVersion": info.api_version(watch.version),
                        "metadata": {"resourceVersion": str(self.store.rv)}}})
                continue
            if line is None:
                return
            # Stalled while this stream waited: hold the event until released.
            await watch.flowing.wait()
            await self._write(response, line)
            if line["type"] == "ERROR":
                return

    @staticmethod
    async def _write(response: web.StreamResponse, line: Obj) -> None:
        await response.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
