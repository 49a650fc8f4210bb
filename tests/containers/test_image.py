"""The built image (pyproxy:local), run as a user would run it.

One upstream (a ``pyproxy fake-service`` from the same image, answering after 2 s so a
request can be in flight when the proxy stops) and pyproxy with the image's defaults, both on
a network this module creates. pyproxy's ports are published on 127.0.0.1 only; the test
talks to nothing else. The tests run in file order: the last one stops the container.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.containers.support import IMAGE, docker, image_size, inspect, published_port, wait_for
from tests.support.processes import http

pytestmark = pytest.mark.containers
TOKEN = "container-test-token"
UPSTREAM_LATENCY = 2.0


class Proxy:
    def __init__(self, name: str):
        self.name = name
        self.port = published_port(name, 8080)
        self.admin = published_port(name, 9901)


@pytest.fixture(scope="module")
def proxy(images: None) -> Iterator[Proxy]:
    suffix = uuid.uuid4().hex[:8]
    network, upstream, name = (f"pyproxy-test-{suffix}", f"pyproxy-test-app-{suffix}",
                               f"pyproxy-test-proxy-{suffix}")
    docker("network", "create", network)
    try:
        docker("run", "-d", "--name", upstream, "--network", network, "--network-alias", "app",
               "--read-only", IMAGE, "pyproxy", "fake-service", "--name", "app",
               "--host", "0.0.0.0", "--port", "8081", "--latency", f"{UPSTREAM_LATENCY}s")
        # The image's own user, CMD, default config and HEALTHCHECK command; only the probe's
        # interval is shortened so the suite does not wait 10 s for the first one.
        docker("run", "-d", "--name", name, "--network", network, "--read-only",
               "-p", "127.0.0.1::8080", "-p", "127.0.0.1::9901",
               "-e", "PYPROXY_UPSTREAM=app:8081", "-e", "PYPROXY_ADMIN_LISTEN=0.0.0.0:9901",
               "-e", f"PYPROXY_ADMIN_TOKEN={TOKEN}", "-e", "PYPROXY_DRAIN_DELAY=1s",
               "--health-interval", "2s", "--health-start-period", "2s", IMAGE)
        yield Proxy(name)
    finally:
        for container in (name, upstream):
            logs = docker("logs", "--tail", "30", container, check=False)
            print(f"--- {container}\n{logs.stdout}{logs.stderr}")
            docker("rm", "-f", "-v", container, check=False)
        docker("network", "rm", network, check=False)


def test_image_size_is_reported(images: None, capsys: pytest.CaptureFixture[str]) -> None:
    size = image_size(IMAGE)
    with capsys.disabled():
        print(f"\nimage size: {IMAGE} {size / 1e6:.1f} MB")
    assert size < 400e6, f"{IMAGE} is {size / 1e6:.0f} MB"


def test_the_image_runs_the_compiled_hot_path(images: None) -> None:
    # The Dockerfile's build stage refuses a pure-Python result; this is the image as shipped.
    result = docker("run", "--rm", "--read-only", IMAGE, "pyproxy", "--version")
    assert "compiled hot path (mypyc," in result.stdout, result.stdout + result.stderr
    # Nor does the runtime stage carry the compiler that built it.
    probe = docker("run", "--rm", "--read-only", IMAGE, "python", "-c",
                   "import shutil; print([c for c in ('gcc', 'cc') if shutil.which(c)])")
    assert probe.stdout.strip() == "[]", probe.stdout


def test_nothing_of_the_build_machine_is_in_the_image(images: None) -> None:
    config = inspect(IMAGE)["Config"]
    env = dict(pair.partition("=")[::2] for pair in config["Env"])
    leaked = {k for k in env if k.startswith(("PIP_", "SSL_", "REQUESTS_CA", "CURL_CA"))}
    assert not leaked, leaked
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", IMAGE).stdout
    for secret_source in filter(None, [os.environ.get("PIP_CERT")]):
        assert secret_source not in history
    probe = docker("run", "--rm", "--read-only", IMAGE, "python", "-c",
                   "import json, os; print(json.dumps([p for p in ('/etc/xdg/pip', "
                   "'/etc/pip.conf', '/root/.config/pip', '/run/secrets/pip_cert', '/wheels', "
                   "'/src') if os.path.exists(p)]))")
    assert json.loads(probe.stdout) == []
    # The CA bundle pip used is nowhere in what the image adds to its base (the base's own
    # bundle lives in /etc/ssl and /usr/share/ca-certificates), nor are the packages' own
    # (certifi's bundle, a Kubernetes model that mentions one) taken for it.
    scan = docker("run", "--rm", "--read-only", IMAGE, "python", "-c", SCAN_FOR_CERTIFICATES)
    assert json.loads(scan.stdout) == [], scan.stdout


SCAN_FOR_CERTIFICATES = """
import csv, glob, json, os
# Every file an installed distribution lists in its RECORD is that package's own.
shipped = set()
for record in glob.glob("/opt/pyproxy/lib/python3*/site-packages/*.dist-info/RECORD"):
    site = os.path.dirname(os.path.dirname(record))
    with open(record, newline="") as handle:
        shipped.update(os.path.normpath(os.path.join(site, row[0]))
                       for row in csv.reader(handle) if row)
found = []
for top in ("/opt/pyproxy", "/etc/pyproxy", "/root", "/tmp", "/run", "/var/tmp"):
    for directory, _, files in os.walk(top):
        for name in files:
            path = os.path.join(directory, name)
            if path in shipped:
                continue
            try:
                with open(path, "rb") as handle:
                    if b"-----BEGIN CERTIFICATE-----" in handle.read():
                        found.append(path)
            except OSError:
                pass
print(json.dumps(found))
"""


def test_runs_as_uid_10001_on_a_read_only_root(proxy: Proxy) -> None:
    state = inspect(proxy.name)
    assert state["Config"]["User"] == "10001:10001"
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    ids = docker("exec", proxy.name, "python", "-c",
                 "import os; print(os.getuid(), os.getgid())").stdout.split()
    assert ids == ["10001", "10001"]
    # pyproxy itself (pid 1) too, not just a process exec'd next to it.
    status = docker("exec", proxy.name, "cat", "/proc/1/status").stdout
    assert "Uid:\t10001\t10001\t10001\t10001" in status, status
    refused = docker("exec", proxy.name, "touch", "/etc/pyproxy/x", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr


def test_readyz_answers_200(proxy: Proxy) -> None:
    wait_for(lambda: http(f"http://127.0.0.1:{proxy.admin}/readyz", timeout=2)[0] == 200,
             "/readyz 200", timeout=30)


def test_start_up_log_says_the_hot_path_is_compiled(proxy: Proxy) -> None:
    def started() -> str | None:
        # Once listening, pyproxy logs which build it runs: compiled at INFO, else a WARNING.
        result = docker("logs", proxy.name)
        log = result.stdout + result.stderr
        return log if "hot path: " in log or "runs uncompiled" in log else None

    log = wait_for(started, "the start-up log", timeout=30)
    assert "hot path: compiled hot path (mypyc," in log, log
    assert "uncompiled" not in log, log


def test_it_proxies(proxy: Proxy) -> None:
    status, _headers, body = http(f"http://127.0.0.1:{proxy.port}/stocklevel", timeout=10)
    assert status == 200, body
    assert json.loads(body)["name"] == "app"


def test_healthcheck_turns_healthy(proxy: Proxy) -> None:
    wait_for(lambda: inspect(proxy.name)["State"]["Health"]["Status"] == "healthy",
             "HEALTHCHECK healthy", timeout=40)


def test_docker_stop_drains_and_exits_0(proxy: Proxy) -> None:
    results: list[int] = []

    def in_flight() -> None:
        results.append(http(f"http://127.0.0.1:{proxy.port}/stocklevel", timeout=15)[0])

    requests = [threading.Thread(target=in_flight) for _ in range(3)]
    for thread in requests:
        thread.start()
    time.sleep(UPSTREAM_LATENCY / 4)  # the requests are waiting on the upstream now
    started = time.monotonic()
    docker("stop", "--time", "20", proxy.name, timeout=40)
    stopped_after = time.monotonic() - started
    for thread in requests:
        thread.join(timeout=15)
    assert results == [200, 200, 200], results
    state = inspect(proxy.name)["State"]
    assert (state["Status"], state["ExitCode"], state["OOMKilled"]) == ("exited", 0, False)
    assert stopped_after < 15, f"docker stop took {stopped_after:.1f} s: SIGKILLed?"
