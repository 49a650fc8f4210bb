"""Watch config files and trigger reloads: watchfiles on the directories, plus polling.

Directory-level watching sees editors that replace files, bind mounts and Kubernetes
ConfigMap symlink swaps (``..data`` flips), which file-level watches miss. Some filesystems
deliver no events at all, so a cheap stat-based poll runs too; a reload of unchanged
content is skipped by the caller's digest check, so double triggers cost nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import watchfiles

logger = logging.getLogger("pyproxy.reload")


def _watch_dirs(paths: Sequence[str]) -> list[str]:
    dirs = set()
    for p in paths:
        path = Path(p).resolve() if not Path(p).is_symlink() else Path(p).absolute()
        dirs.add(str(path if path.is_dir() else path.parent))
    return sorted(d for d in dirs if os.path.isdir(d))


def _relevant_filter(paths: Sequence[str]) -> Callable[[watchfiles.Change, str], bool]:
    """Only changes to the config itself count: a log file or an editor's swap file written
    next to the config must not trigger reloads (a log beside it would loop forever)."""
    files: set[str] = set()
    dirs: set[str] = set()
    for p in paths:
        path = Path(p).absolute()
        (dirs if path.is_dir() else files).add(str(path))

    def relevant(change: watchfiles.Change, changed: str) -> bool:
        changed_path = Path(changed)
        name = changed_path.name
        if name.startswith("..data"):
            return True  # a Kubernetes ConfigMap's atomic symlink swap
        if changed in files or str(changed_path.resolve()) in files:
            return True
        return str(changed_path.parent) in dirs and name.endswith((".yaml", ".yml"))

    return relevant


# (file, size, mtime), or (file, None, None) for a file that cannot be read
Fingerprint = tuple[tuple[str, int | None, int | None], ...]


def _fingerprint(paths: Sequence[str]) -> Fingerprint:
    """Names, sizes and mtimes of the YAML files behind ``paths`` (follows symlinks)."""
    seen: list[tuple[str, int | None, int | None]] = []
    for p in paths:
        path = Path(p)
        files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
        for f in files:
            try:
                st = f.stat()
            except OSError:
                seen.append((str(f), None, None))
                continue
            seen.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(seen)


async def watch(paths: Sequence[str], reload: Callable[[], Awaitable[object]],
                poll_interval: float = 2.0) -> None:
    """Run until cancelled, calling ``reload`` after each change."""
    dirs = _watch_dirs(paths)
    last = _fingerprint(paths)

    async def on_change(reason: str) -> None:
        # Events and the poll both see one change: reload each file state once.
        nonlocal last
        current = _fingerprint(paths)
        if current == last:
            return
        last = current
        logger.info("config change seen (%s): reloading", reason)
        await reload()

    async def events() -> None:
        if not dirs:
            return
        async for _ in watchfiles.awatch(*dirs, debounce=200, step=50, recursive=False,
                                         watch_filter=_relevant_filter(paths)):
            await on_change("file event")

    async def poll() -> None:
        while True:
            await asyncio.sleep(poll_interval)
            if _fingerprint(paths) != last:
                await on_change("poll")

    await asyncio.gather(events(), poll())
