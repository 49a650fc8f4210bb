"""What a newcomer meets in the first hour, with real processes and sockets on 127.0.0.1:

- ``pyproxy run`` on a port that is taken says so, and says when it is another pyproxy,
  running or draining there (exit 2);
- ``pyproxy run --access-log PATH|off`` keeps the access log off the terminal;
- ``pyproxy explain`` says where its answer comes from and prefers a running proxy.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.backends import free_port
from tests.support.harness import ProxyProcess


def _config(path: Path, backend_port: int, drain_delay: str = "0s") -> Path:
    path.write_text(yaml.safe_dump({
        "timeouts": {"drain_delay": drain_delay},
        "services": {"svc": {"endpoints": [{"address": f"127.0.0.1:{backend_port}"}]}},
        "routes": [{"name": "main", "hosts": ["svc"], "backends": [{"service": "svc"}]}],
    }))
    return path


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 30,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyproxy", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


# ------------------------------------------------------------------------------ port in use


def test_a_port_held_by_something_else_is_named_as_in_use(tmp_path):
    config = _config(tmp_path / "p.yaml", free_port())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run("run", "-c", str(config), "--listen", f"127.0.0.1:{port}",
                      "--admin", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use." in result.stderr
    assert "Stop whatever listens there, or choose another address (--listen HOST:PORT)" \
        in result.stderr
    assert "Another pyproxy" not in result.stderr


def test_a_second_pyproxy_on_the_same_ports_is_told_the_first_is_running(tmp_path):
    config = _config(tmp_path / "p.yaml", free_port())
    first = ProxyProcess(config).start()
    try:
        result = _run("run", "-c", str(config), "--listen", f"127.0.0.1:{first.port}",
                      "--admin", f"127.0.0.1:{first.admin_port}")
    finally:
        first.stop()
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{first.port}: the port is already in use." \
        in result.stderr
    assert f"Another pyproxy is running there (its admin answers at {first.admin_url})" \
        in result.stderr
    assert "edit its config files: it reloads them" in result.stderr


def test_a_second_pyproxy_is_told_the_first_is_still_draining(tmp_path):
    config = _config(tmp_path / "p.yaml", free_port(), drain_delay="5s")
    first = ProxyProcess(config).start()
    try:
        first.proc.send_signal(signal.SIGTERM)  # `kill %1`: drains for drain_delay
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # /readyz turns 503 at once
            try:
                urllib.request.urlopen(f"{first.admin_url}/readyz", timeout=1)
            except urllib.error.HTTPError:
                break
            time.sleep(0.05)
        result = _run("run", "-c", str(config), "--listen", f"127.0.0.1:{first.port}",
                      "--admin", f"127.0.0.1:{first.admin_port}")
    finally:
        first.stop()
    assert result.returncode == 2, result.stderr
    assert "the port is already in use." in result.stderr
    assert f"Another pyproxy is draining there (its admin at {first.admin_url} says " \
           "/readyz: not ready)" in result.stderr
    assert "Wait a few seconds and start again" in result.stderr


def test_a_taken_admin_port_is_named_too(tmp_path):
    config = _config(tmp_path / "p.yaml", free_port())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin_port = taken.getsockname()[1]
        result = _run("run", "-c", str(config), "--listen", f"127.0.0.1:{free_port()}",
                      "--admin", f"127.0.0.1:{admin_port}")
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on admin 127.0.0.1:{admin_port}: the port is already in use." \
        in result.stderr
    assert "(--admin HOST:PORT)" in result.stderr


# ------------------------------------------------------------------------------ access log


def _one_request(proxy: ProxyProcess) -> None:
    request = urllib.request.Request(f"{proxy.url}/", headers={"Host": "svc"})
    try:
        urllib.request.urlopen(request, timeout=5).read()
    except urllib.error.HTTPError:
        pass  # no backend listens: 503 is fine, it is still logged


@pytest.mark.parametrize("target", ["file", "off"])
def test_access_log_goes_to_a_file_or_nowhere(tmp_path, target):
    config = _config(tmp_path / "p.yaml", free_port())
    log = tmp_path / "access.log"
    stdout = tmp_path / "stdout"
    proxy = ProxyProcess(config, stdout=stdout,
                         extra_args=("--access-log", str(log) if target == "file" else "off"))
    proxy.start()
    try:
        for _ in range(3):
            _one_request(proxy)
        time.sleep(0.5)  # the access log is written by a background thread
    finally:
        assert proxy.stop() == 0
    assert stdout.read_text() == ""  # nothing on the terminal
    if target == "file":
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(lines) == 3 and {line["route"] for line in lines} == {"main"}, lines
    else:
        assert not log.exists()


def test_access_log_to_a_path_that_cannot_be_written_is_refused(tmp_path):
    config = _config(tmp_path / "p.yaml", free_port())
    result = _run("run", "-c", str(config), "--access-log", str(tmp_path / "no" / "such.log"))
    assert result.returncode == 2
    assert f"cannot write the access log to {tmp_path / 'no' / 'such.log'}" in result.stderr


# ------------------------------------------------------------------------------ explain


def test_explain_prefers_the_running_proxy_and_says_so(tmp_path):
    config = _config(tmp_path / "p.yaml", free_port())
    proxy = ProxyProcess(config).start()
    try:
        # Inside a checkout, config/pyproxy.yaml is there too: the running proxy still wins.
        (tmp_path / "config").mkdir()
        (tmp_path / "config" / "pyproxy.yaml").write_text(config.read_text())
        result = _run("explain", "--host", "svc", "--path", "/x",
                      env={"PYPROXY_ADMIN": proxy.admin_url}, cwd=tmp_path)
        as_json = _run("explain", "--host", "svc", "--json",
                       env={"PYPROXY_ADMIN": proxy.admin_url}, cwd=tmp_path)
    finally:
        proxy.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"using the running proxy at {proxy.admin_url}"
    assert "→ route main" in result.stdout
    assert json.loads(as_json.stdout)["source"] == f"the running proxy at {proxy.admin_url}"


def test_explain_falls_back_to_the_config_file_and_says_so(tmp_path):
    (tmp_path / "config").mkdir()
    _config(tmp_path / "config" / "pyproxy.yaml", free_port())
    nobody = f"http://127.0.0.1:{free_port()}"
    result = _run("explain", "--host", "svc", env={"PYPROXY_ADMIN": nobody}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == \
        "using config file config/pyproxy.yaml (no proxy asked)"
    given = _run("explain", "--host", "svc", "-c", "config/pyproxy.yaml", cwd=tmp_path)
    assert given.stdout.splitlines()[0] == "using config file config/pyproxy.yaml (no proxy asked)"


def test_explain_with_no_proxy_and_no_config_says_how_to_give_either(tmp_path):
    nobody = f"http://127.0.0.1:{free_port()}"
    result = _run("explain", "--host", "svc", env={"PYPROXY_ADMIN": nobody,
                                                    "PYPROXY_CONFIG": ""}, cwd=tmp_path)
    assert result.returncode == 1
    assert f"pyproxy explain: no proxy answers at {nobody} and no config given." in result.stderr
    assert "--admin http://HOST:PORT" in result.stderr and "-c routes.yaml" in result.stderr
    assert "pyproxy run" not in result.stderr
