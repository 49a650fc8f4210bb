"""Replay a tutorial: run every ``$ command`` of its console blocks, in order, in one bash.

    python -m tests.deploy.replay docs/tutorials/canary-rollback.md           # check it
    python -m tests.deploy.replay --write docs/tutorials/canary-rollback.md   # refresh outputs

The commands run the way a reader types them: from a scratch directory that looks like the
repository root (``config/``, ``docs/``, ``loadtests/`` are links to the real ones), with
this Python's ``pyproxy`` and ``locust`` first on PATH, a pause after each command (services
started with ``&`` get ready, a saved edit gets reloaded), and everything still running in
the background stopped at the end. With ``--write`` the lines under each command are
replaced with what it printed, so the outputs in the docs come from that run.

It needs the tutorials' fixed ports (127.0.0.1:8080, 9901, 8081, 8082, 9411) to be free.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PORTS = (8080, 9901, 8081, 8082, 9411)
PAUSE = 1.5  # seconds after each command
COMMAND_TIMEOUT = 120.0


@dataclass
class Step:
    command: str
    block: int  # index of the console block
    output: list[str] = field(default_factory=list)
    status: int | None = None


def steps(text: str) -> list[Step]:
    found = []
    for block, body in enumerate(re.findall(r"```console\n(.*?)```", text, re.S)):
        for line in body.splitlines():
            if line.startswith("$ "):
                found.append(Step(line[2:], block))
            elif found and found[-1].block == block:
                found[-1].output.append(line)
    return found


def expected_failure(step: Step) -> bool:
    """Locust exits 1 when any request failed: in the labs about a failing 0.0.2, some do."""
    return step.command.startswith("locust ") and step.status == 1


def wait_until_listening(command: str, timeout: float = 20.0) -> None:
    """After starting a service or the proxy in the background, wait until it answers, as a
    reader would before typing on: a fake service on its ``--port``, a proxy on its admin."""
    if not command.rstrip().endswith("&"):
        return
    if "pyproxy run" in command:
        port = 9901
    else:
        found = re.search(r"--port\s+(\d+)", command)
        if found is None:
            return
        port = int(found.group(1))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after: {command}")


def ports_in_use() -> list[int]:
    busy = []
    for port in PORTS:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


def replay(doc: Path) -> list[Step]:
    """Run the doc's commands; each step gets the output and exit status it had."""
    wanted = steps(doc.read_text())
    scratch = Path(tempfile.mkdtemp(prefix="pyproxy-tutorial-"))
    for name in ("config", "docs", "loadtests"):
        (scratch / name).symlink_to(REPO / name)
    outputs = scratch / ".replay"
    outputs.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYPROXY_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # Its own process group: everything the tutorial started is stopped with it.
    shell = subprocess.Popen(["bash"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=scratch, env=env, text=True,
                             start_new_session=True)
    assert shell.stdin is not None
    try:
        for index, step in enumerate(wanted):
            out, status = outputs / f"{index}.out", outputs / f"{index}.status"
            # The group's redirection reaches its background jobs too: what they print later
            # goes to this step's file, read only once the command itself is done.
            shell.stdin.write(f"{{ {step.command}\n}} >{out} 2>&1; echo $? >{status}.tmp; "
                              f"mv {status}.tmp {status}\n")
            shell.stdin.flush()
            deadline = time.monotonic() + COMMAND_TIMEOUT
            while not status.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{doc.name}: no end to: {step.command}")
                time.sleep(0.05)
            wait_until_listening(step.command)
            time.sleep(PAUSE)
            step.status = int(status.read_text())
            step.output = [line.rstrip() for line in
                           out.read_text(errors="replace").rstrip("\n").splitlines()]
        shell.stdin.write("kill $(jobs -p) 2>/dev/null; wait; exit\n")
        shell.stdin.flush()
        shell.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGINT)  # no drain delay for what is left
        shell.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    return wanted


def rewrite(text: str, ran: list[Step]) -> str:
    """``text`` with the output under each command replaced by what ``ran`` captured."""
    queue = iter(ran)

    def block(match: re.Match[str]) -> str:
        lines: list[str] = []
        for line in match.group(1).splitlines():
            if line.startswith("$ "):
                step = next(queue)
                assert step.command == line[2:], (step.command, line)
                lines += [line, *step.output]
        # Keep a blank line between a command's output and the next command, as written.
        spaced: list[str] = []
        for line in lines:
            if line.startswith("$ ") and spaced and not spaced[-1].startswith("$ ") \
                    and spaced[-1] != "":
                spaced.append("")
            spaced.append(line)
        return "```console\n" + "\n".join(spaced) + "\n```"

    return re.sub(r"```console\n(.*?)```", block, text, flags=re.S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("docs", nargs="+", type=Path)
    parser.add_argument("--write", action="store_true", help="put the new outputs in the docs")
    args = parser.parse_args(argv)
    failed = 0
    for doc in args.docs:
        for _ in range(100):  # an earlier proxy may still be draining
            if not ports_in_use():
                break
            time.sleep(0.1)
        else:
            print(f"{doc}: ports in use: {ports_in_use()}", file=sys.stderr)
            return 2
        ran = replay(doc)
        for step in ran:
            if step.status != 0 and not expected_failure(step):
                failed += 1
                print(f"{doc}: exit {step.status}: {step.command}\n  " +
                      "\n  ".join(step.output), file=sys.stderr)
        if args.write:
            doc.write_text(rewrite(doc.read_text(), ran))
        print(f"{doc}: {len(ran)} commands, "
              f"{sum(s.status != 0 and not expected_failure(s) for s in ran)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
