"""The leader's view of the other workers of ``pyproxy run --workers N``.

Only the leader (worker 0) serves the admin API on the public address. Every other worker
serves it read-only on 127.0.0.1 and a port of its own, and registers that address in the
state directory (``workers/INDEX.json``: its pid and address). Through those the leader

* answers ``/metrics`` for the whole proxy: at each scrape it fetches every worker's
  exposition, parses it with prometheus_client's parser and adds them up
  (``metrics.merge.merge_expositions``). A worker that does not answer (exited, restarting) is
  counted in ``pyproxy_workers{state="down"}``;
* keeps the live windows whole: every second it fetches each worker's per-second buckets
  (``GET /api/v1/windows``), which ``Windows.peers`` adds to the leader's own, so the
  dashboard, ``pyproxy status`` and the canary judge see every worker's requests.

A restarted worker counts from zero. So that the proxy's totals never drop (Prometheus would
read a drop as a counter reset, and ``rate()`` would jump), what a worker had counted when last
seen stays in: its counters and histograms as of its last scrape, its window totals as of the
last fetch. Only what it served after that is lost with it. When the leader itself restarts,
the totals do start over, like a single process's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyproxy.metrics.exposition import parse_exposition, render_families, workers_family
from pyproxy.metrics.merge import FamilyLike, cumulative_only, merge_expositions, window_totals
from pyproxy.metrics.windows import RouteWindowExport, WindowExport, route_window_export

if TYPE_CHECKING:
    import aiohttp

logger = logging.getLogger("pyproxy.peers")

REGISTRY = "workers"  # the directory, inside the state directory
WINDOW_REFRESH = 1.0  # seconds between fetches of the other workers' windows
TIMEOUT = 2.0  # seconds: a worker slower than this counts as down


def register(state_dir: str | os.PathLike[str], index: int, host: str, port: int) -> None:
    """A worker's private admin address, for the leader to find (written whole, renamed)."""
    directory = Path(state_dir) / REGISTRY
    directory.mkdir(exist_ok=True)
    tmp = directory / f".{index}.json.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "admin": f"http://{host}:{port}"}))
    tmp.replace(directory / f"{index}.json")


def clear_registry(state_dir: str | os.PathLike[str]) -> None:
    """Forget the workers of an earlier run in the same state directory."""
    for path in (Path(state_dir) / REGISTRY).glob("*.json"):
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Peer:
    index: int
    pid: int
    url: str


class Peers:
    """Workers 1..N-1 as the leader sees them."""

    def __init__(self, state_dir: str | os.PathLike[str], count: int):
        self._dir = Path(state_dir) / REGISTRY
        self.count = count
        self._session: aiohttp.ClientSession | None = None
        # index → (pid, its counters and histograms at its last scrape)
        self._metrics: dict[int, tuple[int, list[FamilyLike]]] = {}
        # the same, summed, of workers that have exited
        self._retired_metrics: Sequence[FamilyLike] = []
        # index → (pid, its window exports at the last fetch)
        self._windows: dict[int, tuple[int, list[RouteWindowExport]]] = {}
        # window_totals of exited ones
        self._retired_windows: dict[tuple[str, str], WindowExport] = {}
        self._by_key: dict[tuple[str, str], list[WindowExport]] = {}

    # ------------------------------------------------------------------ /metrics

    async def metrics(self, own: bytes) -> bytes:
        """The leader's exposition ``own`` plus every other worker's."""
        peers = self._registered()
        bodies = await asyncio.gather(*(self._get(peer, "/metrics") for peer in peers))
        answered = [(peer, body) for peer, body in zip(peers, bodies, strict=True)
                    if body is not None]
        # Parsing and merging is CPU work for a large config: not on the leader's event loop.
        parsed = await asyncio.to_thread(
            lambda: [parse_exposition(body.decode()) for body in [own] + [b for _, b in answered]])
        workers: list[Sequence[FamilyLike]] = [parsed[0]]
        for (peer, _), families in zip(answered, parsed[1:], strict=True):
            self._seen_metrics(peer.index, peer.pid, cumulative_only(families))
            workers.append(families)
        up = {peer.index for peer, _ in answered}
        # A worker down right now still counts with what it had counted.
        workers += [families for index, (_, families) in self._metrics.items() if index not in up]
        workers.append(self._retired_metrics)
        merged = await asyncio.to_thread(merge_expositions, workers)
        return render_families([*merged, workers_family(1 + len(answered), self.count)])

    # ------------------------------------------------------------------ windows

    def windows(self) -> dict[tuple[str, str], list[WindowExport]]:
        """For ``Windows.peers``: (route, backend) → the other workers' exports."""
        return self._by_key

    async def run(self) -> None:
        """Fetch the other workers' windows every second, until cancelled."""
        while True:
            await self._refresh_windows()
            await asyncio.sleep(WINDOW_REFRESH)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _refresh_windows(self) -> None:
        peers = self._registered()
        bodies = await asyncio.gather(*(self._get(peer, "/api/v1/windows") for peer in peers))
        for peer, body in zip(peers, bodies, strict=True):
            if body is None:
                continue
            try:
                answer = json.loads(body)
                self._seen_windows(peer.index, int(answer["pid"]),
                                   [route_window_export(w) for w in answer["windows"]])
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("worker %d sent windows that do not parse: %r", peer.index, exc)
        by_key: dict[tuple[str, str], list[WindowExport]] = {}
        for _, exports in self._windows.values():
            for export in exports:
                by_key.setdefault((export["route"], export["backend"]), []).append(export)
        for key, retired in self._retired_windows.items():
            by_key.setdefault(key, []).append(retired)
        self._by_key = by_key

    # ------------------------------------------------------------------ bookkeeping

    # What worker ``index`` reported. A new pid there means the worker was restarted: what
    # the old process had counted is retired (kept, summed with other exited workers').

    def _seen_metrics(self, index: int, pid: int, families: list[FamilyLike]) -> None:
        last = self._metrics.get(index)
        if last is not None and last[0] != pid:
            self._retired_metrics = merge_expositions([self._retired_metrics, last[1]])
        self._metrics[index] = (pid, families)

    def _seen_windows(self, index: int, pid: int, exports: list[RouteWindowExport]) -> None:
        last = self._windows.get(index)
        if last is not None and last[0] != pid:
            for export in last[1]:
                key = (export["route"], export["backend"])
                earlier = [self._retired_windows[key]] if key in self._retired_windows else []
                self._retired_windows[key] = window_totals([*earlier, export])
        self._windows[index] = (pid, exports)

    def _registered(self) -> list[_Peer]:
        peers = []
        for index in range(1, self.count):
            try:
                entry = json.loads((self._dir / f"{index}.json").read_text())
                pid, url = int(entry["pid"]), str(entry["admin"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not started yet
            if _alive(pid):  # a dead worker's port may belong to someone else by now
                peers.append(_Peer(index, pid, url))
        return peers

    async def _get(self, peer: _Peer, path: str) -> bytes | None:
        # Imported here: aiohttp's client costs a process ~16 MiB of memory, and only the
        # leader of several workers needs it.
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        try:
            async with self._session.get(peer.url + path) as response:
                if response.status == 200:
                    return await response.read()
                logger.warning("worker %d answered %s with %d", peer.index, path,
                               response.status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            logger.debug("worker %d did not answer %s: %r", peer.index, path, exc)
        return None


def _alive(pid: int) -> bool:
    """Is ``pid`` a live process of ours (signal 0 checks without sending anything)?"""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
