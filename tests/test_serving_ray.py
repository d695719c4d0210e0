"""End to end on a real local Ray: deploy, score, pinned versions, hot swap, rollback, A/B, shadow, overload.

One Ray instance serves the whole module (starting one costs about 40 s
here). Every deployment goes through Serve's REST API with the config
`serving.deploy.serve_config` renders, as the `deployment` asset applies it.
The replicas read the same settings as this process (from the environment
Ray's processes inherit): the registry and online store are a copy of the
session's pipeline output, and the prediction log goes to the session's mock
Kafka cluster through the local broker file.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from ray import serve

from assets.serving import deploy as deployment_asset_step
from bench.loadgen import LoadSpec, run_in_process
from feature_repo.windows import MODEL_FEATURES
from modeling import registry
from serving import deploy
from settings import ServingConfig, Settings
from streaming.bus_kafka import KafkaBus
from tests.conftest import ServedData, register_variant, score_body, serving_on_free_ports

pytestmark = pytest.mark.timeout(900)

ADMITTED = ServingConfig().max_in_flight
"""Concurrent clients that one replica admits at once: more may be refused with 503 (admission
control), which only the overload test is about."""


@dataclass
class Served:
    url: str
    settings: Settings
    api: deploy.ServeApi
    config: dict[str, Any]
    """The config last deployed by the `deployment` step (what the tests restore)."""
    served: ServedData
    kafka_bootstrap: str
    training_set: pd.DataFrame

    def deploy(self, config: dict[str, Any]) -> None:
        self.api.deploy(config)
        self.config = config

    def redeploy_pinned(self) -> registry.Deployment:
        """What the `deployment` asset does: pin the aliases' versions, apply them through Serve's API."""
        pinned, how = deployment_asset_step(self.settings, self.served.resources["mlflow"])
        assert how.startswith("applied"), how
        self.config = deploy.serve_config(self.settings, pinned)
        return pinned


def with_deployment(config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A copy of `config` with the scoring deployment's options (or, nested, user_config) changed."""
    changed = json.loads(json.dumps(config))
    deployment = changed["applications"][0]["deployments"][0]
    user_config = fields.pop("user_config", {})
    deployment.update(fields)
    deployment["user_config"] = {**deployment["user_config"], **user_config}
    return changed


@pytest.fixture(scope="module")
def deployed(served_data: ServedData, kafka_bootstrap: str) -> Iterator[Served]:
    settings = serving_on_free_ports(served_data, kafka_bootstrap)
    with pytest.MonkeyPatch.context() as env:
        for name, value in settings.to_env().items():  # Ray's processes, hence the replicas, inherit them
            env.setenv(name, value)
        deploy.start_local(settings, num_cpus=2)
        api = deploy.ServeApi(settings)
        try:
            served = Served(
                settings.serving.url,
                settings,
                api,
                {},
                served_data,
                kafka_bootstrap,
                served_data.resources["lake"].read_table("training_set"),
            )
            models = served_data.resources["mlflow"]
            models.activate()
            # What `make serve` starts with: the versions the pipeline's deployment recorded.
            served.deploy(
                deploy.serve_config(
                    settings, registry.recorded_deployment(models.client(), models.model_name)
                )
            )
            yield served
        finally:
            api.close()
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


def _wait_for(deployed: Served, done: Callable[[dict[str, Any]], bool], body: dict[str, Any]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = httpx.post(f"{deployed.url}/v1/score", json=body, timeout=30)
        if response.status_code == 200 and done(response.json()):
            return
        time.sleep(0.2)
    raise AssertionError("the deployment never reached the expected state")


def test_deployed_app_scores_one_and_many_as_offline_and_publishes_its_contract(deployed: Served) -> None:
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
    pinned = deploy.pinned(deployed.config)
    assert pinned is not None
    version = pinned.champion
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
    # In Ray, /metrics points to Ray's per-node endpoint (tests/test_serving_metrics.py reads it).
    assert httpx.get(f"{deployed.url}/metrics").status_code == 404
    assert httpx.post(f"{deployed.url}/v1/score", json=score_body(rows.iloc[0], amount=-1)).status_code == 422


def test_hot_swap_and_rollback_under_load_fail_no_request(deployed: Served) -> None:
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
        assert deployed.redeploy_pinned().champion == newer
        _wait_for(deployed, lambda a: a["model"]["version"] == newer, bodies[0])
        time.sleep(1)
        registry.rollback(client, mlflow.model_name)
        assert deployed.redeploy_pinned().champion == before
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


def test_a_replica_started_after_a_promotion_serves_the_pinned_version(deployed: Served) -> None:
    """A promotion alone changes nothing served; a replica added later (scaling, a crash) starts with
    the pinned versions, not the alias; the `deployment` step moves every replica, the new one too."""
    models = deployed.served.resources["mlflow"]
    models.activate()
    client = models.client()
    pinned = deploy.pinned(deployed.config)
    assert pinned is not None
    newer = register_variant(deployed.served, deployed.training_set)
    registry.promote(client, models.model_name, newer, "test: promoted, not deployed")
    bodies = [score_body(r) for _, r in deployed.training_set.tail(400).iterrows()]
    try:
        deployed.deploy(with_deployment(deployed.config, num_replicas=2))
        app = deployed.api.status()
        assert app is not None
        replicas = app["deployments"][deploy.DEPLOYMENT]["replicas"]
        assert [r["state"] for r in replicas] == ["RUNNING", "RUNNING"], replicas
        answers = _closed_loop(f"{deployed.url}/v1/score", bodies, concurrency=ADMITTED)
        assert set(answers.statuses) == {200}
        assert {a["model"]["version"] for a in answers.bodies if a} == {pinned.champion}

        assert deployed.redeploy_pinned().champion == newer
        # The redeploy pins the new version and keeps the deployment's options: two replicas again.
        deployed.deploy(with_deployment(deployed.config, num_replicas=2))
        answers = _closed_loop(f"{deployed.url}/v1/score", bodies, concurrency=ADMITTED)
        assert set(answers.statuses) == {200}
        assert {a["model"]["version"] for a in answers.bodies if a} == {newer}
    finally:
        registry.rollback(client, models.model_name)
        deployed.redeploy_pinned()


def test_ab_split_is_sticky_and_within_three_points_and_shadow_logs_the_challenger(
    deployed: Served,
) -> None:
    mlflow = deployed.served.resources["mlflow"]
    champion = registry.alias_version(mlflow.client(), mlflow.model_name, registry.CHAMPION)
    challenger = register_variant(deployed.served, deployed.training_set)
    applied = deployed.config
    share = 0.3
    deployed.deploy(
        with_deployment(
            applied,
            user_config={
                "challenger_version": challenger,
                "rollout": {"mode": "ab", "challenger_share": share},
            },
        )
    )
    template = deployed.training_set.iloc[-1]
    probe = score_body(template, customer_id=10**9)
    _wait_for(
        deployed, lambda a: a["model"]["version"] in (champion, challenger) and _ab_live(deployed), probe
    )

    bodies = [score_body(template, customer_id=10**9 + i, transaction_id=10**9 + i) for i in range(5_000)]
    answers = _closed_loop(f"{deployed.url}/v1/score", bodies, concurrency=ADMITTED)
    assert set(answers.statuses) == {200}
    routes = np.array([a["route"] == "challenger" for a in answers.bodies if a])
    assert abs(routes.mean() - share) <= 0.03, routes.mean()
    assert all(
        (a["route"] == "challenger") == (a["model"]["version"] == challenger) for a in answers.bodies if a
    )
    again = _closed_loop(f"{deployed.url}/v1/score", bodies[:500], concurrency=ADMITTED)
    first_routes = {a["transaction_id"]: a["route"] for a in answers.bodies if a}
    assert all(first_routes[a["transaction_id"]] == a["route"] for a in again.bodies if a), (
        "a customer changed route"
    )
    print(f"A/B: {routes.mean():.3f} of 5,000 requests to the challenger (configured {share})")

    deployed.deploy(
        with_deployment(
            applied, user_config={"challenger_version": challenger, "rollout": {"mode": "shadow"}}
        )
    )
    _wait_for(deployed, lambda a: not _ab_live(deployed), probe)
    shadowed = _closed_loop(f"{deployed.url}/v1/score", bodies[:200], concurrency=ADMITTED)
    assert {a["route"] for a in shadowed.bodies if a} == {"champion"}
    assert {a["model"]["version"] for a in shadowed.bodies if a} == {champion}
    wanted = {a["request_id"] for a in shadowed.bodies if a}
    records = _predictions(deployed, wanted)
    assert {r["shadow"]["model_version"] for r in records} == {challenger}
    assert all(0.0 <= r["shadow"]["probability"] <= 1.0 for r in records)
    deployed.deploy(applied)


def _ab_live(deployed: Served) -> bool:
    """Whether the A/B config reached the replica: some of 200 fresh customers go to the challenger."""
    template = deployed.training_set.iloc[-1]
    bodies = [score_body(template, customer_id=2 * 10**9 + i) for i in range(200)]
    scores = httpx.post(f"{deployed.url}/v1/score/batch", json={"transactions": bodies}, timeout=30).json()
    return any(s["route"] == "challenger" for s in scores["scores"])


def _predictions(deployed: Served, request_ids: set[str]) -> list[dict[str, Any]]:
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


def test_overload_is_refused_with_503_never_other_errors(deployed: Served, tmp_path: Path) -> None:
    applied = deployed.config
    admitted = 8
    deployed.deploy(with_deployment(applied, user_config={"max_in_flight": admitted, "retry_after_s": 2}))
    rows = deployed.training_set.tail(2_000)
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text("".join(json.dumps(score_body(r)) + "\n" for _, r in rows.iterrows()))
    port = int(deployed.url.rsplit(":", 1)[1])

    # Saturation with as many clients as the replica admits: no 503 yet.
    saturation = run_in_process(
        LoadSpec(port, "/v1/score", str(bodies), "closed", connections=admitted, duration_s=4)
    )
    assert not saturation.errors, saturation.errors
    rate = 2 * saturation.requests_per_s
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(
            run_in_process,
            LoadSpec(
                port, "/v1/score", str(bodies), "open", connections=256, duration_s=5, rate=rate, timeout_s=10
            ),
        )
        refusals = []
        while not loading.done() and len(refusals) < 5:
            answer = httpx.post(f"{deployed.url}/v1/score", json=score_body(rows.iloc[0]), timeout=10)
            if answer.status_code != 200:
                refusals.append((answer.status_code, answer.headers.get("Retry-After")))
        overload = loading.result()
    print(
        f"saturation {saturation.requests_per_s:.0f} req/s (errors {saturation.errors}); "
        f"at {rate:.0f} req/s: {overload.ok} ok, errors {overload.errors}, "
        f"accepted p99 {overload.ok_p99_ms:.0f} ms"
    )
    assert overload.ok > 0 and overload.errors.get("http 503", 0) > 0, "no overload happened"
    # Refused at once or served, never timed out, and nothing else fails.
    assert set(overload.errors) == {"http 503"}, overload.errors
    # Refused with the time to come back (the runtime config's retry_after_s), so clients back off.
    assert refusals and all(refusal == (503, "2") for refusal in refusals), refusals
    assert overload.ok_p99_ms < overload.spec.timeout_s * 1e3
    deployed.deploy(applied)
