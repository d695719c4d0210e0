"""The Serve application on a two-node Ray cluster: replicas on both nodes, then one node lost under load.

The cluster is the session's `ray_cluster`: a head and a worker raylet
started by `ray start` (tests/ray_cluster.py), token authentication on. The
application is the cluster profile's Serve config (`serving.deploy.serve_config`)
with the pipeline's deployed versions, applied through the head's Serve REST
API as `python -m serving run` applies it under that profile. Its replicas
read the local profile's stores, a copy of the session's pipeline output: on
one machine every node sees the same files. Three settings differ from the
rendered config, all because the two nodes share one machine: the replicas'
profile is local (the cluster profile's servers do not exist here), the
proxy runs on the head only (two proxies cannot bind one address), and the
autoscaler may not go past the two replicas the four logical CPUs hold, so
"capacity back" means two running replicas again.

The measurements (error rate, time until capacity is back) are printed and
written to test-artifacts/ray_cluster_failover.json; what is asserted is
that failures happen only between the loss and the recovery, and that
capacity does come back.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from pydantic import SecretStr
from ray import serve

from bench.ports import free_port
from modeling import registry
from serving import deploy
from settings import ServingConfig, ServingSettings, Settings
from streaming.bus_kafka import KafkaBus
from tests.conftest import ServedData, score_body
from tests.ray_cluster import LocalRayCluster

pytestmark = pytest.mark.timeout(900)

REPLICA_CLASS = f"ServeReplica:{deploy.APP_NAME}:{deploy.DEPLOYMENT}"
CLIENTS = ServingConfig().max_in_flight
"""Within what one replica admits at once, so that the only errors are the lost node's."""
ARTIFACT = Path("test-artifacts") / "ray_cluster_failover.json"


@dataclass
class Served:
    url: str
    champion: str
    bodies: list[dict[str, Any]]
    node_ids: dict[str, str]  # node id -> the custom resource naming it


@dataclass
class Load:
    """Answers of the load generator: (seconds since its start at send, status) per request."""

    started: float = field(default_factory=time.monotonic)
    answers: list[tuple[float, int]] = field(default_factory=list)


def _node_names() -> dict[str, str]:
    names = {}
    for node in ray.nodes():
        if node["Alive"]:
            name = next((r for r in node["Resources"] if r.startswith("node_")), "")
            names[node["NodeID"]] = name
    return names


def _replica_nodes() -> list[str]:
    """Node ids of the scoring replicas alive now.

    From the GCS actor table: a private API, but one read with no dashboard round trip.
    """
    actors = ray._private.state.actors()  # type: ignore[attr-defined]
    return sorted(
        actor["Address"]["NodeID"]
        for actor in actors.values()
        if actor["ActorClassName"] == REPLICA_CLASS and actor["State"] == "ALIVE"
    )


def _running_replicas() -> int:
    app = serve.status().applications.get(deploy.APP_NAME)
    if app is None:
        return 0
    return int(app.deployments[deploy.DEPLOYMENT].replica_states.get("RUNNING", 0))


@pytest.fixture(scope="module")
def served(served_data: ServedData, kafka_bootstrap: str, ray_cluster: LocalRayCluster) -> Iterator[Served]:
    stream = served_data.resources["stream"]
    stream.publish_local_broker(kafka_bootstrap)
    KafkaBus(kafka_bootstrap).ensure_topics([stream.topics().predictions])
    # The cluster profile's settings as far as the Serve config needs them (its servers do not exist here).
    settings = Settings.model_construct(
        profile="cluster",
        data_dir=served_data.data_dir,
        ray_address=ray_cluster.address,
        ray_auth_token=SecretStr(ray_cluster.token),
        serving=ServingSettings(port=free_port(), ray_dashboard_port=ray_cluster.dashboard_port),
    )
    models = served_data.resources["mlflow"]
    models.activate()
    deployment = registry.recorded_deployment(models.client(), models.model_name)
    assert deployment is not None
    config = deploy.serve_config(settings, deployment)
    config["proxy_location"] = "HeadOnly"
    application = config["applications"][0]
    application["runtime_env"]["env_vars"]["FRAUDPIPE_PROFILE"] = "local"
    scoring = application["deployments"][0]
    scoring["autoscaling_config"]["max_replicas"] = scoring["autoscaling_config"]["min_replicas"]
    api = deploy.ServeApi(settings)
    with ray_cluster.driver():
        api.deploy(config)
        # A driver only to look at where the replicas run (the GCS's actor table).
        ray.init(address=ray_cluster.address, log_to_driver=False)
        try:
            champion = deployment.champion
            rows = served_data.resources["lake"].read_table("training_set").tail(2_000)
            yield Served(
                url=settings.serving.url,
                champion=champion,
                bodies=[score_body(row) for _, row in rows.iterrows()],
                node_ids=_node_names(),
            )
        finally:
            api.close()
            serve.shutdown()
            ray.shutdown()
            # The last module of the session to use the cluster (test_ray_feast sorts before
            # this one), and its worker is gone: the rest of the suite runs without it.
            ray_cluster.shutdown()


def _load(url: str, bodies: list[dict[str, Any]], stop: threading.Event, load: Load) -> None:
    """CLIENTS closed-loop clients until `stop`; a request with no answer counts as status -1."""

    async def client(http: httpx.AsyncClient, offset: int) -> None:
        i = offset
        while not stop.is_set():
            sent = time.monotonic() - load.started
            try:
                status = (await http.post(f"{url}/v1/score", json=bodies[i % len(bodies)])).status_code
            except httpx.HTTPError:
                status = -1
            load.answers.append((sent, status))
            i += CLIENTS

    async def main() -> None:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=CLIENTS)) as http:
            await asyncio.gather(*(client(http, k) for k in range(CLIENTS)))

    asyncio.run(main())


def test_replicas_on_both_nodes_answer_like_the_champion(served: Served) -> None:
    nodes = _replica_nodes()
    assert len(nodes) == 2 and len(set(nodes)) == 2, f"replicas not spread over the two nodes: {nodes}"
    assert sorted(served.node_ids[n] for n in nodes) == ["node_head", "node_worker"]
    answers = [httpx.post(f"{served.url}/v1/score", json=body, timeout=30) for body in served.bodies[:50]]
    assert [a.status_code for a in answers] == [200] * 50
    assert {a.json()["model"]["version"] for a in answers} == {served.champion}
    batch = httpx.post(f"{served.url}/v1/score/batch", json={"transactions": served.bodies[:50]}, timeout=30)
    assert [s["probability"] for s in batch.json()["scores"]] == [a.json()["probability"] for a in answers]


def test_losing_the_worker_node_under_load(served: Served, ray_cluster: LocalRayCluster) -> None:
    worker = next(node for node in ray_cluster.nodes if node.name == "worker")
    stop, load = threading.Event(), Load()
    loader = threading.Thread(target=_load, args=(served.url, served.bodies, stop, load))
    loader.start()
    try:
        time.sleep(5)
        killed_at = time.monotonic() - load.started
        worker.kill()
        lost = next(n for n, name in served.node_ids.items() if name == "node_worker")
        deadline = time.monotonic() + 300
        # Capacity is back when two replicas run again, none of them on the lost node.
        while not (_running_replicas() == 2 and len(nodes := _replica_nodes()) == 2 and lost not in nodes):
            assert time.monotonic() < deadline, "the lost replica was never replaced"
            time.sleep(0.25)
        recovered_at = time.monotonic() - load.started
        time.sleep(5)
    finally:
        stop.set()
        loader.join()
    before = [s for t, s in load.answers if t < killed_at]
    during = [s for t, s in load.answers if killed_at <= t < recovered_at]
    after = [s for t, s in load.answers if t >= recovered_at]
    failures = [t for t, s in load.answers if s != 200]
    report = {
        "clients": CLIENTS,
        "requests": len(load.answers),
        "errors": len(failures),
        "error_rate": len(failures) / len(load.answers),
        "error_rate_between_loss_and_recovery": (len(during) - during.count(200)) / max(len(during), 1),
        "seconds_until_capacity_back": round(recovered_at - killed_at, 2),
        "seconds_from_loss_to_last_error": round(max(failures) - killed_at, 2) if failures else None,
        "statuses": {str(s): [s for _, s in load.answers].count(s) for s in {s for _, s in load.answers}},
        "replica_nodes_after": sorted(served.node_ids.get(n, n) for n in _replica_nodes()),
    }
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(report, indent=2))
    print("\nworker node lost under load:", json.dumps(report, indent=2))
    assert before and set(before) == {200}, "errors before the node was lost"
    assert after and set(after) == {200}, "errors after capacity was back"
    assert report["replica_nodes_after"] == ["node_head", "node_head"]
