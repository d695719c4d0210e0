"""A Ray cluster of separate raylets on this machine: `ray start --head`, then `ray start --address`.

Each node is its own `ray start --block` process group, so one node can be
killed (a node lost under load) while the others run on, and tearing the
cluster down never touches another Ray on the machine (as `ray stop` would).
Token authentication stays on: every node and driver gets the same token.
Both nodes share 127.0.0.1, so each gets its own ports where Ray's defaults
are fixed numbers.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.ports import RAY_WORKER_PORTS, free_port

STARTED = "Ray runtime started"


@dataclass
class RayNode:
    """One raylet: its `ray start --block` process (a session of its own) and its log."""

    name: str
    resources: dict[str, float]
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """Lose the node at once (SIGKILL to its whole process group), as a crashed machine would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@dataclass
class LocalRayCluster:
    """Head and worker raylets under `root`; `env` is what a driver needs to join it."""

    root: Path
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list[RayNode] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    """The head's dashboard, on 127.0.0.1: Serve's REST API, where deployments are applied."""
    _worker_ports: int = RAY_WORKER_PORTS.start

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @contextmanager
    def driver(self) -> Iterator[None]:
        """This process as a driver of the cluster: its token settings, set and then undone.

        Ray reads the authentication mode once per process and caches the
        token, so changing the variables alone is not enough: the cache is
        reset as Ray's own tests do (`reset_auth_token_state`).
        """
        from ray._private.authentication_test_utils import reset_auth_token_state

        saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        reset_auth_token_state()
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            reset_auth_token_state()

    def start_head(self, num_cpus: int, resources: dict[str, float]) -> RayNode:
        return self._start(
            "head",
            num_cpus,
            resources,
            [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
            ],
        )

    def add_worker(self, name: str, num_cpus: int, resources: dict[str, float]) -> RayNode:
        return self._start(name, num_cpus, resources, [f"--address={self.address}"])

    def _start(self, name: str, num_cpus: int, resources: dict[str, float], role: list[str]) -> RayNode:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        first_worker_port = self._worker_ports
        self._worker_ports += 1_000
        if self._worker_ports > RAY_WORKER_PORTS.stop:
            raise RuntimeError(
                f"more nodes than bench.ports.RAY_WORKER_PORTS has room for: {RAY_WORKER_PORTS}"
            )
        command = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--block",
            *role,
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            # Ray would reserve 30% of the machine's memory per node.
            "--object-store-memory=1000000000",
            f"--resources={json.dumps(resources)}",
            f"--min-worker-port={first_worker_port}",
            f"--max-worker-port={first_worker_port + 999}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
            f"--temp-dir={self.root / 'ray'}",
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        node = RayNode(name, resources, process, log)
        self.nodes.append(node)
        deadline = time.monotonic() + 180
        while STARTED not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"ray node {name} did not start:\n{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.5)
        return node

    def shutdown(self) -> None:
        """Workers first, then the head, each with its process group."""
        for node in reversed(self.nodes):
            if node.process.poll() is None:
                os.killpg(node.process.pid, signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
