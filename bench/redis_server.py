"""A Redis server of one test or fault case, on a free port, to kill and start again (tests, `make chaos`)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.ports import free_port

REDIS_SERVER = shutil.which("redis-server")


@dataclass
class RedisServer:
    """`redis-server` under `root`; `persistent`: every acknowledged write on disk (AOF, fsync always)."""

    root: Path
    persistent: bool
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        # Short timeouts: a test waits seconds for an outage, not redis-py's defaults.
        return f"redis://127.0.0.1:{self.port}/0?socket_connect_timeout=1&socket_timeout=2"

    def start(self) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.root.mkdir(parents=True, exist_ok=True)
        durability = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.root),
                *durability,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown save, as a crashed host would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


@contextmanager
def redis_server(root: Path, persistent: bool = True) -> Iterator[RedisServer]:
    server = RedisServer(root, persistent)
    server.start()
    try:
        yield server
    finally:
        server.kill()
