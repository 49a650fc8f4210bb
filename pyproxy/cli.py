"""The ``pyproxy`` command line (SPEC §1): parse arguments, then call into the edges.

Each command imports what it needs only when it runs, so ``pyproxy validate`` or
``pyproxy fake-service`` never pay for the data plane's imports.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = Path("config/pyproxy.yaml")


def _config_paths(given: list[str] | None) -> list[str]:
    """``-c`` paths, else $PYPROXY_CONFIG, else ./config/pyproxy.yaml, else a clear error."""
    if given:
        return given
    env = os.environ.get("PYPROXY_CONFIG")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    if DEFAULT_CONFIG.exists():
        return [str(DEFAULT_CONFIG)]
    raise SystemExit(
        "pyproxy: no configuration given.\n"
        "  pass one:          pyproxy run -c routes.yaml   (a file or a directory of *.yaml)\n"
        "  or set:            PYPROXY_CONFIG=/etc/pyproxy\n"
        "  or try the demo:   pyproxy demo"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyproxy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="serve traffic with a config")
    run.add_argument("-c", "--config", action="append", metavar="PATH",
                     help="YAML file or directory (repeatable)")
    run.add_argument("--listen", metavar="HOST:PORT", help="override the config's listen address")
    run.add_argument("--admin", metavar="HOST:PORT", help="override the admin listen address")
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="processes sharing the port (only 1 is supported so far)")

    validate = sub.add_parser("validate", help="check config files and print a summary")
    validate.add_argument("paths", nargs="+", metavar="PATH")
    validate.add_argument("--json", action="store_true", help="machine-readable output")

    fake = sub.add_parser("fake-service", help="a demo/test backend that answers JSON")
    fake.add_argument("--name", required=True)
    fake.add_argument("--port", type=int, required=True)
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--error-rate", type=float, default=0.0, metavar="R",
                      help="fraction of requests answered with --error-code (0..1)")
    fake.add_argument("--error-code", type=int, default=500, metavar="C")
    fake.add_argument("--latency", default="0s", metavar="DUR[:JITTER]")
    fake.add_argument("--upstream", action="append", default=[], metavar="URL",
                      help="call this URL on every request (repeatable)")
    fake.add_argument("--seed", type=int, default=None, help="seed the error draw (tests)")

    demo = sub.add_parser("demo", help="run the storefront → stockmanager → zipkin lab locally")
    demo.add_argument("--scenario", default="canary",
                      choices=["canary", "chaos", "dark-launch", "blue-green", "circuit-breaker"])
    demo.add_argument("--load", type=float, default=5.0, metavar="RPS",
                      help="built-in gentle load so the dashboard moves (0 = off)")
    demo.add_argument("--port", type=int, default=8080, help="the storefront proxy's port")
    demo.add_argument("--admin-port", type=int, default=9901)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "run":
        if args.workers != 1:
            print("pyproxy: --workers > 1 is not available yet; run one process per core "
                  "behind a Service instead", file=sys.stderr)
            return 2
        from pyproxy.server import run_server

        return run_server(_config_paths(args.config), listen=args.listen, admin=args.admin)
    if args.command == "validate":
        from pyproxy.config.summary import validate_command

        return validate_command(args.paths, as_json=args.json)
    if args.command == "fake-service":
        from pyproxy.demo.fake_service import run_fake_service

        return run_fake_service(args)
    if args.command == "demo":
        from pyproxy.demo.runner import run_demo

        return run_demo(args)
    raise AssertionError(args.command)  # argparse guarantees one of the above
