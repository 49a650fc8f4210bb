"""Free loopback ports for processes that bind them a moment later (the demo's services).

A port picked now must still be free when another process binds it, up to seconds later.
The ports the kernel hands out for ``bind(port 0)`` come from the ephemeral range, the same
range every outgoing connection takes its local port from, so in between a connection can
take the picked port. Ports are picked at random *below* that range instead, where only an
explicit bind lands, and never the same one twice in a process.
"""

from __future__ import annotations

import random
import socket

_LOWEST = 20000  # above the well-known and most registered service ports
_rng = random.SystemRandom()  # independent of any seed a caller sets on `random`
_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free on ``host`` now (all checked at once)."""
    low, high = _LOWEST, _ephemeral_start() - 1
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(100 * count):
            if len(ports) == count or high <= low:
                break
            port = _rng.randint(low, high)
            if port in _handed_out:
                continue
            sock = socket.socket()
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
            ports.append(port)
            _handed_out.add(port)
        while len(ports) < count:  # no room below the ephemeral range: let the kernel pick
            sock = socket.socket()
            sock.bind((host, 0))
            held.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in held:
            sock.close()
    return ports


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]
