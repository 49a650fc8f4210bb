"""The ``pyproxy`` command line (docs/cli.md): parse arguments, then call into the edges.

Each command imports what it needs only when it runs, so ``pyproxy validate`` or
``pyproxy fake-service`` never pay for the data plane's imports.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyproxy.admin.client import AdminClient
    from pyproxy.admin.views import Json

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


def _worker_count(text: str) -> int:
    """``--workers``: a count, or ``0``/``auto`` for one per CPU this process may run on."""
    if text in ("0", "auto"):
        return len(os.sched_getaffinity(0))
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError("expected a number of processes, or 0 / auto")
    return count


class _PrintVersion(argparse.Action):
    """``--version`` on one line, unwrapped (argparse's own action wraps it to the terminal)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from pyproxy import __version__, compiled

        print(f"pyproxy {__version__}: {compiled.describe()}")
        parser.exit()


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyproxy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_PrintVersion, nargs=0,
                        help="print the version and whether the hot path is compiled, and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="serve traffic with a config")
    run.add_argument("-c", "--config", action="append", metavar="PATH",
                     help="YAML file or directory (repeatable)")
    run.add_argument("--listen", metavar="HOST:PORT", help="override the config's listen address")
    run.add_argument("--admin", metavar="HOST:PORT", help="override the admin listen address")
    run.add_argument("--workers", type=_worker_count, default=1, metavar="N",
                     help="processes sharing the listen port (SO_REUSEPORT) under a supervisor "
                          "that restarts them; 0 or 'auto': one per CPU (default 1)")
    run.add_argument("--access-log", metavar="PATH|off",
                     help="where the access log (one line per request) goes: a file, appended "
                          "to, or 'off' (default: stdout; the proxy's own messages go to "
                          "stderr either way)")
    run.add_argument("--kubernetes", action="store_true",
                     help="in-cluster mode: routes and endpoints also from the Kubernetes API "
                          "(the config's kubernetes: block, else every default; "
                          "docs/kubernetes.md)")
    run.add_argument("--state-dir", metavar="DIR",
                     help="keep run-time state (weight overrides, faults, canary progress) in "
                          "DIR: shared by the workers and kept across restarts (default: none; "
                          "with --workers, a temporary directory)")

    validate = sub.add_parser("validate", help="check config files and print a summary")
    validate.add_argument("paths", nargs="+", metavar="PATH",
                          help="files or directories, merged into ONE config as `run -c` "
                               "merges them (see --each)")
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.add_argument("--each", action="store_true",
                          help="check every file on its own (directories expanded) instead "
                               "of all of them merged as one config, as `run -c` reads them")

    convert = sub.add_parser("convert", help="Istio / SMI / Gateway API manifests → native YAML")
    convert.add_argument("paths", nargs="+", metavar="PATH",
                         help="manifests, with the native services: block giving endpoints")
    convert.add_argument("-o", "--output", metavar="FILE", help="write here (default stdout)")

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

    admin_help = "admin URL (default $PYPROXY_ADMIN or http://127.0.0.1:9901)"
    status = sub.add_parser("status", help="live per-route, per-backend stats")
    status.add_argument("--admin", metavar="URL", help=admin_help)
    status.add_argument("--watch", action="store_true", help="refresh every 2 s until Ctrl-C")
    status.add_argument("--json", action="store_true")

    weight = sub.add_parser("set-weight", help="change a split at run time")
    weight.add_argument("route")
    weight.add_argument("weights", nargs="*", metavar="BACKEND=W",
                        help="backends not named get 0")
    weight.add_argument("--clear", action="store_true", help="back to the configured weights")
    weight.add_argument("--admin", metavar="URL", help=admin_help)

    fault = sub.add_parser("fault", help="time-boxed fault on a route (or: fault clear [ROUTE])")
    fault.add_argument("route", help="route name, or 'clear' / 'list'")
    fault.add_argument("clear_route", nargs="?", metavar="ROUTE", help="with 'clear': one route")
    kind = fault.add_mutually_exclusive_group()
    kind.add_argument("--abort", type=int, metavar="STATUS")
    kind.add_argument("--delay", metavar="DUR")
    fault.add_argument("--percent", type=float, default=100.0)
    fault.add_argument("--for", dest="duration", metavar="DUR", default="60s",
                       help="how long before the fault removes itself (default 60s)")
    fault.add_argument("--admin", metavar="URL", help=admin_help)

    explain = sub.add_parser("explain", help="which route takes a request, and why")
    explain.add_argument("--host", required=True)
    explain.add_argument("--path", default="/")
    explain.add_argument("--method", default="GET")
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'K: V'")
    source = explain.add_mutually_exclusive_group()
    source.add_argument("-c", "--config", action="append", metavar="PATH")
    source.add_argument("--admin", metavar="URL",
                        help="ask a running proxy (live weights); without -c or --admin, the "
                             "proxy at $PYPROXY_ADMIN (default http://127.0.0.1:9901) if one "
                             "answers, else ./config/pyproxy.yaml")
    explain.add_argument("--json", action="store_true")

    canary = sub.add_parser("canary", help="drive the automated canary (status, promote, abort, "
                                           "pause, resume)")
    canary.add_argument("action", choices=["status", "promote", "abort", "pause", "resume"])
    canary.add_argument("name", nargs="?", metavar="NAME",
                        help="the canary; may be left out when only one is configured")
    canary.add_argument("--admin", metavar="URL", help=admin_help)
    canary.add_argument("--watch", action="store_true", help="status: refresh every 2 s")
    canary.add_argument("--json", action="store_true")

    demo = sub.add_parser("demo", help="run the storefront → stockmanager → zipkin lab locally")
    from pyproxy.demo.scenarios import SCENARIOS  # plain data, cheap to import

    demo.add_argument("--scenario", default="canary", choices=list(SCENARIOS))
    demo.add_argument("--load", type=float, default=5.0, metavar="RPS",
                      help="built-in gentle load so the dashboard moves (0 = off)")
    demo.add_argument("--port", type=int, default=8080, help="the storefront proxy's port")
    demo.add_argument("--admin-port", type=int, default=9901, metavar="N",
                      help="the proxies' dashboards (admin API) on N, N+1 and N+2: the "
                           "proxy the scenario is about on N (default 9901, where the CLI "
                           "looks), the storefront's on N+1")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command not in ("run", "demo", "fake-service"):
        # `pyproxy validate ... | head` should end quietly, like any Unix tool.
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.command == "run":
        # In-cluster mode needs no file: the API has the routes (its defaults do the rest).
        paths = _config_paths(args.config) if not args.kubernetes or args.config or \
            os.environ.get("PYPROXY_CONFIG") or DEFAULT_CONFIG.exists() else []
        if args.access_log and not _redirect_access_log(args.access_log):
            return 2
        if args.state_dir:
            try:
                os.makedirs(args.state_dir, exist_ok=True)
                if not os.access(args.state_dir, os.W_OK | os.X_OK):
                    raise PermissionError("not writable")
            except OSError as exc:
                print(f"pyproxy: cannot keep state in {args.state_dir}: {exc}", file=sys.stderr)
                return 2
        if args.workers > 1:
            from pyproxy.workers.supervisor import run_workers

            return run_workers(paths, args.workers, listen=args.listen, admin=args.admin,
                               state_dir=args.state_dir, kubernetes=args.kubernetes)
        from pyproxy.server import run_server

        return run_server(paths, listen=args.listen, admin=args.admin,
                          state_dir=args.state_dir, kubernetes=args.kubernetes)
    if args.command == "validate":
        from pyproxy.cli_text.validate import validate_command

        return validate_command(args.paths, as_json=args.json, each=args.each)
    if args.command == "convert":
        from pyproxy.cli_text.convert import convert_command

        return convert_command(args.paths, args.output)
    if args.command == "fake-service":
        from pyproxy.demo.fake_service import run_fake_service

        return run_fake_service(args)
    if args.command == "demo":
        from pyproxy.demo.runner import run_demo

        return run_demo(args)
    from pyproxy.admin.client import AdminClient, AdminError

    client = AdminClient(args.admin)
    if args.command == "explain" and not _explain_asks_the_proxy(client, args):
        return _explain_offline(args)
    try:
        return _ADMIN_COMMANDS[args.command](client, args)
    except AdminError as exc:
        print(f"pyproxy: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _status(client: AdminClient, args: argparse.Namespace) -> int:
    import json
    import time

    from pyproxy.admin.views import status_table

    while True:
        routes = client.get("/api/v1/routes")
        services = client.get("/api/v1/services")
        if args.json:
            print(json.dumps({"routes": routes, "services": services}, indent=2))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")  # clear the screen between refreshes
            print(status_table(routes, services))
        if not args.watch:
            return 0
        time.sleep(2)


def _set_weight(client: AdminClient, args: argparse.Namespace) -> int:
    from urllib.parse import quote

    path = f"/api/v1/routes/{quote(args.route, safe='')}/weights"
    if args.clear:
        cleared = client.request("DELETE", path)["cleared"]
        print(f"{args.route}: back to configured weights" if cleared
              else f"{args.route}: had no override")
        return 0
    weights = {}
    for item in args.weights:
        name, sep, value = item.rpartition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            name = ""
        if not sep or not name:
            print("pyproxy: expected BACKEND=WEIGHT, e.g. stockmanager/v2=10", file=sys.stderr)
            return 2
    if not weights:
        print("pyproxy: give BACKEND=WEIGHT pairs, or --clear", file=sys.stderr)
        return 2
    view = client.request("PUT", path, {"weights": weights, "source": "cli"})
    route = next(r for r in view["routes"] if r["name"] == args.route)
    shares = ", ".join(f"{b['backend']} {b['share'] * 100:.0f}%" for b in route["backends"])
    print(f"{args.route}: {shares}")
    return 0


def _fault(client: AdminClient, args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from pyproxy.admin.views import faults_text

    if args.route == "list":
        print(faults_text(client.get("/api/v1/faults")))
        return 0
    if args.route == "clear":
        path = "/api/v1/faults" + (f"/{quote(args.clear_route, safe='')}"
                                   if args.clear_route else "")
        cleared = client.request("DELETE", path)["cleared"]
        print("cleared: " + (", ".join(cleared) if cleared else "nothing"))
        return 0
    if args.abort is None and args.delay is None:
        print("pyproxy: give --abort STATUS or --delay DUR", file=sys.stderr)
        return 2
    body = {"route": args.route, "percent": args.percent, "duration": args.duration}
    if args.abort is not None:
        body["abort"] = {"status": args.abort}
    else:
        body["delay"] = {"fixed": args.delay}
    fault = client.request("POST", "/api/v1/faults", body)
    what = f"abort {args.abort}" if args.abort is not None else f"delay {args.delay}"
    print(f"{args.route}: {what} on {args.percent:g}% of requests for "
          f"{fault['remaining_s']:.0f}s (then it removes itself)")
    return 0


def _headers(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, sep, value = item.partition(":")
        if not sep:
            raise SystemExit("pyproxy: header must look like 'name: value'")
        pairs.append((name.strip(), value.strip()))
    return pairs


def _redirect_access_log(target: str) -> bool:
    """``run --access-log PATH|off``: point stdout, where the access log writes, at the file
    (or /dev/null). Done on the descriptor, so ``--workers`` processes inherit it."""
    path = os.devnull if target == "off" else target
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        print(f"pyproxy: cannot write the access log to {path}: {exc}", file=sys.stderr)
        return False
    sys.stdout.flush()
    os.dup2(fd, sys.stdout.fileno())
    os.close(fd)
    return True


def _explain_asks_the_proxy(client: AdminClient, args: argparse.Namespace) -> bool:
    """Whether ``explain`` asks a running proxy rather than reading config files: with
    ``--admin``, or with neither ``-c`` nor ``--admin`` when a proxy answers at the default
    admin address (a running proxy knows its run-time weights; the files may have moved on)."""
    if args.config:
        return False
    if args.admin:
        return True
    from pyproxy.admin.client import AdminClient, AdminError

    try:
        AdminClient(client.url, client.token, timeout=1.0).get("/healthz")
    except AdminError:
        return False
    return True


def _print_explained(result: dict[str, Any], source: str, as_json: bool) -> None:
    import json

    from pyproxy.admin.views import explain_text

    if as_json:
        print(json.dumps({"source": source, **result}, indent=2))
    else:
        print(f"using {source}")
        print(explain_text(result))


def _explain_remote(client: AdminClient, args: argparse.Namespace) -> int:
    result = client.request("POST", "/api/v1/explain", {
        "host": args.host, "path": args.path, "method": args.method,
        "headers": dict(_headers(args.header))})
    _print_explained(result, f"the running proxy at {client.url}", args.json)
    return 0


def _explain_offline(args: argparse.Namespace) -> int:
    from pyproxy.config.load import ConfigInvalid, load_config
    from pyproxy.explain import explain, request_head
    from pyproxy.runtime import Runtime

    paths = _explain_config_paths(args.config)
    try:
        loaded = load_config(paths)
    except ConfigInvalid as invalid:
        for issue in invalid.issues:
            print(issue, file=sys.stderr)
        return 2
    runtime = Runtime()
    runtime.swap(runtime.compile(loaded.config))
    result = explain(runtime.current, None,
                     request_head(args.host, args.path, args.method, _headers(args.header)))
    _print_explained(result, f"config {'files' if len(paths) > 1 else 'file'} "
                             f"{', '.join(paths)} (no proxy asked)", args.json)
    return 0


def _explain_config_paths(given: list[str] | None) -> list[str]:
    """Like ``run``'s config paths, but the advice fits ``explain``: no proxy answered."""
    try:
        return _config_paths(given)
    except SystemExit:
        from pyproxy.admin.client import AdminClient

        raise SystemExit(
            f"pyproxy explain: no proxy answers at {AdminClient().url} and no config given.\n"
            "  ask a running proxy:   pyproxy explain ... --admin http://HOST:PORT\n"
            "  or read config files:  pyproxy explain ... -c routes.yaml   "
            "(a file or a directory of *.yaml)") from None


def _canary(client: AdminClient, args: argparse.Namespace) -> int:
    import json
    import time
    from urllib.parse import quote

    from pyproxy.admin.client import AdminError

    while True:
        canaries = client.get("/api/v1/canaries")["canaries"]
        names = [c["name"] for c in canaries]
        listed = ", ".join(names) or "none configured"
        if args.name is not None and args.name not in names:
            raise AdminError(f"no canary {args.name}; canaries: {listed}")
        if args.action != "status":
            if args.name is None and len(names) != 1:
                raise AdminError(f"name the canary: pyproxy canary {args.action} NAME "
                                 f"(canaries: {listed})")
            name = args.name or names[0]
            view = client.request("POST", f"/api/v1/canaries/{quote(name, safe='')}/"
                                          f"{args.action}")
            print(json.dumps(view, indent=2) if args.json else _canary_text([view], events=3))
            return 0
        shown = [c for c in canaries if args.name is None or c["name"] == args.name]
        if args.json:
            print(json.dumps({"canaries": shown}, indent=2))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
            print(_canary_text(shown, events=8 if len(shown) == 1 else 3))
        if not args.watch:
            return 0
        time.sleep(2)


def _canary_text(canaries: list[Json], events: int) -> str:
    """``pyproxy canary status``: per canary, where it stands, its last check, recent events."""
    import time

    if not canaries:
        return "no canaries configured (see 'canaries:' in the config)"

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:g}%"

    lines = []
    for c in canaries:
        lines.append(f"{c['name']}: {c['primary']} -> {c['candidate']} on route {c['route']}")
        if c["phase"] == "blocked":
            lines += [f"  not running: {c.get('message', '')}", ""]
            continue
        steps = ", ".join(pct(w) for w in c["steps"])
        state = (f"  {c['phase']}: candidate {pct(c['candidate_weight'])}, primary "
                 f"{pct(c['primary_weight'])}; step {c['step']}/{len(c['steps'])} ({steps}); "
                 f"failed checks {c['failed_checks']}/{c['threshold']}")
        if c.get("next_check_in_s") is not None:
            state += f"; next check in {c['next_check_in_s']:.0f}s"
        lines.append(state)
        check = c.get("last_check")
        if check:
            def side(stats: Json | None) -> str:
                if not stats or not stats["requests"]:
                    return "0 requests"
                p99 = "-" if stats["p99_ms"] is None else f"{stats['p99_ms']:.0f}ms"
                return (f"{stats['requests']} requests, success {stats['success_rate']:.1f}%, "
                        f"p99 {p99}")
            reasons = f" ({'; '.join(check['reasons'])})" if check["reasons"] else ""
            lines.append(f"  last check: {check['verdict']}{reasons} at {pct(check['weight'])} "
                         f"over {check['seconds']:.1f}s - candidate {side(check['candidate'])}; "
                         f"primary {side(check['primary'])}")
        for event in c["events"][-events:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
            lines.append(f"  {stamp}  {event['phase']:<17} {pct(event['weight']):>5}  "
                         f"{event['message']}")
        lines.append("")
    return "\n".join(lines).rstrip()


_ADMIN_COMMANDS = {"status": _status, "set-weight": _set_weight, "fault": _fault,
                   "explain": _explain_remote, "canary": _canary}
