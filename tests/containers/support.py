"""Driving a real Docker engine from the container suite: the CLI, the images under test,
published ports on 127.0.0.1, and a time bound on every call.

The images are built by deploy/docker/build-images.sh, the same script CI and the READMEs
use. The suite runs it once per session, so that it tests this tree's image and not one an
older checkout left in the engine (the build cache makes an unchanged tree's build quick);
an image named by $PYPROXY_IMAGE is tested as it is. Where no engine answers, the suite
fails with the reason when ``CI`` is set and skips with it on a developer machine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_IMAGES = REPO / "deploy" / "docker" / "build-images.sh"
IMAGE = os.environ.get("PYPROXY_IMAGE", "pyproxy:local")
PROMETHEUS_IMAGE = os.environ.get("PROMETHEUS_IMAGE", "pyproxy-prometheus:bookworm")


def docker_cli() -> str:
    """$DOCKER, else ``docker`` on PATH. CI points $DOCKER at Debian's CLI (the engine's own
    version) because another, newer CLI may come first on PATH."""
    found = os.environ.get("DOCKER") or shutil.which("docker")
    return found or "docker"


def docker(*args: str, timeout: float = 60, check: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([docker_cli(), *args], capture_output=True, text=True,
                            timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def engine_or_reason() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        result = subprocess.run([docker_cli(), "version", "--format", "{{.Server.Version}}"],
                                capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return "no docker CLI (apt-get install docker.io; CI: .ci/run installs it)"
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer `docker version` within 20 s"
    if result.returncode != 0:
        return f"no Docker engine: {result.stderr.strip() or result.stdout.strip()}"
    return None


def require_engine() -> None:
    reason = engine_or_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"container suite cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def ensure_images() -> None:
    """Build pyproxy:local from this tree, and the Prometheus image if missing, with the
    repo's script; an image named by $PYPROXY_IMAGE and present is left as it is."""
    missing = [image for image in (IMAGE, PROMETHEUS_IMAGE)
               if docker("image", "inspect", image, check=False).returncode != 0]
    if not missing and "PYPROXY_IMAGE" in os.environ:
        return
    # $DOCKER, when set, reaches the script through the environment; otherwise the script
    # picks a CLI that can build with BuildKit.
    # Cold, the script debootstraps up to three bases and compiles the hot path: minutes.
    result = subprocess.run([str(BUILD_IMAGES)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"{BUILD_IMAGES.name} failed:\n{result.stdout}\n{result.stderr}"


def image_size(image: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout)


def inspect(container: str) -> dict:
    return json.loads(docker("inspect", container).stdout)[0]


def published_port(container: str, port: int) -> int:
    """The 127.0.0.1 host port a container port is published on."""
    text = docker("port", container, f"{port}/tcp").stdout.split()[0]
    host, _, published = text.rpartition(":")
    assert host == "127.0.0.1", f"{container}:{port} is published on {host}, not loopback"
    return int(published)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(check, what: str, timeout: float = 60, interval: float = 0.5):
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")
