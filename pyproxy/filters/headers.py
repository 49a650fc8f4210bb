"""Request and response header changes: set replaces, add appends, remove deletes."""

from __future__ import annotations

from pyproxy.config.model import HeaderChanges


def apply(headers: list[tuple[str, str]], changes: HeaderChanges | None) -> list[tuple[str, str]]:
    if changes is None or not (changes.set or changes.add or changes.remove):
        return headers
    drop = set(changes.remove) | {name for name, _ in changes.set}
    out = [(n, v) for n, v in headers if n not in drop] if drop else list(headers)
    out.extend(changes.set)
    out.extend(changes.add)
    return out
