"""The one module that speaks to the Kubernetes API server (through ``kubernetes_asyncio``).

Objects go in and out as plain dicts, the JSON as the server sends it — never the
generated model classes: the importers in ``config.compat`` read dicts, and custom
resources (HTTPRoute, TrafficSplit...) have no model classes anyway. Requests go through
``ApiClient.call_api`` with the raw response (``_preload_content=False``), so one code path
serves every resource and this module reads status codes and ``Retry-After`` itself.

Credentials: the pod's service account (``kubeconfig=None``) or a kubeconfig file. The
bearer token is read from its file whenever the file changes (the kubelet rotates
projected service-account tokens, by default hourly) and once more on a 401, so a rotated
token is used from the next request on; ``kubernetes_asyncio``'s own in-cluster refresh
would keep an old token for up to a minute.

Every failure is a :class:`KubeApiError`: ``status`` is the HTTP status, or 0 when no
answer came (connection refused or reset, a watch stream idle past its timeout).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration

from pyproxy.discovery.kubernetes.resources import Object, Resource

__all__ = ["KubeApiError", "KubeClient", "ListResult", "Object", "TokenFile", "WatchEvent",
           "pod_namespace"]

logger = logging.getLogger("pyproxy.kubernetes")

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeApiError(Exception):
    """The API server refused a request, or could not be reached.

    ``status``: the HTTP status, 0 when there was no answer; ``reason``: the Status
    object's machine-readable reason (``Expired``, ``Conflict``, ``NotFound``...) or the
    HTTP reason phrase; ``retry_after``: seconds from a ``Retry-After`` header (429, 503).
    """

    def __init__(self, status: int, reason: str, retry_after: float | None = None,
                 message: str = ""):
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.message = message
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")


@dataclass(frozen=True)
class ListResult:
    """One page of a list: its items, the collection's resourceVersion, and the token
    for the next page (None on the last)."""

    items: list[Object]
    resource_version: str
    continue_: str | None


@dataclass(frozen=True)
class WatchEvent:
    """``ADDED``, ``MODIFIED``, ``DELETED``, ``BOOKMARK`` or ``ERROR`` (whose object is a
    Status, such as 410 Expired)."""

    type: str
    object: Object


def pod_namespace() -> str | None:
    """The namespace this pod runs in: ``POD_NAMESPACE``, else the service account's."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return (SERVICE_ACCOUNT / "namespace").read_text().strip() or None
    except OSError:
        return None


class TokenFile:
    """A bearer token kept in a file, re-read when the file changes (inode, mtime or size:
    the kubelet swaps a symlink, an editor rewrites in place)."""

    def __init__(self, path: str):
        self.path = path
        self.token = ""
        self._stamp: tuple[int, int, int] | None = None

    def read(self, *, force: bool = False) -> str:
        try:
            info = os.stat(self.path)
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
            if force or stamp != self._stamp:
                token = Path(self.path).read_text().strip()
                if token:  # a file caught mid-write keeps the previous token
                    if self.token and token != self.token:
                        logger.info("kubernetes: token in %s changed; using the new one",
                                    self.path)
                    self.token = token
                    self._stamp = stamp
        except OSError as problem:
            if not self.token:
                raise KubeApiError(0, "NoToken", message=f"cannot read {self.path}: "
                                                          f"{problem.strerror}") from problem
        return self.token


class KubeClient:
    """list / watch / get / replace / replace_status / create / patch_merge over dicts."""

    def __init__(self, api: ApiClient, token: TokenFile | None, *,
                 request_timeout: float = 30.0, namespace: str | None = None):
        self._api = api
        self._closed = False
        self._token = token
        self.request_timeout = request_timeout
        self.namespace = namespace  # the kubeconfig context's namespace, if it names one
        if token is not None:
            configuration: Configuration = api.configuration

            def refresh(config: Configuration, *_: object) -> None:
                config.api_key["BearerToken"] = f"Bearer {token.read()}"

            configuration.refresh_api_key_hook = refresh

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, *, token_file: str | None = None,
                      request_timeout: float = 30.0) -> KubeClient:
        """A client from a kubeconfig file, or (``kubeconfig=None``) from the pod's service
        account. ``token_file`` overrides where the bearer token is read from."""
        configuration = Configuration()
        namespace = None
        try:
            if kubeconfig:
                loader = await kube_config.load_kube_config(
                    config_file=kubeconfig, client_configuration=configuration,
                    persist_config=False)
                if token_file is None:
                    token_file = _kubeconfig_token_file(loader, kubeconfig)
                context = loader.current_context or {}
                found = (context.get("context") or {}).get("namespace")
                namespace = found if isinstance(found, str) and found else None
            else:
                # Untyped upstream; our TokenFile does the refresh (see the module docstring).
                kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration, try_refresh_token=False)
                token_file = token_file or str(SERVICE_ACCOUNT / "token")
        except kube_config.ConfigException as problem:
            where = kubeconfig or "the pod's service account (not running in a cluster?)"
            raise KubeApiError(0, "NoConfig", message=f"{where}: {problem}") from problem
        token = TokenFile(token_file) if token_file else None
        if token is not None:
            configuration.api_key["BearerToken"] = f"Bearer {token.read()}"
        return cls(ApiClient(configuration), token, request_timeout=request_timeout,
                   namespace=namespace)

    @property
    def host(self) -> str:
        host: str | None = self._api.configuration.host
        return host or ""

    async def close(self) -> None:
        # Tasks still holding the client (the Lease's release on shutdown) then get a
        # KubeApiError they handle, not aiohttp's RuntimeError("Session is closed").
        self._closed = True
        await self._api.close()

    # ------------------------------------------------------------------ reads

    async def list(self, resource: Resource, namespace: str | None, *,
                   label_selector: str | None = None, field_selector: str | None = None,
                   limit: int | None = None, continue_: str | None = None) -> ListResult:
        """One page of ``resource`` in ``namespace`` (None: all namespaces)."""
        query = _selectors(label_selector, field_selector)
        if limit is not None:
            query.append(("limit", str(limit)))
        if continue_:
            query.append(("continue", continue_))
        body = await self._json("GET", resource.path(namespace), query)
        metadata = body.get("metadata") or {}
        items = body.get("items") or []
        for item in items:  # list items carry no apiVersion/kind; the importers need them
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
        return ListResult(items, str(metadata.get("resourceVersion") or ""),
                          metadata.get("continue") or None)

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Object:
        return await self._json("GET", resource.path(namespace, name))

    async def watch(self, resource: Resource, namespace: str | None, *, resource_version: str,
                    timeout_seconds: int, allow_bookmarks: bool = True,
                    label_selector: str | None = None, field_selector: str | None = None,
                    idle_timeout: float | None = None) -> AsyncGenerator[WatchEvent, None]:
        """The events after ``resource_version`` until the server ends the stream (after
        ``timeout_seconds``). No bytes for ``idle_timeout`` seconds (default: the server
        timeout plus 30s) raises KubeApiError(0, "Idle"): a stalled stream."""
        query = [("watch", "true"), ("resourceVersion", resource_version),
                 ("timeoutSeconds", str(timeout_seconds)),
                 *_selectors(label_selector, field_selector)]
        if allow_bookmarks:
            query.append(("allowWatchBookmarks", "true"))
        idle = idle_timeout if idle_timeout is not None else timeout_seconds + 30.0
        timeout = aiohttp.ClientTimeout(sock_connect=self.request_timeout, sock_read=idle)
        response = await self._send("GET", resource.path(namespace), query, limits=timeout)
        try:
            if response.status != 200:
                raise await _error(response)
            pending = bytearray()
            async for chunk in response.content.iter_any():
                pending += chunk
                while (end := pending.find(b"\n")) >= 0:
                    line = bytes(pending[:end])
                    del pending[:end + 1]
                    if line.strip():
                        yield _event(line)
            if pending.strip():
                yield _event(bytes(pending))
        except (TimeoutError, aiohttp.ServerTimeoutError) as problem:
            raise KubeApiError(0, "Idle", message=f"watch of {resource.plural} sent nothing "
                                                  f"for {idle:g}s") from problem
        except aiohttp.ClientError as problem:
            raise KubeApiError(0, "Disconnected", message=str(problem) or
                               type(problem).__name__) from problem
        finally:
            response.close()

    async def discover(self, resource: Resource) -> Resource | None:
        """``resource`` as this server serves it: the same, another served version of its
        group that has the plural, or None when its CRD is not installed."""
        if not resource.group:
            return resource
        try:
            group = await self._json("GET", f"/apis/{resource.group}")
        except KubeApiError as problem:
            if problem.status == 404:
                return None
            raise
        versions = [str(v.get("version")) for v in group.get("versions") or []]
        preferred = (group.get("preferredVersion") or {}).get("version")
        order = [resource.version, *([preferred] if preferred else []), *versions]
        for version in dict.fromkeys(v for v in order if v in versions):
            try:
                listing = await self._json("GET", f"/apis/{resource.group}/{version}")
            except KubeApiError as problem:
                if problem.status == 404:
                    continue
                raise
            if any(item.get("name") == resource.plural for item in
                   listing.get("resources") or []):
                return resource.with_version(version)
        return None

    # ------------------------------------------------------------------ writes

    async def create(self, resource: Resource, obj: Object) -> Object:
        namespace = (obj.get("metadata") or {}).get("namespace")
        return await self._json("POST", resource.path(namespace), body=obj)

    async def replace(self, resource: Resource, obj: Object) -> Object:
        """PUT the whole object; 409 Conflict when its resourceVersion is stale."""
        namespace, name = _identity(obj)
        return await self._json("PUT", resource.path(namespace, name), body=obj)

    async def replace_status(self, resource: Resource, obj: Object) -> Object:
        """PUT through the ``/status`` subresource: only ``status`` changes."""
        namespace, name = _identity(obj)
        return await self._json("PUT", resource.path(namespace, name, "status"), body=obj)

    async def patch_merge(self, resource: Resource, namespace: str | None, name: str,
                          patch: Object) -> Object:
        """A JSON merge patch (RFC 7386): lists are replaced whole, null deletes a key."""
        return await self._json("PATCH", resource.path(namespace, name), body=patch,
                                content_type="application/merge-patch+json")

    # ------------------------------------------------------------------ transport

    async def _json(self, method: str, path: str, query: Sequence[tuple[str, str]] = (),
                    *, body: Object | None = None,
                    content_type: str = "application/json") -> Object:
        response = await self._send(method, path, query, body=body, content_type=content_type)
        try:
            if not 200 <= response.status < 300:
                raise await _error(response)
            try:
                decoded = await response.json(content_type=None)
            except ValueError as problem:
                raise KubeApiError(response.status, "BadResponse",
                                   message=f"{method} {path}: not JSON: {problem}") from problem
            except (TimeoutError, aiohttp.ClientError) as problem:
                raise KubeApiError(0, "Disconnected", message=f"{method} {path}: "
                                   f"{str(problem) or type(problem).__name__}") from problem
            if not isinstance(decoded, dict):
                raise KubeApiError(response.status, "BadResponse",
                                   message=f"{method} {path}: not a JSON object")
            return decoded
        finally:
            response.release()

    async def _send(self, method: str, path: str, query: Sequence[tuple[str, str]], *,
                    body: Object | None = None, content_type: str = "application/json",
                    limits: aiohttp.ClientTimeout | None = None) -> aiohttp.ClientResponse:
        """The raw response; a 401 re-reads the token file once and retries (a rotation the
        file's timestamps did not show)."""
        if self._closed:
            raise KubeApiError(0, "Closed", message=f"{method} {path}: the client is closed")
        for attempt in (1, 2):
            try:
                response = await self._call(method, path, query, body, content_type,
                                            limits or aiohttp.ClientTimeout(
                                                total=self.request_timeout))
            except (TimeoutError, aiohttp.ClientError) as problem:
                raise KubeApiError(0, "Unreachable", message=f"{method} {self.host}{path}: "
                                   f"{str(problem) or type(problem).__name__}") from problem
            if response.status == 401 and attempt == 1 and self._token is not None:
                before = self._token.token
                if self._token.read(force=True) != before:
                    response.release()
                    continue
            return response
        raise AssertionError("unreachable: the loop returns or continues once")

    async def _call(self, method: str, path: str, query: Sequence[tuple[str, str]],
                    body: Object | None, content_type: str,
                    limits: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        # call_api is untyped in kubernetes_asyncio; with _preload_content=False it returns
        # the aiohttp response unread and does not raise on an error status.
        response: aiohttp.ClientResponse = await self._api.call_api(
            path, method, query_params=list(query),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body, auth_settings=["BearerToken"], _preload_content=False,
            _request_timeout=limits)
        return response


def _kubeconfig_token_file(loader: object, kubeconfig: str) -> str | None:
    """The ``tokenFile`` of the kubeconfig's current user, relative to the kubeconfig.

    kubernetes_asyncio reads it once; it has no public accessor for the user entry.
    """
    user = getattr(loader, "_user", None)
    path = user.safe_get("tokenFile") if user is not None else None
    if not isinstance(path, str) or not path:
        return None
    return path if os.path.isabs(path) else os.path.join(os.path.dirname(kubeconfig), path)


def _selectors(label_selector: str | None, field_selector: str | None) -> list[tuple[str, str]]:
    query = []
    if label_selector:
        query.append(("labelSelector", label_selector))
    if field_selector:
        query.append(("fieldSelector", field_selector))
    return query


def _identity(obj: Object) -> tuple[str | None, str]:
    metadata = obj.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("the object has no metadata.name")
    namespace = metadata.get("namespace")
    return (namespace if isinstance(namespace, str) else None), name


def _event(line: bytes) -> WatchEvent:
    try:
        decoded = json.loads(line)
    except ValueError as problem:
        raise KubeApiError(200, "BadEvent", message=f"not JSON: {line[:200]!r}") from problem
    if not isinstance(decoded, dict) or not isinstance(decoded.get("object"), dict):
        raise KubeApiError(200, "BadEvent", message=f"not a watch event: {line[:200]!r}")
    return WatchEvent(str(decoded.get("type")), decoded["object"])


async def _error(response: aiohttp.ClientResponse) -> KubeApiError:
    """A KubeApiError from an error response: the Status object's reason and message."""
    retry_after = _retry_after(response.headers.get("Retry-After"))
    reason, message = response.reason or "", ""
    try:
        text = await asyncio.wait_for(response.text(), 10)
        status = json.loads(text)
        if isinstance(status, dict):
            reason = str(status.get("reason") or reason)
            message = str(status.get("message") or "")
    except (ValueError, TimeoutError, aiohttp.ClientError):
        pass
    return KubeApiError(response.status, reason, retry_after, message)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the API server sends whole seconds)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
