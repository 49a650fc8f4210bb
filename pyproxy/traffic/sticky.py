"""Version stickiness: a client keeps the backend it drew while that backend's weight > 0.

By cookie, the client carries its draw (pyproxy sets the cookie on the first response). By
header, pyproxy remembers each header value's draw in a bounded LRU table. Either way,
raising a weight moves only clients who have not drawn yet: existing pins stand until their
backend's weight drops to 0.
"""

from __future__ import annotations

from collections import OrderedDict


class StickyTable:
    """header value → backend name, least recently used evicted beyond ``capacity``."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._pins: OrderedDict[str, str] = OrderedDict()

    def get(self, key: str) -> str | None:
        name = self._pins.get(key)
        if name is not None:
            self._pins.move_to_end(key)
        return name

    def pin(self, key: str, backend: str) -> None:
        self._pins[key] = backend
        self._pins.move_to_end(key)
        if len(self._pins) > self.capacity:
            self._pins.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pins)


def set_cookie_header(name: str, backend: str, ttl: float) -> tuple[str, str]:
    """A TTL of 0 makes a session cookie (Max-Age=0 would delete it at once)."""
    max_age = f"; Max-Age={int(ttl)}" if ttl > 0 else ""
    return ("set-cookie", f"{name}={backend}; Path=/{max_age}; HttpOnly; SameSite=Lax")
