"""Locust workloads for pyproxy's storefront -> stockmanager -> zipkin labs.

Each request is reported under the name of the backend that answered it -- read from the
``x-pyproxy-backend`` response header that pyproxy adds with ``debug_headers: true`` -- so
locust's statistics (web UI, ``--csv``) show every version's request count, failure rate
and latency side by side: a 90/10 canary shows up as two rows, ``canary stockmanager/v1``
and ``canary stockmanager/v2``, and the broken 0.0.2's ~50 % failures are in its row.

User classes (pick them by name on the command line; each has its own row prefix):

``CanaryUser``      steady traffic at the stockmanager route (``Host: stockmanager``), like
                    the lab's load generator: no cookies, so every request is a new draw
                    of the split.
``TesterUser``      the same requests with ``end-user: tester`` (dark launch): a route that
                    matches the header sends the tester to the new version.
``StickyUser``      a signed-in user: sends its own ``end-user: user-N`` and keeps cookies,
                    so a route with ``sticky: {header: end-user}`` or ``sticky: {cookie:
                    ...}`` pins it to the version it drew first; a response from another
                    version is a failure (``sticky user moved from A to B``).
``StorefrontUser``  ``GET /store/stocklevel`` through the storefront, as in the labs. The
                    storefront's proxy names only the storefront, so the row is named after
                    the stockmanager the storefront's reply says it called (fake-service
                    replies list their upstream calls), e.g. ``storefront stockmanager-v2``.

Pacing: ``--rate R`` holds the whole run at about R requests/s, shared by the users
(constant throughput: a slow answer does not slow the schedule down); without it each user
sends as fast as it gets answers. ``rate_shape.py`` runs staged rates instead.

    locust -f loadtests/locustfile.py CanaryUser --host http://127.0.0.1:8080 \\
        --headless -u 10 -r 10 -t 1m --rate 50 --csv /tmp/canary

Options: ``--stockmanager-host`` (Host header of the stockmanager route, default
``stockmanager``), ``--stockmanager-path`` (default ``/stocklevel``), ``--storefront-path``
(default ``/store/stocklevel``). Every option also reads ``LOCUST_<NAME>`` from the
environment.
"""

from __future__ import annotations

import json
import time

from locust import HttpUser, events, task

NO_BACKEND = "-"  # what pyproxy puts in x-pyproxy-backend when no backend was chosen


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--rate", type=float, default=0.0, env_var="LOCUST_RATE",
                        help="total requests per second over all users (0: no pacing)")
    parser.add_argument("--stockmanager-host", default="stockmanager",
                        env_var="LOCUST_STOCKMANAGER_HOST",
                        help="Host header for the stockmanager route (Canary/Tester/Sticky)")
    parser.add_argument("--stockmanager-path", default="/stocklevel",
                        env_var="LOCUST_STOCKMANAGER_PATH")
    parser.add_argument("--storefront-path", default="/store/stocklevel",
                        env_var="LOCUST_STOREFRONT_PATH")


def backend_of(response) -> str:
    """Who answered, from pyproxy's debug headers: the backend (``stockmanager/v2``), or
    for a request the proxy answered itself (an injected abort, no route, overload) the
    route and flags, e.g. ``zipkin [FI]``."""
    headers = response.headers
    backend = headers.get("x-pyproxy-backend")
    if backend is None:
        return "(no x-pyproxy-backend: set debug_headers: true)"
    if backend != NO_BACKEND:
        return backend
    return f"{headers.get('x-pyproxy-route', '-')} [{headers.get('x-pyproxy-flags', '-')}]"


def upstream_of(response) -> str:
    """The first upstream a fake-service reply says it called (``stockmanager-v1``), or
    what answered instead: ``proxy 503`` for a proxy-made error, ``unreachable``."""
    try:
        calls = list(json.loads(response.content).get("upstream_calls", {}).values())
    except (ValueError, AttributeError, TypeError):
        return "(not a fake-service reply)"
    if not calls:
        return "(no upstream call)"
    call = calls[0]
    body = call.get("body")
    if isinstance(body, dict) and "name" in body:
        return body["name"]
    return "unreachable" if "error" in call else f"proxy {call.get('code')}"


class LabUser(HttpUser):
    """One request per task run, reported under ``"<label> <who answered>"``."""

    abstract = True
    label = "lab"
    keep_cookies = False

    def on_start(self) -> None:
        self._task_started = 0.0

    def wait_time(self) -> float:
        options = self.environment.parsed_options
        rate = getattr(options, "rate", 0.0) if options is not None else 0.0
        if rate and rate > 0:
            interval = max(1, self.environment.runner.user_count) / rate
        elif getattr(self.environment, "shape_class", None) is not None:
            interval = 1.0  # rate_shape.py: one request a second per user, users = rate
        else:
            return 0.0
        return max(0.0, interval - (time.monotonic() - self._task_started))

    def option(self, name: str, default: str) -> str:
        options = self.environment.parsed_options
        return getattr(options, name, default) if options is not None else default

    def who(self, response) -> str:
        return backend_of(response)

    def check(self, response, who: str) -> None:
        """Mark the request failed or not; ``who`` is the name it is reported under."""
        if response.status_code == 0:
            response.failure(f"no response: {response.error}")
        elif response.status_code >= 400:
            flags = response.headers.get("x-pyproxy-flags", "-")
            response.failure(f"HTTP {response.status_code}"
                             + (f" flags={flags}" if flags != "-" else ""))
        else:
            response.success()

    def request(self, path: str, headers: dict[str, str]) -> None:
        self._task_started = time.monotonic()
        if not self.keep_cookies:
            self.client.cookies.clear()  # every request a new visitor: a fresh split draw
        with self.client.get(path, headers=headers, name=f"{self.label} {path}",
                             catch_response=True) as response:
            who = self.who(response)
            # Report this request under the backend that answered, not the path: one
            # statistics row per version.
            response.request_meta["name"] = f"{self.label} {who}"
            self.check(response, who)


class CanaryUser(LabUser):
    """Steady traffic at the stockmanager route: the split's every draw is visible."""

    label = "canary"

    @task
    def stocklevel(self) -> None:
        self.request(self.option("stockmanager_path", "/stocklevel"),
                     {"Host": self.option("stockmanager_host", "stockmanager")})


class TesterUser(LabUser):
    """The test user of the dark launch: ``end-user: tester`` on every request."""

    label = "tester"

    @task
    def stocklevel(self) -> None:
        self.request(self.option("stockmanager_path", "/stocklevel"),
                     {"Host": self.option("stockmanager_host", "stockmanager"),
                      "end-user": "tester"})


class StickyUser(LabUser):
    """A signed-in, browser-like user (own ``end-user``, keeps cookies): it must stay on the
    version it drew first."""

    label = "sticky"
    keep_cookies = True
    _count = 0

    def on_start(self) -> None:
        super().on_start()
        StickyUser._count += 1
        self.user_id = f"user-{StickyUser._count}-{id(self) % 10_000}"
        self.pinned: str | None = None

    def check(self, response, who: str) -> None:
        if response.status_code and response.headers.get("x-pyproxy-backend", NO_BACKEND) \
                != NO_BACKEND:
            if self.pinned is None:
                self.pinned = who
            elif who != self.pinned:
                response.failure(f"sticky user moved from {self.pinned} to {who}")
                return
        super().check(response, who)

    @task
    def stocklevel(self) -> None:
        self.request(self.option("stockmanager_path", "/stocklevel"),
                     {"Host": self.option("stockmanager_host", "stockmanager"),
                      "end-user": self.user_id})


class StorefrontUser(LabUser):
    """The labs' ``/store/stocklevel`` through the storefront, named after the stockmanager
    version the storefront called."""

    label = "storefront"

    def who(self, response) -> str:
        return upstream_of(response)

    @task
    def stocklevel(self) -> None:
        self.request(self.option("storefront_path", "/store/stocklevel"), {})
