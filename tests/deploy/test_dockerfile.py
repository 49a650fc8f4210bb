"""The Dockerfile without an engine: hadolint-clean, the image conventions, the build context.

The built image itself -- its user, read-only root, /readyz, proxying, HEALTHCHECK and
drain on ``docker stop`` -- is tested by the container suite (tests/containers/test_image.py).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess

from tests.deploy.support import REPO, tool

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
    # The runtime base is a build argument whose default is python:3.11-slim; the build
    # stage's, with the compiler, another whose default is python:3.11. ARG before FROM.
    args = dict(a.partition("=")[::2] for keyword, a in steps if keyword == "ARG")
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert args["BUILD_IMAGE"] == "python:3.11"
    first_from = next(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    assert {step[1].partition("=")[0] for step in steps[:first_from]} >= {"BASE_IMAGE",
                                                                         "BUILD_IMAGE"}
    froms = [args.split() for keyword, args in steps if keyword == "FROM"]
    assert froms == [["${BUILD_IMAGE}", "AS", "build"], ["${BASE_IMAGE}"]], froms
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
    assert probe[0] == "python" and "urllib" in " ".join(probe)  # no curl in either base
    assert {"interval", "timeout", "retries"} <= set(flags)
    env = dict(pair.partition("=")[::2] for args in by_keyword["ENV"]
               for pair in shlex.split(args))
    assert env["PYPROXY_HEALTH_URL"].endswith("/readyz")
    # pip runs in the build stage only; the final stage copies the venv it filled.
    assert not [args for args in by_keyword["RUN"] if "pip " in args]
    build = [args for keyword, args in steps[:len(steps) - len(final)] if keyword == "RUN"]
    installs = [args for args in build if "pip install" in args]
    assert installs and all("--no-cache-dir" in args for args in installs)
    # The build compiles the hot path (setup.py) and fails unless it did.
    assert any("setup.py" in args.split()
               for keyword, args in steps[:len(steps) - len(final)] if keyword == "COPY")
    assert any('"compiled hot path"' in args and "exit 1" in args for args in installs)
    # This machine's CA bundle reaches pip as a BuildKit secret, never as a COPY or ENV.
    assert all("--mount=type=secret,id=pip_cert" in args for args in installs)
    assert not [args for keyword, args in steps if keyword in ("COPY", "ADD", "ENV")
                and ("cert" in args.lower() or "pip.conf" in args)]


def test_build_context_holds_only_what_the_image_needs():
    files = context_files()
    assert {"pyproject.toml", "setup.py", "pyproxy/cli.py", "pyproxy/compiled.py"} <= set(files)
    assert "deploy/docker/pyproxy.yaml" in files
    strays = [f for f in files if not (f in ("pyproject.toml", "setup.py")
                                       or f.startswith("README")
                                       or f.startswith(("pyproxy/", "deploy/docker/")))]
    assert strays == [], strays
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    # An editable install's extensions, built for this machine: the build stage compiles its own.
    assert not [f for f in files if f.endswith(".so")]
