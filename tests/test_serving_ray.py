"""End to end on a real local Ray: deploy, score, hot swap under load, rollback, A/B, shadow, overload.

One Ray instance serves the whole module (starting one costs about 40 s
here). The replica builds its resources from the local profile like every
other process: the registry and online store are a copy of the session's
pipeline output, and its prediction log goes to the session's mock Kafka
cluster through the local broker file.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from ray import serve

from bench.loadgen import LoadSpec, run_in_process
from feature_repo.windows import MODEL_FEATURES
from modeling import registry
from serving import deploy
from serving.model import ModelStore
from streaming.bus_kafka import KafkaBus
from tests.conftest import ServedData, register_variant, score_body

pytestmark = pytest.mark.timeout(900)


@dataclass
class Deployment:
    url: str
    watcher: deploy.AliasWatcher
    served: ServedData
    kafka_bootstrap: str
    training_set: pd.DataFrame


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def deployed(served_data: ServedData, kafka_bootstrap: str) -> Iterator[Deployment]:
    stream = served_data.resources["stream"]
    stream.publish_local_broker(kafka_bootstrap)
    KafkaBus(kafka_bootstrap).ensure_topics([stream.topics().predictions])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FRAUDPIPE_PROFILE", "local")
        env.setenv("FRAUDPIPE_DATA_DIR", str(served_data.data_dir))
        config = deploy.load_config("local")
        config["http_options"]["port"] = _free_port()
        deploy.start_local(config, num_cpus=2)
        try:
            watcher = deploy.AliasWatcher(config, ModelStore(served_data.resources["mlflow"]).alias)
            watcher.sync()
            url = f"http://127.0.0.1:{config['http_options']['port']}"
            training_set = served_data.resources["lake"].read_table("training_set")
            yield Deployment(url, watcher, served_data, kafka_bootstrap, training_set)
        finally:
            serve.shutdown()
            import ray

            ray.shutdown()


@dataclass
class Answers:
    statuses: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any] | None] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)


async def _send(client: httpx.AsyncClient, url: str, body: dict[str, Any], answers: Answers) -> None:
    started = time.perf_counter()
    try:
        response = await client.post(url, json=body)
        status, payload = response.status_code, response.json() if response.status_code == 200 else None
    except httpx.HTTPError:
        status, payload = -1, None  # no answer at all: counted as a failure
    answers.latencies_s.append(time.perf_counter() - started)
    answers.statuses.append(status)
    answers.bodies.append(payload)


def _closed_loop(url: str, bodies: list[dict[str, Any]], concurrency: int) -> Answers:
    """Send every body, `concurrency` at a time."""
    answers = Answers()

    async def main() -> None:
        queue = list(reversed(bodies))
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:

            async def worker() -> None:
                while queue:
                    await _send(client, url, queue.pop(), answers)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(main())
    return answers


def _wait_for(deployed: Deployment, done: Callable[[dict[str, Any]], bool], body: dict[str, Any]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = httpx.post(f"{deployed.url}/v1/score", json=body, timeout=30)
        if response.status_code == 200 and done(response.json()):
            return
        time.sleep(0.2)
    raise AssertionError("the deployment never reached the expected state")


def test_deployed_app_scores_one_and_many_as_offline_and_publishes_its_contract(deployed: Deployment) -> None:
    rows = deployed.training_set.tail(200)
    one = httpx.post(f"{deployed.url}/v1/score", json=score_body(rows.iloc[0]), timeout=30)
    assert one.status_code == 200, one.text
    assert one.json()["route"] == "champion" and one.json()["latency"]["total_ms"] > 0
    many = httpx.post(
        f"{deployed.url}/v1/score/batch",
        json={"transactions": [score_body(r) for _, r in rows.iterrows()]},
        timeout=30,
    )
    assert many.status_code == 200
    assert [s["transaction_id"] for s in many.json()["scores"]] == rows["TRANSACTION_ID"].tolist()
    assert one.json()["probability"] == pytest.approx(many.json()["scores"][0]["probability"], abs=1e-12)
    assert httpx.get(f"{deployed.url}/readyz").json()["ready"] is True

    sample = deployed.training_set.sample(1_000, random_state=1)
    mlflow = deployed.served.resources["mlflow"]
    mlflow.activate()
    version = registry.alias_version(mlflow.client(), mlflow.model_name, registry.CHAMPION)
    assert version is not None
    offline = registry.load_model(mlflow.model_name, version).predict_proba(sample[list(MODEL_FEATURES)])[
        :, 1
    ]
    served = httpx.post(
        f"{deployed.url}/v1/score/batch",
        json={"transactions": [score_body(r) for _, r in sample.iterrows()]},
        timeout=60,
    ).json()["scores"]
    np.testing.assert_allclose([s["probability"] for s in served], offline, rtol=0, atol=1e-6)
    assert "/v1/score/batch" in httpx.get(f"{deployed.url}/openapi.json").json()["paths"]
    assert "fraudpipe_serve_batch_size_bucket" in httpx.get(f"{deployed.url}/metrics").text
    assert httpx.post(f"{deployed.url}/v1/score", json=score_body(rows.iloc[0], amount=-1)).status_code == 422


def test_hot_swap_and_rollback_under_load_fail_no_request(deployed: Deployment) -> None:
    mlflow = deployed.served.resources["mlflow"]
    mlflow.activate()
    client = mlflow.client()
    before = registry.alias_version(client, mlflow.model_name, registry.CHAMPION)
    newer = register_variant(deployed.served, deployed.training_set)
    bodies = [score_body(r) for _, r in deployed.training_set.tail(300).iterrows()]
    stop = threading.Event()
    answers = Answers()

    async def load() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            i = 0
            while not stop.is_set():
                await asyncio.gather(
                    *(
                        _send(http, f"{deployed.url}/v1/score", bodies[(i + k) % len(bodies)], answers)
                        for k in range(8)
                    )
                )
                i += 8

    loader = threading.Thread(target=asyncio.run, args=(load(),))
    loader.start()
    try:
        time.sleep(1)
        registry.promote(client, mlflow.model_name, newer, "test: hot swap")
        assert deployed.watcher.sync()
        _wait_for(deployed, lambda a: a["model"]["version"] == newer, bodies[0])
        time.sleep(1)
        registry.rollback(client, mlflow.model_name)
        assert deployed.watcher.sync()
        _wait_for(deployed, lambda a: a["model"]["version"] == before, bodies[0])
        time.sleep(1)
    finally:
        stop.set()
        loader.join()
    versions = [a["model"]["version"] for a in answers.bodies if a]
    assert set(answers.statuses) == {200}, f"failed answers: {sorted(set(answers.statuses))}"
    assert len(answers.statuses) > 100
    # Old, then new, then old again: each swap took effect while requests kept flowing.
    changes = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
    assert changes[0] == before and newer in changes and changes[-1] == before, changes
    print(f"hot swap under load: {len(answers.statuses)} requests, all 200, versions {changes}")


def test_ab_split_is_sticky_and_within_three_points_and_shadow_logs_the_challenger(
    deployed: Deployment,
) -> None:
    mlflow = deployed.served.resources["mlflow"]
    champion = registry.alias_version(mlflow.client(), mlflow.model_name, registry.CHAMPION)
    challenger = register_variant(deployed.served, deployed.training_set)
    applied = deployed.watcher.applied
    assert applied is not None
    share = 0.3
    deploy.apply(
        deploy.with_user_config(
            applied, challenger_version=challenger, rollout={"mode": "ab", "challenger_share": share}
        )
    )
    template = deployed.training_set.iloc[-1]
    probe = score_body(template, customer_id=10**9)
    _wait_for(
        deployed, lambda a: a["model"]["version"] in (champion, challenger) and _ab_live(deployed), probe
    )

    bodies = [score_body(template, customer_id=10**9 + i, transaction_id=10**9 + i) for i in range(5_000)]
    answers = _closed_loop(f"{deployed.url}/v1/score", bodies, concurrency=32)
    assert set(answers.statuses) == {200}
    routes = np.array([a["route"] == "challenger" for a in answers.bodies if a])
    assert abs(routes.mean() - share) <= 0.03, routes.mean()
    assert all(
        (a["route"] == "challenger") == (a["model"]["version"] == challenger) for a in answers.bodies if a
    )
    again = _closed_loop(f"{deployed.url}/v1/score", bodies[:500], concurrency=32)
    first_routes = {a["transaction_id"]: a["route"] for a in answers.bodies if a}
    assert all(first_routes[a["transaction_id"]] == a["route"] for a in again.bodies if a), (
        "a customer changed route"
    )
    print(f"A/B: {routes.mean():.3f} of 5,000 requests to the challenger (configured {share})")

    deploy.apply(deploy.with_user_config(applied, challenger_version=challenger, rollout={"mode": "shadow"}))
    _wait_for(deployed, lambda a: not _ab_live(deployed), probe)
    shadowed = _closed_loop(f"{deployed.url}/v1/score", bodies[:200], concurrency=16)
    assert {a["route"] for a in shadowed.bodies if a} == {"champion"}
    assert {a["model"]["version"] for a in shadowed.bodies if a} == {champion}
    wanted = {a["request_id"] for a in shadowed.bodies if a}
    records = _predictions(deployed, wanted)
    assert {r["shadow"]["model_version"] for r in records} == {challenger}
    assert all(0.0 <= r["shadow"]["probability"] <= 1.0 for r in records)
    deploy.apply(applied)


def _ab_live(deployed: Deployment) -> bool:
    """Whether the A/B config reached the replica: some of 200 fresh customers go to the challenger."""
    template = deployed.training_set.iloc[-1]
    bodies = [score_body(template, customer_id=2 * 10**9 + i) for i in range(200)]
    scores = httpx.post(f"{deployed.url}/v1/score/batch", json={"transactions": bodies}, timeout=30).json()
    return any(s["route"] == "challenger" for s in scores["scores"])


def _predictions(deployed: Deployment, request_ids: set[str]) -> list[dict[str, Any]]:
    stream = deployed.served.resources["stream"]
    consumer = KafkaBus(deployed.kafka_bootstrap).consumer(
        stream.topics().predictions, "shadow-reader", "reader"
    )
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    try:
        while set(found) != request_ids and time.monotonic() < deadline:
            for message in consumer.poll(1_000, 1.0):
                record = json.loads(message.value)
                if record["request_id"] in request_ids:
                    found[record["request_id"]] = record
    finally:
        consumer.close()
    assert set(found) == request_ids, (
        f"{len(request_ids - set(found))} answers missing from the predictions topic"
    )
    return list(found.values())


def test_overload_is_refused_with_503_never_other_errors(deployed: Deployment, tmp_path: Path) -> None:
    applied = deployed.watcher.applied
    assert applied is not None
    tight = deploy.with_user_config(applied)
    deployment = next(d for d in deploy.application(tight)["deployments"] if d["name"] == deploy.DEPLOYMENT)
    deployment.update(max_ongoing_requests=8, max_queued_requests=16)
    deploy.apply(tight)
    rows = deployed.training_set.tail(2_000)
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text("".join(json.dumps(score_body(r)) + "\n" for _, r in rows.iterrows()))
    port = int(deployed.url.rsplit(":", 1)[1])

    # Saturation with fewer clients than the deployment admits (8 running + 16 queued): no 503 yet.
    saturation = run_in_process(
        LoadSpec(port, "/v1/score", str(bodies), "closed", connections=16, duration_s=4)
    )
    assert not saturation.errors, saturation.errors
    rate = 2 * saturation.requests_per_s
    overload = run_in_process(
        LoadSpec(
            port, "/v1/score", str(bodies), "open", connections=256, duration_s=5, rate=rate, timeout_s=10
        )
    )
    print(
        f"saturation {saturation.requests_per_s:.0f} req/s (errors {saturation.errors}); "
        f"at {rate:.0f} req/s: {overload.ok} ok, errors {overload.errors}, "
        f"accepted p99 {overload.ok_p99_ms:.0f} ms"
    )
    assert overload.ok > 0 and overload.errors.get("http 503", 0) > 0, "no overload happened"
    # Refused at once or served; a request waits at most behind max_ongoing + max_queued
    # others, never until the timeout, and nothing else fails.
    assert set(overload.errors) <= {"http 503", "http 408"}, overload.errors
    assert overload.ok_p99_ms < overload.spec.timeout_s * 1e3
    deploy.apply(applied)
