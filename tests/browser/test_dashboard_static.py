"""How the admin serves the dashboard's files (no browser needed): content types, the strict
CSP, revalidation, the allow-list, and that the page loads nothing from elsewhere and never
feeds API data to ``innerHTML``."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from pyproxy.admin.api import DASHBOARD_FILES, build_admin_app, start_admin
from pyproxy.metrics.stats import Stats

DASHBOARD = Path(__file__).resolve().parents[2] / "pyproxy" / "admin" / "dashboard"


class _Control:
    stats = Stats()

    def is_ready(self) -> bool:
        return True


@pytest.fixture
async def admin():
    runner = await start_admin(build_admin_app(_Control(), ""), "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        yield session, f"http://{host}:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("path, content_type", [
    ("/", "text/html"),
    ("/ui/app.js", "text/javascript"),
    ("/ui/style.css", "text/css"),
    ("/ui/favicon.svg", "image/svg+xml"),
])
async def test_files_are_served_with_their_type_and_a_strict_csp(admin, path, content_type):
    session, base = admin
    async with session.get(base + path) as response:
        assert response.status == 200
        assert response.content_type == content_type
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-cache"
        etag = response.headers["ETag"]
        assert await response.read()
    # revalidation: same file, 304 without a body
    async with session.get(base + path, headers={"If-None-Match": etag}) as response:
        assert response.status == 304
        assert await response.read() == b""


@pytest.mark.parametrize("path", ["/ui/", "/ui/api.py", "/ui/..%2Fapi.py", "/ui/%2e%2e/api.py",
                                  "/ui/index.htm", "/index.html", "/ui/app.js/x"])
async def test_only_the_listed_files_are_served(admin, path):
    session, base = admin
    async with session.get(base + path) as response:
        assert response.status == 404


def test_every_listed_file_exists_and_nothing_else_ships():
    shipped = {p.name for p in DASHBOARD.iterdir() if p.is_file()}
    assert shipped == set(DASHBOARD_FILES)


def test_the_page_loads_nothing_from_elsewhere():
    for name in DASHBOARD_FILES:
        text = (DASHBOARD / name).read_text()
        # no CDN, no web fonts, no external links other than the SVG namespace
        urls = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (name, urls)
        assert "@import" not in text and "@font-face" not in text
    html = (DASHBOARD / "index.html").read_text()
    assert "<style" not in html and "style=" not in html  # the CSP would block them
    assert re.findall(r"<script[^>]*>", html) == ['<script src="ui/app.js" defer>']


def test_the_script_never_writes_markup():
    js = (DASHBOARD / "app.js").read_text()
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", js, flags=re.S)  # comments may name them
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute('style'"):
        assert sink not in code, sink
