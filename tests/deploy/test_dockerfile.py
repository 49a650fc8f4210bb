"""The Dockerfile: hadolint-clean, and its build, install, CMD and HEALTHCHECK replayed.

There is no Docker engine here, so ``test_the_image_steps_work_in_a_fresh_venv`` interprets
the Dockerfile itself: every stage gets a scratch root directory, COPY copies from the build
context (filtered by .dockerignore, as the Docker client does) or from an earlier stage,
RUN runs in a shell whose ``pip`` is a fresh venv's, with every absolute path in it moved
under the stage's root, ENV sets the environment, USER the uid the server runs as (when the
test runs as root). Then CMD starts the server as the container would, the HEALTHCHECK
command must pass once it is ready, and STOPSIGNAL must make it drain and exit 0.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.support import REPO, tool
from tests.support.backends import free_port
from tests.support.processes import http, wait_status

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


# --------------------------------------------------------------------------- parsing


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continuation line"
    return result


def exec_form(arguments: str) -> list[str]:
    form = json.loads(arguments)
    assert isinstance(form, list) and all(isinstance(a, str) for a in form), arguments
    return form


def healthcheck(arguments: str) -> tuple[dict[str, str], list[str]]:
    options, _, command = arguments.partition("CMD ")
    flags = dict(re.findall(r"--([\w-]+)=(\S+)", options))
    return flags, exec_form(command.strip())


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(exclude?, regex) per .dockerignore line, with Docker's ``*``/``**``/``!`` rules."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        line = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex += line[i:end + 1]
                i = end + 1
            else:
                regex += re.escape(line[i])
                i += 1
        patterns.append((exclude, re.compile(regex + r"\Z")))
    return patterns


def ignored(relative: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for exclude, regex in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            verdict = exclude
    return verdict


def context_files() -> list[str]:
    """Every file of the repository the Docker client would send as the build context."""
    patterns = dockerignore_patterns()
    files = []
    for path in REPO.rglob("*"):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith((".git/", ".venv/")):
            continue
        if path.is_file() and not ignored(relative, patterns):
            files.append(relative)
    return sorted(files)


# --------------------------------------------------------------------------- replay


@dataclass
class Stage:
    name: str
    base: str
    root: Path
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    expose: list[str] = field(default_factory=list)
    stopsignal: str = "SIGTERM"
    healthcheck: str = ""
    cmd: list[str] = field(default_factory=list)
    created_uids: set[str] = field(default_factory=set)

    def path(self, container_path: str) -> Path:
        absolute = container_path if container_path.startswith("/") else \
            f"{self.workdir.rstrip('/')}/{container_path}"
        return self.root / absolute.lstrip("/")

    def rewrite(self, command: str) -> str:
        """Move every absolute path of a shell command under this stage's root."""
        rewritten = re.sub(r"(?<![\w.:/-])(/[\w.*/-]+)",
                           lambda m: str(self.root) + m.group(1), command)
        for token in shlex.split(rewritten.replace("&&", " ")):
            assert not token.startswith("/") or token.startswith(str(self.root)), \
                f"a RUN step would touch {token} outside the image: {command}"
        return rewritten


class Replay:
    """Interprets the Dockerfile's instructions against scratch roots and one fresh venv."""

    def __init__(self, scratch: Path, venv: Path):
        self.scratch = scratch
        self.venv = venv
        self.stages: list[Stage] = []
        self.ignore = dockerignore_patterns()

    @property
    def stage(self) -> Stage:
        return self.stages[-1]

    def shell_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
        env.update(self.stage.env)
        env["PATH"] = f"{self.scratch / 'tools'}:{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
        return env

    def install_pip_shim(self) -> None:
        """``pip`` in RUN steps: this test's pip, installing into the image's fresh venv
        (``pip --python``), which saves seeding the venv with a pip of its own."""
        tools = self.scratch / "tools"
        tools.mkdir()
        shim = tools / "pip"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pip '
                        f'--python "{self.venv / "bin" / "python"}" "$@"\n')
        shim.chmod(0o755)

    def run(self, text: str) -> None:
        for keyword, arguments in instructions(text):
            getattr(self, f"do_{keyword.lower()}")(arguments)

    def do_from(self, arguments: str) -> None:
        words = arguments.split()
        name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(self.stages))
        root = self.scratch / f"stage-{len(self.stages)}-{name}"
        root.mkdir()
        self.stages.append(Stage(name, words[0], root))

    def do_workdir(self, arguments: str) -> None:
        self.stage.workdir = arguments if arguments.startswith("/") else \
            f"{self.stage.workdir.rstrip('/')}/{arguments}"
        self.stage.path(self.stage.workdir).mkdir(parents=True, exist_ok=True)

    def do_env(self, arguments: str) -> None:
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            self.stage.env[key] = value

    def do_copy(self, arguments: str) -> None:
        words = shlex.split(arguments)
        source_stage = None
        while words[0].startswith("--"):
            flag = words.pop(0)
            if flag.startswith("--from="):
                source_stage = next(s for s in self.stages if s.name == flag[len("--from="):])
        *sources, destination = words
        found: list[tuple[Path, str]] = []  # (source path, its name) for each match
        for source in sources:
            if source_stage is not None:
                path = source_stage.path(source)
                assert path.exists(), f"COPY --from: {source} is not in stage {source_stage.name}"
                found.append((path, path.name))
                continue
            matches = [p for p in sorted(REPO.glob(source))
                       if not ignored(p.relative_to(REPO).as_posix(), self.ignore)]
            if not matches and not any(ch in source for ch in "*?["):
                raise AssertionError(f"COPY {source}: not in the build context")
            found += [(p, p.name) for p in matches]
        into_dir = destination.endswith("/") or len(found) > 1
        target = self.stage.path(destination)
        for path, name in found:
            if path.is_dir():
                self._copy_tree(path, target, source_stage is None)
            else:
                dest = target / name if into_dir else target
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)

    def _copy_tree(self, source: Path, target: Path, filtered: bool) -> None:
        for path in sorted(source.rglob("*")):
            if filtered and ignored(path.relative_to(REPO).as_posix(), self.ignore):
                continue
            dest = target / path.relative_to(source)
            if path.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)

    def do_run(self, arguments: str) -> None:
        if arguments.startswith(("groupadd", "useradd", "adduser")):
            # Creating a system user needs a container; the replay runs the server under the
            # same numeric uid instead (see start()).
            uid = re.search(r"(?:--uid|-u)[= ](\d+)", arguments)
            assert uid, "create the user with a fixed --uid so USER can name it numerically"
            self.stage.created_uids.add(uid.group(1))
            return
        command = self.stage.rewrite(arguments)
        result = subprocess.run(["sh", "-ec", command], cwd=self.stage.path(self.stage.workdir),
                                env=self.shell_env(), capture_output=True, text=True)
        assert result.returncode == 0, f"RUN {arguments}\n{result.stdout}\n{result.stderr}"

    def do_user(self, arguments: str) -> None:
        self.stage.user = arguments

    def do_expose(self, arguments: str) -> None:
        self.stage.expose += arguments.split()

    def do_stopsignal(self, arguments: str) -> None:
        self.stage.stopsignal = arguments

    def do_healthcheck(self, arguments: str) -> None:
        self.stage.healthcheck = arguments

    def do_cmd(self, arguments: str) -> None:
        self.stage.cmd = exec_form(arguments)

    def do_label(self, arguments: str) -> None:
        pass

    def do_arg(self, arguments: str) -> None:
        pass


def _world_reachable(path: Path) -> bool:
    """Whether any user may reach ``path`` (search permission on every parent directory)."""
    return all(parent.stat().st_mode & 0o001 for parent in path.resolve().parents)


def _as_image_user(stage: Stage) -> dict:
    """Popen arguments that run as the image's USER -- when the test runs as root and that
    user could run this interpreter at all (a pyenv Python under /root cannot be)."""
    if os.geteuid() != 0 or not stage.user or not _world_reachable(Path(sys.base_prefix) / "lib"):
        return {}
    uid, _, gid = stage.user.partition(":")
    return {"user": int(uid), "group": int(gid or uid), "extra_groups": []}


# --------------------------------------------------------------------------- tests


def test_hadolint_reports_nothing():
    hadolint = tool("hadolint")
    result = subprocess.run([hadolint, "--no-color", "--format", "json", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert findings == [], json.dumps(findings, indent=2)
    assert result.returncode == 0, result.stderr


def test_dockerfile_follows_the_image_conventions():
    steps = instructions(DOCKERFILE.read_text())
    froms = [args for keyword, args in steps if keyword == "FROM"]
    assert froms and all(args.split()[0] == "python:3.11-slim" for args in froms), froms
    final = steps[max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM"):]
    by_keyword: dict[str, list[str]] = {}
    for keyword, args in final:
        by_keyword.setdefault(keyword, []).append(args)

    user = by_keyword["USER"][-1]
    assert user.split(":")[0] not in ("0", "root"), "the server must not run as root"
    assert by_keyword["STOPSIGNAL"] == ["SIGTERM"]
    assert set(" ".join(by_keyword["EXPOSE"]).split()) == {"8080", "9901"}
    assert exec_form(by_keyword["CMD"][-1]) == ["pyproxy", "run", "-c", "/etc/pyproxy"]
    flags, probe = healthcheck(by_keyword["HEALTHCHECK"][-1])
    assert probe[0] == "python" and "urllib" in " ".join(probe)  # slim has no curl
    assert {"interval", "timeout", "retries"} <= set(flags)
    env = dict(pair.partition("=")[::2] for args in by_keyword["ENV"]
               for pair in shlex.split(args))
    assert env["PYPROXY_HEALTH_URL"].endswith("/readyz")
    installs = [args for args in by_keyword["RUN"] if "pip install" in args]
    assert installs and all("--no-cache-dir" in args for args in installs)


def test_build_context_holds_only_what_the_image_needs():
    files = context_files()
    assert "pyproject.toml" in files and "pyproxy/cli.py" in files
    assert "deploy/docker/pyproxy.yaml" in files
    strays = [f for f in files if not (f == "pyproject.toml" or f.startswith("README")
                                       or f.startswith(("pyproxy/", "deploy/docker/")))]
    assert strays == [], strays
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]


def test_the_image_steps_work_in_a_fresh_venv(processes):
    """Build the wheel and install it as the Dockerfile does, then run CMD and HEALTHCHECK."""
    scratch = Path(tempfile.mkdtemp(prefix="pyproxy-image-"))
    try:
        scratch.chmod(0o755)  # the image's unprivileged user must reach the venv and config
        venv = scratch / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        replay = Replay(scratch, venv)
        replay.install_pip_shim()
        replay.run(DOCKERFILE.read_text())
        image = replay.stage
        assert image.user.split(":")[0] in image.created_uids, \
            "USER must be the uid the Dockerfile creates"
        installed = subprocess.run(["pip", "list", "--format", "json"], env=replay.shell_env(),
                                   capture_output=True, text=True, check=True)
        assert "pyproxy" in {p["name"] for p in json.loads(installed.stdout)}
        assert not image.path("/tmp/wheels").exists(), "the wheel is left in the image"
        config_dir = image.path("/etc/pyproxy")
        assert (config_dir / "pyproxy.yaml").is_file()

        upstream_port, port, admin_port = free_port(), free_port(), free_port()
        processes.fake_service("app", upstream_port)
        # What `docker run -e ...` would pass; the ports are remapped to free loopback ones.
        env = {**replay.shell_env(), "HOME": "/nonexistent",
               "PYPROXY_UPSTREAM": f"127.0.0.1:{upstream_port}",
               "PYPROXY_LISTEN": f"127.0.0.1:{port}",
               "PYPROXY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
               "PYPROXY_HEALTH_URL": f"http://127.0.0.1:{admin_port}/readyz",
               "PYPROXY_DRAIN_DELAY": "1s"}
        cmd = [image.rewrite(arg) if arg.startswith("/") else arg for arg in image.cmd]
        server = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  cwd=image.path("/"), **_as_image_user(image))
        try:
            _, probe = healthcheck(image.healthcheck)

            def probe_exit() -> int:
                return subprocess.run(probe, env=env, capture_output=True, timeout=10,
                                      **_as_image_user(image)).returncode

            wait_status(f"http://127.0.0.1:{admin_port}/readyz", 200, process=server)
            assert probe_exit() == 0
            wait_status(f"http://127.0.0.1:{upstream_port}/health", 200)
            status, _headers, body = http(f"http://127.0.0.1:{port}/stocklevel")
            assert status == 200 and json.loads(body)["name"] == "app", body

            server.send_signal(getattr(signal, image.stopsignal))
            wait_status(f"http://127.0.0.1:{admin_port}/readyz", 503, timeout=5)
            assert probe_exit() != 0  # draining: the container reports unhealthy
            started = time.monotonic()
            assert server.wait(timeout=15) == 0, server.stderr.read().decode()
            assert time.monotonic() - started < 10
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            server.stderr.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
