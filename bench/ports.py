"""Free TCP ports on 127.0.0.1 for the servers a test or a bench starts itself.

Binding port 0 and closing the socket hands out a port of the kernel's
ephemeral range, which the kernel may hand to the next outbound connection or
`bind(0)` (Ray starts dozens) before our server binds it: CI lost a Ray
dashboard to that race (Errno 98, address already in use). These ports come
from between Ray's worker ports and the ephemeral range, where nothing is
assigned behind our back; a port is handed out once per process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

RAY_WORKER_PORTS = range(20000, 24000)
"""Above Ray's default worker ports (10002-19999): those of the Ray clusters tests start
(tests/ray_cluster.py), 1,000 per node; `free_port` never hands them out."""
FIRST = RAY_WORKER_PORTS.stop

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed: set[int] = set()
_random = random.SystemRandom()


def _ephemeral_start() -> int:
    return int(_EPHEMERAL.read_text().split()[0]) if _EPHEMERAL.exists() else 32768


def free_port() -> int:
    """A port nobody listens on now and that the kernel does not hand out on its own."""
    last = _ephemeral_start() - 1
    if last - FIRST < 1000:
        raise RuntimeError(
            f"the ephemeral port range starts at {last + 1}: too low to keep test servers' ports "
            f"out of it (it should start above {FIRST + 1000}; see {_EPHEMERAL})"
        )
    for _ in range(1000):
        port = _random.randint(FIRST, last)
        if port in _handed:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        return port
    raise RuntimeError(f"no free port between {FIRST} and {last} after 1000 tries")
