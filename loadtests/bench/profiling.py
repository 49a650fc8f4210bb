"""`bench.py profile` (profile.sh): py-spy on pyproxy (b) under wrk -c50, written as a flame
graph (SVG), the raw collapsed stacks, and a `py-spy top`-like table of self/total shares.

One sampler (raw collapsed stacks) feeds both the SVG and the table, so they agree.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import LOAD_CPU, REPO, Deadline, log
from install import ensure_pyspy, ensure_tools
from measure import Bench, parse_wrk
from processes import pinned_to
from targets import Targets


def summarize_raw(raw: Path, top: int = 40) -> str:
    """A `py-spy top`-like table from py-spy's raw (collapsed) stacks: self and total share."""
    self_c: dict[str, int] = {}
    total_c: dict[str, int] = {}
    n = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        n += c
        frames = [f for f in stack.split(";") if f]
        frames = [f for f in frames
                  if not f.startswith("process ") and not f.startswith("thread ")] or frames
        if not frames:
            continue
        self_c[frames[-1]] = self_c.get(frames[-1], 0) + c
        for f in set(frames):
            total_c[f] = total_c.get(f, 0) + c
    if not n:
        return "no samples\n"
    L = [f"{n} samples\n", f"{'%self':>7} {'%total':>7}  function (file:line)"]
    for f, c in sorted(self_c.items(), key=lambda kv: -kv[1])[:top]:
        L.append(f"{100 * c / n:6.1f}% {100 * total_c.get(f, 0) / n:6.1f}%  {f}")
    by_file: dict[str, int] = {}
    for f, c in self_c.items():
        m = re.search(r"\(([^:()]+)", f)
        key = m.group(1) if m else f
        key = key.split("site-packages/")[-1]
        by_file[key] = by_file.get(key, 0) + c
    L.append("\nSelf time by file:")
    for f, c in sorted(by_file.items(), key=lambda kv: -kv[1])[:20]:
        L.append(f"{100 * c / n:6.1f}%  {f}")
    L.append(f"\nBy total (inclusive) time, top {top // 2} (a lower bound: stacks resumed from "
             "uvloop's C loop start at the coroutine):")
    for f, c in sorted(total_c.items(), key=lambda kv: -kv[1])[:top // 2]:
        L.append(f"{100 * self_c.get(f, 0) / n:6.1f}% {100 * c / n:6.1f}%  {f}")
    return "\n".join(L) + "\n"


class _Frame:
    """A node of the flame graph: samples that passed through it, and its callees."""

    def __init__(self) -> None:
        self.n = 0
        self.children: dict[str, _Frame] = {}


def _esc(x: str) -> str:
    x = "".join(ch if ch.isprintable() else "?" for ch in x)  # torn reads leave garbage
    return (x.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def render_flamegraph(raw: Path, svg: Path, title: str) -> None:
    """A plain SVG flame graph (root at the bottom, hover for counts) from collapsed stacks."""
    root = _Frame()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        root.n += c
        node = root
        for f in stack.split(";"):
            node = node.children.setdefault(f, _Frame())
            node.n += c
    W, H, PAD = 1200.0, 16, 10
    total = root.n or 1
    rects: list[tuple[str, float, int, float, int]] = []
    depth_max = 0

    def walk(node: _Frame, name: str, x: float, depth: int) -> None:
        nonlocal depth_max
        w = (W - 2 * PAD) * node.n / total
        if w < 0.3:
            return
        depth_max = max(depth_max, depth)
        rects.append((name, x, depth, w, node.n))
        cx = x
        for child_name, child in sorted(node.children.items()):
            walk(child, child_name, cx, depth + 1)
            cx += (W - 2 * PAD) * child.n / total

    walk(root, "all", PAD, 0)
    height = (depth_max + 1) * H + 3 * PAD + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W:.0f}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           '<rect width="100%" height="100%" fill="#f8f8f8"/>',
           f'<text x="{PAD}" y="{PAD + 10}" font-size="13">{_esc(title)} — {total} samples</text>']
    for name, x, depth, w, n in rects:
        y = height - PAD - (depth + 1) * H
        h = abs(hash(name.split(" (")[-1].split(":")[0])) % 60
        fill = ("#cccccc" if name == "all" else
                f"rgb({205 + h % 50},{90 + h * 2 % 120},{40 + h % 30})")
        fits = len(name) * 6.6 < w - 4
        label = name if fits else name[: max(0, int((w - 4) / 6.6) - 2)] + ".."
        text = f'<text x="{x + 2:.1f}" y="{y + 11}">{_esc(label)}</text>' if w > 20 else ""
        out.append(f'<g><title>{_esc(name)}: {n} samples ({100 * n / total:.1f}%)</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{H - 1}" fill="{fill}" '
                   f'rx="1"/>{text}</g>')
    out.append("</svg>")
    svg.write_text("\n".join(out) + "\n")


def cmd_profile(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tools = ensure_tools(install=not args.no_install)
    if not (tools["wrk"]["ok"] and tools["nginx"]["ok"]):
        log("wrk and nginx are needed")
        return 3
    pyspy = ensure_pyspy()
    if pyspy is None:
        return 3
    run = Path(tempfile.mkdtemp(prefix="pyproxy-prof-"))
    run.chmod(0o755)
    args.quiet_max, args.quiet_wait, args.max_tries, args.warm = 10.0, 30.0, 1, 2.0
    targets = Targets(tools, run)
    bench = Bench(args, targets)
    t = "pyproxy_b"
    svg, rawf = out / "profile-b.svg", out / "profile-b.raw.txt"
    top = out / "profile-b-top.txt"
    signal.alarm(int(args.dur) + 240)
    try:
        targets.start_origin()
        pid = targets.start_target(t)
        q = bench.acct.wait_quiet(pid, targets.origin_pid, 10.0, 30.0)
        url = f"http://127.0.0.1:{targets.L.port(t)}/"
        total = args.dur + 4
        res: dict[str, Any] = {}
        th = threading.Thread(
            target=lambda: res.update(wrk=bench.wrk(50, total, url, latency=True)))
        th.start()
        time.sleep(2.0)
        # --nonblocking: the proxy is never paused; some stacks come out cut at uvloop's C
        # boundary (coroutines resumed by the loop appear as roots), so self shares are the
        # solid part.
        p1 = subprocess.Popen([str(pyspy), "record", "--pid", str(pid),
                               "--duration", f"{args.dur:g}", "--rate", str(args.rate),
                               "--nonblocking", "--format", "raw", "-o", str(rawf)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=lambda: pinned_to(LOAD_CPU))
        o1, _ = p1.communicate(timeout=args.dur + 60)
        th.join(timeout=total + 40)
        _, wout = res.get("wrk", (1, "wrk did not finish"))
        w = parse_wrk(wout)
        # Paths relative to the repository: the results are committed, this machine's are not.
        pyspy_said = "; ".join(line.strip().replace(f"{REPO}/", "") for line in o1.splitlines()
                               if "Samples:" in line or "rror" in line)
        head = [f"# py-spy of pyproxy (b) under wrk -t1 -c50 {url} ({args.dur:g} s sampled at "
                f"{args.rate} Hz, --nonblocking)",
                f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}; "
                f"wrk over {total:g} s: {w.get('rps', 0):,.0f} rps (sampling costs some "
                f"throughput); foreign load before: {q['last_pct']:g}% of a core"
                f"{'' if q['quiet'] else ' (NOT quiet)'}",
                "# py-spy: " + pyspy_said,
                ""]
        if not rawf.exists():
            log(f"py-spy produced no output: {o1.strip()[-400:]}")
            return 1
        summary = summarize_raw(rawf)
        render_flamegraph(rawf, svg,
                          f"pyproxy (b), wrk -c50, {w.get('rps', 0):,.0f} rps while sampled")
        top.write_text("\n".join(head) + summary)
        print("\n".join(head) + summary)
        log(f"wrote {svg}, {rawf} and {top}")
        return 0
    except Deadline:
        log("profile: time limit reached")
        return 1
    finally:
        signal.alarm(0)
        targets.procs.stop_all()
        shutil.rmtree(run, ignore_errors=True)
