"""The local Ray of `make serve` (`serving.deploy.start_local`): loopback only, its token private, required.

One Ray, started through `start_local` in a process of its own (this process
keeps no Ray, and its HOME is a temporary one, so ~/.ray stays untouched),
runs a trivial Serve application, as `make serve` runs the scoring one. Its
whole process tree listens on 127.0.0.1, but for the one listener Ray binds on
every interface whatever the node address: each Serve replica's
inter-deployment gRPC server (`[::]:0` in ray/serve/_private/replica.py), which
itself refuses a call without the token. Then drivers in processes of their
own: one with a wrong token and one without any are refused with Ray's
authentication error, one with the right token connects; Serve's REST API on
the dashboard answers only with the token.

Every driver child turns Ray's multi-node mode off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`):
without it, Ray resolves the address 127.0.0.1 to this machine's own address,
where nothing of this Ray listens, and every driver would fail the same way.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from bench.ports import free_port
from serving.deploy import SERVE_API
from settings import PROJECT_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RAY_AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
"""Ray's own token variables: every child here starts without the caller's."""
REPLICA = "ray::ServeReplica:"
"""How a Serve replica's process names itself."""

LOCAL_RAY = """
import json, sys
from pathlib import Path

import ray
from ray import serve

from serving.deploy import start_local
from settings import ServingSettings, load_settings

data_dir, dashboard, metrics, port = sys.argv[1:]
settings = load_settings(
    profile="local",
    data_dir=Path(data_dir),
    serving=ServingSettings(ray_dashboard_port=int(dashboard), ray_metrics_port=int(metrics), port=int(port)),
)
start_local(settings, num_cpus=1)


@serve.deployment
def probe(_request) -> str:
    return "ok"


serve.start(http_options={"host": "127.0.0.1", "port": settings.serving.port})
serve.run(probe.bind(), name="probe", route_prefix="/")
print(json.dumps({
    "address": ray.get_runtime_context().gcs_address,
    "token_path": str(settings.ray_auth_token_path.expanduser()),
    "token": settings.ray_token(),
}), flush=True)
sys.stdin.read()  # until the test closes it
ray.shutdown()
"""
"""What `make serve` does, with a trivial application for the scoring one."""

DRIVER = """
import ray
ray.init(address={address!r}, log_to_driver=False)
print("connected", ray.cluster_resources().get("CPU"))
ray.shutdown()
"""


@dataclass
class LocalRay:
    process: subprocess.Popen[str]
    home: Path
    address: str
    dashboard: str
    token: str
    token_path: Path


def child_env(home: Path, **ray_env: str) -> dict[str, str]:
    """This environment less Ray's token variables, HOME a temporary one, plus `ray_env`."""
    env = {name: value for name, value in os.environ.items() if name not in RAY_AUTH}
    # Ray would rebuild this uv environment for its workers (as in the Makefile).
    return {**env, "HOME": str(home), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", **ray_env}


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRay]:
    root = tmp_path_factory.mktemp("local_ray")
    home = root / "home"
    home.mkdir()
    dashboard = free_port()
    ports = [str(port) for port in (dashboard, free_port(), free_port())]  # dashboard, metrics, Serve
    process = subprocess.Popen(
        [sys.executable, "-c", LOCAL_RAY, str(root / "data"), *ports],
        cwd=PROJECT_ROOT,
        env=child_env(home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, f"the local Ray did not start (exit status {process.wait(timeout=30)})"
        started = json.loads(line)
        yield LocalRay(
            process,
            home,
            started["address"],
            f"http://127.0.0.1:{dashboard}",
            started["token"],
            Path(started["token_path"]),
        )
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def loopback(host: str) -> bool:
    """127.0.0.0/8 or ::1, or an IPv6 socket bound to IPv4's loopback (`::ffff:127.0.0.1`)."""
    ip = ipaddress.ip_address(host)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def listeners(root: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket listening in `root`'s process tree."""
    parent = psutil.Process(root)
    found = []
    for process in [parent, *parent.children(recursive=True)]:
        try:
            name = " ".join(process.cmdline())
            sockets = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for sock in sockets:
            if sock.status == psutil.CONN_LISTEN:
                found.append((sock.laddr.ip, sock.laddr.port, name))
    return found


def unauthenticated_call(port: int) -> grpc.StatusCode:
    """The status of a call, without a token, to a Serve replica's inter-deployment gRPC server."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
        try:
            call(b"", timeout=30)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_the_local_ray_listens_on_loopback_only_and_keeps_its_token_private(local_ray: LocalRay) -> None:
    found = listeners(local_ray.process.pid)
    assert len(found) > 10, found  # the GCS, the raylet, the agents, the dashboard, Serve's actors
    elsewhere = [(host, port, name) for host, port, name in found if not loopback(host)]
    # The documented exception: the replica's inter-deployment gRPC server, on every interface.
    assert [(host in ("::", "0.0.0.0"), name.startswith(REPLICA)) for host, _, name in elsewhere] == [
        (True, True)
    ], elsewhere
    assert unauthenticated_call(elsewhere[0][1]) == grpc.StatusCode.UNAUTHENTICATED
    assert local_ray.token_path == local_ray.home / ".ray" / "auth_token"
    assert local_ray.token_path.stat().st_mode & 0o777 == 0o600


def driver(local_ray: LocalRay, tmp_path: Path, **ray_env: str) -> subprocess.CompletedProcess[str]:
    """A driver process that connects to the local Ray with `ray_env` (HOME an empty directory)."""
    home = tmp_path / "driver_home"
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", DRIVER.format(address=local_ray.address)],
        cwd=PROJECT_ROOT,
        env=child_env(home, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **ray_env),
        capture_output=True,
        text=True,
        timeout=180,
    )


REFUSED_BY_RAY = "RPC error: InvalidAuthToken: Authentication token is missing or incorrect"
"""The GCS's answer to a driver without the cluster's token."""


@pytest.mark.parametrize(
    ("ray_env", "error"),
    [
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong"}, REFUSED_BY_RAY),
        # Ray's default for a driver that finds no token: authentication off.
        ({}, REFUSED_BY_RAY),
        # The driver's own check, before it reaches the cluster.
        ({"RAY_AUTH_MODE": "token"}, "Token authentication is enabled but no authentication token was found"),
    ],
    ids=["wrong-token", "no-token", "token-mode-without-token"],
)
def test_a_driver_without_the_token_is_refused(
    local_ray: LocalRay, tmp_path: Path, ray_env: dict[str, str], error: str
) -> None:
    refused = driver(local_ray, tmp_path, **ray_env)
    assert refused.returncode != 0, refused.stdout
    assert f"ray.exceptions.AuthenticationError: {error}" in refused.stderr, refused.stderr[-3000:]
    assert "connected" not in refused.stdout


def test_a_driver_with_the_token_connects(local_ray: LocalRay, tmp_path: Path) -> None:
    connected = driver(local_ray, tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=local_ray.token)
    assert connected.returncode == 0, connected.stderr[-3000:]
    assert "connected 1.0" in connected.stdout


def test_serves_rest_api_answers_only_with_the_token(local_ray: LocalRay) -> None:
    url = local_ray.dashboard + SERVE_API
    assert httpx.get(url, timeout=30).status_code in (401, 403)
    wrong = httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert wrong.status_code in (401, 403)
    right = httpx.get(url, headers={"Authorization": f"Bearer {local_ray.token}"}, timeout=30)
    assert right.status_code == 200
    assert "probe" in right.json()["applications"]
