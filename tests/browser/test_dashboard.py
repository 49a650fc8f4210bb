"""The dashboard (``GET /``, docs/dashboard.md) in a real headless Chromium, against a real proxy.

Three ``pyproxy fake-service`` processes and a ``pyproxy run`` process, under load from a
background thread (stockmanager/v2 fails half of its requests; one inventory endpoint
refuses connections and gets ejected; the catalog route runs an automated canary). The
test then drives the proxy with the CLI, as an operator would, and watches the page:

* the split bars show the configured 90/10, the observed shares and success rates appear
  and keep updating, the sparklines grow;
* ``pyproxy set-weight`` shows the override badge ("set at run time by cli") and the new
  target; ``pyproxy fault ... --for 30s`` shows the fault banner, whose countdown runs;
* the ejected endpoint, the canary's progress and events, and the reload status show;
* strings from the config are text, never markup (an endpoint label holds an <img> tag);
* nothing breaks the strict CSP, no script error;
* the proxy restarting shows "Disconnected", then the page recovers by itself.

Screenshots go to ``test-artifacts/`` (``dashboard.png``, ``dashboard-dark.png``); with
``PYPROXY_UPDATE_SCREENSHOT=1`` the light one is also copied to ``docs/images/``.

Needs Debian's ``chromium`` (``apt-get install chromium``); skipped when no Chromium binary
exists. Driven by Playwright for Python with that binary — never ``playwright install``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.backends import free_port
from tests.support.harness import ProxyProcess

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
DOCS_IMAGE = ROOT / "docs" / "images" / "dashboard.png"

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
XSS_LABEL = "<img src=x onerror=window.__xss=1>"


def _chromium() -> str | None:
    for candidate in (os.environ.get("PYPROXY_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary (apt-get install -y chromium, or set PYPROXY_CHROMIUM)")


# ---------------------------------------------------------------------- processes


def _wait_http(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


class FakeServices:
    """``pyproxy fake-service`` subprocesses (simpler than in-process backends for a sync
    test: they need no event loop of ours)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *extra: str) -> int:
        port = free_port()
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "pyproxy", "fake-service", "--name", name,
             "--port", str(port), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return port

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def _config(v1: int, v2: int, v3: int, dead: int) -> str:
    return f"""\
access_log: {{format: off}}
services:
  stockmanager:
    endpoints:
      - {{address: 127.0.0.1:{v1}, labels: {{version: 0.0.1}}}}
      - {{address: 127.0.0.1:{v2}, labels: {{version: 0.0.2}}}}
    subsets: {{v1: {{version: 0.0.1}}, v2: {{version: 0.0.2}}}}
  catalog:
    endpoints:
      - {{address: 127.0.0.1:{v1}, labels: {{version: "1.4"}}}}
      - {{address: 127.0.0.1:{v3}, labels: {{version: "1.5"}}}}
    subsets: {{v1: {{version: "1.4"}}, v2: {{version: "1.5"}}}}
  inventory:
    endpoints:
      - {{address: 127.0.0.1:{v3}, labels: {{zone: a}}}}
      - {{address: 127.0.0.1:{dead}, labels: {{zone: "{XSS_LABEL}"}}}}
    outlier_detection: {{consecutive_5xx: 2, interval: 1s, base_ejection_time: 60s,
                        max_ejection_percent: 50}}
routes:
  - name: stockmanager
    hosts: [stockmanager, stockmanager.shop.svc.cluster.local]
    backends:
      - {{service: stockmanager, subset: v1, weight: 90}}
      - {{service: stockmanager, subset: v2, weight: 10}}
  - name: catalog
    hosts: [catalog]
    backends:
      - {{service: catalog, subset: v1, weight: 100}}
      - {{service: catalog, subset: v2, weight: 0}}
  - name: inventory
    hosts: [inventory]
    backends:
      - {{service: inventory}}
canaries:
  - name: catalog
    route: catalog
    primary: catalog/v1
    candidate: catalog/v2
    interval: 4s
    step_weights: [5, 10, 20, 35, 50]
    max_weight: 50
    threshold: 2
    min_requests: 3
    checks: {{success_rate_min: 95, latency_p99_max: 500ms}}
"""


class Load(threading.Thread):
    """Keep-alive requests to the proxy, round-robin over the hosts, until stopped.
    Connection errors (the proxy restarting) are waited out."""

    HOSTS = ("stockmanager", "stockmanager", "catalog", "catalog", "inventory")

    def __init__(self, proxy: ProxyProcess, pause: float = 0.004):
        super().__init__(daemon=True, name="dashboard-load")
        self.proxy = proxy
        self.pause = pause
        self.halt = threading.Event()
        self.sent = 0

    def run(self) -> None:
        conn = None
        i = 0
        while not self.halt.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=5)
                host = self.HOSTS[i % len(self.HOSTS)]
                conn.request("GET", "/stocklevel", headers={"Host": host})
                conn.getresponse().read()
                self.sent += 1
                i += 1
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                self.halt.wait(0.2)
            self.halt.wait(self.pause)
        if conn is not None:
            conn.close()


def _cli(proxy: ProxyProcess, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pyproxy", *args, "--admin", proxy.admin_url],
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def stack(tmp_path):
    services = FakeServices()
    v1 = services.start("stockmanager-v1")
    v2 = services.start("stockmanager-v2", "--error-rate", "0.5")
    v3 = services.start("catalog-v2")
    dead = free_port()  # nothing listens: connections are refused, the endpoint is ejected
    proxy = None
    load = None
    try:
        for port in (v1, v2, v3):
            _wait_http(f"http://127.0.0.1:{port}/health")
        config = tmp_path / "pyproxy.yaml"
        config.write_text(_config(v1, v2, v3, dead))
        proxy = ProxyProcess(config).start()
        load = Load(proxy)
        load.start()
        yield {"proxy": proxy, "config": config, "load": load}
    finally:
        if load is not None:
            load.halt.set()
            load.join(5)
        # the test may have replaced the proxy (restart): stop whichever is current
        current = load.proxy if load is not None else proxy
        for p in {id(x): x for x in (proxy, current) if x is not None}.values():
            p.stop()
        services.stop()


# ---------------------------------------------------------------------- the test


def _text(page, selector: str) -> str:
    return page.locator(selector).first.inner_text().strip()


def test_dashboard_live(stack):
    from playwright.sync_api import expect, sync_playwright

    proxy: ProxyProcess = stack["proxy"]
    load: Load = stack["load"]
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    route = '[data-route="stockmanager"]'
    v1 = f'{route} tr[data-backend="stockmanager/v1"]'
    v2 = f'{route} tr[data-backend="stockmanager/v2"]'

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900},
                                    color_scheme="light")
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.set_default_timeout(10_000)
            expect.set_options(timeout=10_000)

            response = page.goto(proxy.admin_url + "/")
            assert response.status == 200
            assert "default-src 'self'" in response.headers["content-security-policy"]

            # --- the split: configured 90/10, then observed shares and success rates
            expect(page.locator(f'{route} [data-split-values="target"]')).to_have_text("90% / 10%")
            target_bar = page.locator(f'{route} [data-split="target"]')
            expect(target_bar).to_have_attribute("aria-label", re.compile(r"v1 90%, v2 10%"))
            expect(page.locator("#conn")).to_contain_text("Live")
            expect(page.locator(f'{route} [data-split-values="observed"]')).to_have_text(
                re.compile(r"^\d+(\.\d)?% / \d+(\.\d)?%$"))
            expect(page.locator(f'{v1} [data-field="success"]')).to_have_text(re.compile(r"\d%"))
            expect(page.locator(f'{v2} [data-field="success"]')).to_have_text(re.compile(r"\d%"))
            # v2 fails about half of its requests: shown as failing, in words too
            expect(page.locator(f"{v2} .sr")).to_have_class(re.compile(r"sr-bad|sr-warn"))
            expect(page.locator(f"{v2} .sr .sr-only")).to_have_text(re.compile("failing|degraded"))
            expect(page.locator(f"{v1} .sr")).to_have_class(re.compile(r"sr-good"))

            # --- live: values change between polls and the sparklines grow
            def reading() -> tuple[str, ...]:
                return tuple(_text(page, f'{v1} [data-field="{f}"]')
                             for f in ("requests", "rps", "observed", "p99"))

            first = reading()
            points = int(page.locator(f"{v1} svg.spark-rps").get_attribute("data-points"))
            deadline = time.monotonic() + 10
            while reading() == first:
                assert time.monotonic() < deadline, f"dashboard values never changed: {first}"
                page.wait_for_timeout(250)
            expect(page.locator(f"{v1} svg.spark-rps")).not_to_have_attribute(
                "data-points", str(points))
            expect(page.locator(f"{v1} svg.spark-rps polyline")).to_have_count(1)

            # --- a weight override set with the CLI
            _cli(proxy, "set-weight", "stockmanager", "stockmanager/v1=75", "stockmanager/v2=25")
            badge = page.locator(f"{route} .badge-override")
            expect(badge).to_contain_text("set at run time by cli")
            expect(page.locator(f'{route} [data-split-values="target"]')).to_have_text("75% / 25%")
            expect(page.locator(f'{route} [data-split-values="file"]')).to_have_text("90% / 10%")

            # --- a time-boxed fault with its countdown
            _cli(proxy, "fault", "stockmanager", "--abort", "503", "--percent", "20",
                 "--for", "30s")
            banner = page.locator('[data-fault="stockmanager"]')
            expect(banner).to_contain_text("abort 503 on 20% of requests")
            countdown = banner.locator(".fault-countdown")
            expect(countdown).to_have_text(re.compile(r"^0:[0-3]\d$"))
            before = int(countdown.inner_text().split(":")[1])
            page.wait_for_timeout(2200)
            after = int(countdown.inner_text().split(":")[1])
            assert 0 < before - after <= 4, (before, after)
            expect(page.locator('[data-kpi="faults"] dd')).to_have_text("1")
            # the aborted requests are a row of their own, not hidden behind the backends
            injected = page.locator(f"{route} tr[data-injected]")
            expect(injected).to_contain_text("injected abort (fault)")
            expect(injected).to_contain_text("abort 503 on 20% of requests")

            # --- services: the endpoint that refuses connections is ejected, with a reason
            dead = page.locator('[data-service="inventory"] tr.row-ejected')
            expect(dead).to_have_count(1)
            expect(dead.locator(".badge-ejected")).to_contain_text("Ejected")
            expect(dead).to_contain_text(re.compile(r"consecutive|gateway|5xx"))
            expect(dead.locator(".eject-countdown")).to_have_text(
                re.compile(r"^\d+ s$|^\d+ min( \d+ s)?$"))
            expect(dead).to_contain_text(re.compile(r"\(at \d\d:\d\d:\d\d UTC\)"))
            # ...and its label, which is an <img> tag, is text
            expect(dead.locator(".chip")).to_have_text("zone=" + XSS_LABEL)
            assert page.locator("#app img").count() == 0
            assert page.evaluate("window.__xss") is None

            # --- the automated canary: phase, progress, events
            canary = page.locator('[data-canary="catalog"]')
            expect(canary.locator(".phase")).to_have_text(
                re.compile("progressing|waiting promotion|promot"))
            expect(canary.locator(".event-list li").first).to_be_visible()
            expect(canary.locator('[role="progressbar"]')).to_have_attribute(
                "aria-valuenow", re.compile(r"^[1-9]\d*(\.\d+)?$"))

            # --- reload status
            expect(page.locator('[data-field="generation"]')).to_have_text("1")
            expect(page.locator('[data-field="reload-result"]')).to_contain_text("success")

            # let the sparklines draw a few more points, then take the pictures
            page.wait_for_timeout(1500)
            shot = ARTIFACTS / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            page.emulate_media(color_scheme="dark")
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / "dashboard-dark.png"), full_page=True)
            page.emulate_media(color_scheme="light")
            if os.environ.get("PYPROXY_UPDATE_SCREENSHOT"):
                DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, DOCS_IMAGE)

            # Up to here: no console error or warning at all (a CSP violation, a script
            # error, a missing file).
            assert not problems, problems

            # --- the proxy restarts: "disconnected", then the page recovers by itself
            proxy.stop()
            expect(page.locator("#conn")).to_contain_text("Disconnected")
            expect(page.locator("#app")).to_have_class(re.compile("stale"))
            restarted = ProxyProcess(stack["config"])
            restarted.port, restarted.admin_port = proxy.port, proxy.admin_port
            load.proxy = restarted
            restarted.start()
            expect(page.locator("#conn")).to_contain_text("Live")
            expect(page.locator("#app")).not_to_have_class(re.compile("stale"))
            # a new process: the run-time override is gone, the file's split serves again
            expect(page.locator(f'{route} [data-split-values="target"]')).to_have_text("90% / 10%")
            expect(page.locator(f"{route} .badge-override")).to_have_count(0)

            # --- an older proxy without the canary API: no Canaries section, no breakage
            page.route("**/api/v1/canaries", lambda r: r.fulfill(
                status=404, content_type="application/json", body='{"error": "not found"}'))
            page.reload()
            expect(page.locator(f'{route} [data-split-values="target"]')).to_have_text("90% / 10%")
            expect(page.locator("#h-canaries")).to_have_count(0)
            expect(page.locator("#conn")).to_contain_text("Live")
            # ...and a newer one with fields this page does not know (and markup in them)
            page.unroute("**/api/v1/canaries")
            page.route("**/api/v1/canaries", lambda r: r.fulfill(
                status=200, content_type="application/json", body=json.dumps({
                    "canaries": [{"name": "x<b>", "phase": "someday", "future": {"a": [1]},
                                  "events": [{"time": 1.5, "message": "<i>hi</i>", "new": 1}]}],
                    "more": True})))
            page.reload()
            future = page.locator('[data-canary="x<b>"]')
            expect(future.locator(".phase")).to_have_text("someday")
            expect(future.locator(".event-list li")).to_contain_text("<i>hi</i>")
            assert page.locator("#app b, #app i").count() == 0
        finally:
            browser.close()

    # Refused connections while the proxy was down, and the canary API's 404 we served,
    # are expected; anything else is a bug.
    unexpected = [p for p in problems
                  if "ERR_CONNECTION_REFUSED" not in p and "status of 404" not in p]
    assert not unexpected, unexpected
    assert load.sent > 100
