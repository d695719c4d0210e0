"""The scoring service and its HTTP contract, in process: the same code the Ray replicas run.

Real components throughout: the session's registered XGBoost model from
MLflow, the SQLite online event buffers filled with every simulated event,
and a mock Kafka cluster for the prediction log. Ray itself is exercised in
`test_serving_ray.py`.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from feature_repo.online import TRANSACTION_COLUMNS, SqliteEventBuffers
from feature_repo.windows import MODEL_FEATURES
from modeling import registry
from serving.api import MAX_BODY_BYTES, build_api
from serving.metrics import ServingMetrics
from serving.model import ModelStore
from serving.prediction_log import PredictionLog
from serving.routing import Router, customer_buckets
from serving.schemas import Score, Transaction
from serving.service import NotReadyError, ScoringService
from settings import Rollout, ServingConfig
from streaming.bus_kafka import KafkaBus
from tests.conftest import ServedData, register_variant, score_body


def _deployed_champion(served: ServedData) -> str:
    """The version the session's pipeline deployed (its `deployment` asset's record)."""
    models = served.resources["mlflow"]
    models.activate()
    deployment = registry.recorded_deployment(models.client(), models.model_name)
    assert deployment is not None, "the pipeline deployed no model"
    return deployment.champion


def _pinned(served: ServedData, **config: Any) -> ServingConfig:
    """A config pinning the deployed champion, as the `deployment` asset pins it into replicas."""
    return ServingConfig(**{"champion_version": _deployed_champion(served), **config})


def _service(served: ServedData, **config: Any) -> ScoringService:
    resources = served.resources
    service = ScoringService(resources["stream"].online(), ModelStore(resources["mlflow"]), ServingMetrics())
    service.configure(_pinned(served, **config))
    return service


@pytest.fixture(scope="module")
def service(served_data: ServedData) -> Iterator[ScoringService]:
    service = _service(served_data)
    yield service
    service.close()


@pytest.fixture(scope="module")
def client(service: ScoringService) -> TestClient:
    return TestClient(build_api(service), raise_server_exceptions=False)


COUNTERS = {
    "cache": "ray_fraudpipe_serve_cache_lookups_total",
    "swaps": "ray_fraudpipe_serve_model_swaps_total",
    "scores": "ray_fraudpipe_serve_scores_total",
    "prediction_log": "ray_fraudpipe_serve_prediction_log_total",
    "errors": "ray_fraudpipe_serve_errors_total",
}


def _count(metrics: ServingMetrics, counter: str, **labels: str) -> float:
    """A counter's value. Feast, imported by the session, turns prometheus_client's multiprocess
    mode on, where same-named series of every registry in the process add up: tests compare
    deltas, reading each series once it exists (created, it starts from the shared value)."""
    if labels:
        getattr(metrics, counter).labels(**labels)
    return metrics.registry.get_sample_value(COUNTERS[counter], labels) or 0.0


@pytest.fixture(scope="module")
def training_set(served_data: ServedData) -> pd.DataFrame:
    return served_data.resources["lake"].read_table("training_set")


def test_served_probabilities_equal_the_offline_predictions_on_point_in_time_features(
    client: TestClient, served_data: ServedData, training_set: pd.DataFrame
) -> None:
    rows = training_set.sample(1_000, random_state=0)
    mlflow = served_data.resources["mlflow"]
    mlflow.activate()
    champion = registry.alias_version(mlflow.client(), mlflow.model_name, registry.CHAMPION)
    assert champion is not None
    offline = registry.load_model(mlflow.model_name, champion).predict_proba(rows[list(MODEL_FEATURES)])[:, 1]

    response = client.post(
        "/v1/score/batch", json={"transactions": [score_body(r) for _, r in rows.iterrows()]}
    )
    assert response.status_code == 200, response.text
    served = [s["probability"] for s in response.json()["scores"]]
    np.testing.assert_allclose(served, offline, rtol=0, atol=1e-6)
    assert [s["transaction_id"] for s in response.json()["scores"]] == rows["TRANSACTION_ID"].tolist()

    singles = [
        client.post("/v1/score", json=score_body(r)).json()["probability"]
        for _, r in rows.head(20).iterrows()
    ]
    np.testing.assert_allclose(singles, offline[:20], rtol=0, atol=1e-6)


def test_one_score_names_model_route_decision_and_latency(
    client: TestClient, training_set: pd.DataFrame, service: ScoringService
) -> None:
    row = training_set.iloc[-1]
    answer = client.post("/v1/score", json=score_body(row)).json()
    assert answer["transaction_id"] == row["TRANSACTION_ID"]
    assert answer["model"] == {"name": "fraud_model", "version": _champion(service)}
    assert answer["route"] == "champion"
    assert answer["fraud"] == (answer["probability"] >= answer["threshold"] == 0.5)
    assert answer["cold_start"] == {"customer": False, "terminal": False}
    latency = answer["latency"]
    assert latency["features_ms"] > 0 and latency["model_ms"] > 0
    assert latency["total_ms"] >= latency["features_ms"] + latency["model_ms"]


def _champion(service: ScoringService) -> str:
    serving = service._serving
    assert serving is not None
    return serving.champion.version


def test_unknown_customer_and_terminal_are_scored_on_cold_start_defaults(
    client: TestClient, training_set: pd.DataFrame
) -> None:
    row = training_set.iloc[-1]
    unknown = client.post(
        "/v1/score", json=score_body(row, customer_id=10**12, terminal_id=10**12, transaction_id=10**12)
    )
    assert unknown.status_code == 200
    assert unknown.json()["cold_start"] == {"customer": True, "terminal": True}
    assert 0.0 <= unknown.json()["probability"] <= 1.0


BAD_INPUTS = [
    ({"amount": -1.0}, "amount"),
    ({"amount": "NaN"}, "amount"),
    ({"amount": "Infinity"}, "amount"),
    ({"customer_id": -3}, "customer_id"),
    ({"terminal_id": "seven"}, "terminal_id"),
    ({"transaction_id": 2**64}, "transaction_id"),
    ({"timestamp": "2018-08-01T10:00:00"}, "timestamp"),
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("override", "field"), BAD_INPUTS)
def test_bad_input_is_422_naming_the_field(
    client: TestClient, training_set: pd.DataFrame, override: dict[str, Any], field: str
) -> None:
    body = score_body(training_set.iloc[0], **override)
    # NaN and Infinity as JSON literals, which Python's parser accepts.
    raw = json.dumps(body).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
    response = client.post("/v1/score", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert any(error["loc"][-1] == field for error in response.json()["detail"]), response.json()


CONTRACT_REFUSALS = [
    ({"transaction_id": True}, "transaction_id"),
    ({"customer_id": "42"}, "customer_id"),
    ({"terminal_id": 42.0}, "terminal_id"),
    ({"amount": "57.2"}, "amount"),
    ({"amount": -0.0}, "amount"),
    ({"timestamp": 1522576800}, "timestamp"),
    ({"timestamp": "2100-01-01T00:00:00+00:00"}, "timestamp"),
    ({"timestamp": "2263-01-01T00:00:00+00:00"}, "timestamp"),
    ({"timestamp": "1677-06-01T00:00:00+00:00"}, "timestamp"),
]
"""Values the stream refuses (tests/test_event_contract.py has the whole table): with a champion
loaded, each is refused by validation, naming its field, before any feature read could answer
a stale read (2263) or score a wrapped-around time (1677)."""


@pytest.mark.parametrize(("override", "field"), CONTRACT_REFUSALS)
def test_values_the_stream_refuses_are_422_before_scoring(
    client: TestClient, training_set: pd.DataFrame, override: dict[str, Any], field: str
) -> None:
    good = score_body(training_set.iloc[0])
    response = client.post("/v1/score", json={**good, **override})
    assert response.status_code == 422, response.text
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["body", field], "event_contract")]
    batch = client.post("/v1/score/batch", json={"transactions": [good, {**good, **override}, good]})
    assert batch.status_code == 422, batch.text
    assert [e["loc"] for e in batch.json()["detail"]] == [["body", "transactions", 1, field]]


def test_missing_field_and_bad_batches_are_422(client: TestClient, training_set: pd.DataFrame) -> None:
    body = score_body(training_set.iloc[0])
    del body["customer_id"]
    assert client.post("/v1/score", json=body).json()["detail"][0]["loc"] == ["body", "customer_id"]
    assert client.post("/v1/score/batch", json={"transactions": []}).status_code == 422
    assert (
        client.post(
            "/v1/score", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )


def test_batch_over_the_configured_limit_is_422(served_data: ServedData, training_set: pd.DataFrame) -> None:
    service = _service(served_data, max_transactions_per_call=5)
    client = TestClient(build_api(service))
    bodies = [score_body(r) for _, r in training_set.head(6).iterrows()]
    assert client.post("/v1/score/batch", json={"transactions": bodies[:5]}).status_code == 200
    refused = client.post("/v1/score/batch", json={"transactions": bodies})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "transactions"]
    service.close()


def test_a_body_over_one_mib_is_413_declared_or_chunked(client: TestClient) -> None:
    big = b" " * (MAX_BODY_BYTES + 1)
    assert (
        client.post("/v1/score", content=big, headers={"content-type": "application/json"}).status_code == 413
    )

    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 65_536 + 2):
            yield b" " * 65_536

    assert client.post("/v1/score/batch", content=chunks()).status_code == 413


def _trimmed_store(events: pd.DataFrame, tmp_path: Path) -> SqliteEventBuffers:
    """Every simulated event applied, then trimmed: the dataset's first days are before the floor."""
    online = SqliteEventBuffers(tmp_path / "online.db")
    online.add_transactions(events[list(TRANSACTION_COLUMNS)])
    online.trim()
    return online


def test_a_read_before_the_online_floor_is_422_on_the_timestamp(
    served_data: ServedData, tmp_path: Path
) -> None:
    events = served_data.data.events()
    service = ScoringService(
        _trimmed_store(events, tmp_path), ModelStore(served_data.resources["mlflow"]), ServingMetrics()
    )
    service.configure(_pinned(served_data))
    client = TestClient(build_api(service))
    old, recent = events.iloc[0], events.iloc[-1]
    refused = client.post("/v1/score", json=score_body(old))
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "timestamp"]
    assert client.post("/v1/score", json=score_body(recent)).status_code == 200

    batch = client.post("/v1/score/batch", json={"transactions": [score_body(recent), score_body(old)] * 2})
    assert batch.status_code == 422
    assert [e["loc"] for e in batch.json()["detail"]] == [
        ["body", "transactions", 1, "timestamp"],
        ["body", "transactions", 3, "timestamp"],
    ]
    service.close()


def test_requests_beyond_max_in_flight_are_refused_at_once_with_retry_after(served_data: ServedData) -> None:
    """Admission control: two scores held in the replica, a third is refused before it is read."""
    service = _service(served_data, max_in_flight=2, retry_after_s=3)
    overloaded = _count(service.metrics, "errors", kind="overloaded")
    release, held = asyncio.Event(), asyncio.Event()
    waiting = 0

    async def blocked(transaction: Transaction) -> Score | Exception:
        nonlocal waiting
        waiting += 1
        if waiting == 2:
            held.set()
        await release.wait()
        return (await asyncio.to_thread(service.score_each, [transaction]))[0]

    async def run() -> list[httpx.Response]:
        api = build_api(service, blocked)
        transport = httpx.ASGITransport(app=api)
        body = score_body(served_data.data.events().iloc[-1])
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            first = [asyncio.create_task(client.post("/v1/score", json=body)) for _ in range(2)]
            await held.wait()
            try:  # refused at once: without admission control it would wait for the release
                refused = await asyncio.wait_for(client.post("/v1/score", json=body), timeout=10)
            finally:
                release.set()
            return [refused, *await asyncio.gather(*first)]

    refused, *served = asyncio.run(run())
    assert (refused.status_code, refused.headers["Retry-After"]) == (503, "3")
    assert [answer.status_code for answer in served] == [200, 200]
    assert _count(service.metrics, "errors", kind="overloaded") == overloaded + 1
    service.close()


def test_a_stale_request_fails_alone_without_re_reading_its_batch_one_by_one(
    served_data: ServedData, tmp_path: Path
) -> None:
    """A dynamic batch with stale requests costs two feature reads, whatever its size."""
    events = served_data.data.events()
    online = _trimmed_store(events, tmp_path)
    reads = []
    read = online.features
    online.features = lambda requests: reads.append(len(requests)) or read(requests)  # type: ignore[method-assign]
    service = ScoringService(online, ModelStore(served_data.resources["mlflow"]), ServingMetrics())
    service.configure(_pinned(served_data))
    recent = [Transaction.model_validate(score_body(events.iloc[-1 - i])) for i in range(30)]
    stale = Transaction.model_validate(score_body(events.iloc[0]))
    batch = [*recent[:10], stale, *recent[10:20], stale, *recent[20:]]
    results = service.score_each(batch)
    assert [i for i, r in enumerate(results) if isinstance(r, Exception)] == [10, 21]
    assert all("before the online store's floor" in str(results[i]) for i in (10, 21))
    assert [r.transaction_id for r in results if not isinstance(r, Exception)] == [
        t.transaction_id for t in recent
    ]
    assert reads == [32, 30]
    service.close()


def test_the_cache_answers_repeats_and_a_swap_empties_it(
    served_data: ServedData, training_set: pd.DataFrame
) -> None:
    service = _service(served_data)
    client = TestClient(build_api(service))
    body = score_body(training_set.iloc[10])
    hits, swaps = (
        _count(service.metrics, "cache", result="hit"),
        _count(service.metrics, "swaps"),
    )
    first, again = client.post("/v1/score", json=body).json(), client.post("/v1/score", json=body).json()
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["probability"] == first["probability"]
    assert _count(service.metrics, "cache", result="hit") == hits + 1

    newer = register_variant(served_data, training_set)
    service.configure(ServingConfig(champion_version=newer))
    swapped = client.post("/v1/score", json=body).json()
    assert swapped["model"]["version"] == newer and not swapped["cached"]
    assert _count(service.metrics, "swaps") == swaps + 1
    service.close()


def test_readiness_needs_a_pinned_champion_and_a_reachable_online_store(served_data: ServedData) -> None:
    resources = served_data.resources
    service = ScoringService(resources["stream"].online(), ModelStore(resources["mlflow"]), ServingMetrics())
    client = TestClient(build_api(service))
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    assert (
        client.post("/v1/score", json={**score_body(served_data.data.events().iloc[-1])}).status_code == 503
    )
    # A config pinning no version loads nothing, even with a champion alias in the registry.
    with pytest.raises(NotReadyError, match="deployment"):
        service.configure(ServingConfig())
    assert client.get("/readyz").status_code == 503
    service.configure(_pinned(served_data))
    assert client.get("/readyz").json()["ready"] is True
    service.close()


def test_metrics_show_latency_batch_sizes_cache_and_errors(
    client: TestClient, training_set: pd.DataFrame
) -> None:
    client.post("/v1/score", json=score_body(training_set.iloc[3]))
    client.post("/v1/score", json=score_body(training_set.iloc[3], amount=-5))
    text = client.get("/metrics").text
    for series in (
        'ray_fraudpipe_serve_request_seconds_bucket{endpoint="/v1/score"',
        "ray_fraudpipe_serve_batch_size_bucket",
        'ray_fraudpipe_serve_cache_lookups_total{result="miss"}',
        'ray_fraudpipe_serve_errors_total{kind="validation"}',
        'ray_fraudpipe_serve_stage_seconds_bucket{le="0.0005",stage="features"}',
    ):
        assert series in text, series


def test_routes_are_sticky_per_customer_and_split_at_the_configured_share() -> None:
    customers = np.arange(5_000)
    buckets = customer_buckets(customers)
    np.testing.assert_array_equal(buckets, customer_buckets(customers.copy()))
    ab = Router(Rollout(mode="ab", challenger_share=0.2), applied_at=0.0)
    share = ab.to_challenger(customers, now=1.0).mean()
    assert abs(share - 0.2) <= 0.03
    assert not Router(Rollout(mode="shadow"), 0.0).to_challenger(customers, 1.0).any()

    canary = Router(
        Rollout(mode="canary", canary_start=0.05, canary_step=0.1, canary_every_s=60, canary_max=0.3), 0.0
    )
    assert [canary.challenger_share(t) for t in (0, 59, 60, 125, 10_000)] == pytest.approx(
        [0.05, 0.05, 0.15, 0.25, 0.3]
    )
    # A growing share only adds customers: nobody flips back to the champion.
    early, late = canary.to_challenger(customers, 0), canary.to_challenger(customers, 125)
    assert (late | ~early).all() and late.sum() > early.sum()


def test_ab_split_and_shadow_scoring_through_the_service(
    served_data: ServedData, training_set: pd.DataFrame
) -> None:
    challenger = register_variant(served_data, training_set)
    service = _service(
        served_data, challenger_version=challenger, rollout=Rollout(mode="ab", challenger_share=0.5)
    )
    client = TestClient(build_api(service))
    bodies = [score_body(r) for _, r in training_set.head(400).iterrows()]
    scores = client.post("/v1/score/batch", json={"transactions": bodies}).json()["scores"]
    routes = {(b["customer_id"], s["route"]) for b, s in zip(bodies, scores, strict=True)}
    assert len(routes) == len({customer for customer, _ in routes}), "a customer saw both routes"
    assert all((s["route"] == "challenger") == (s["model"]["version"] == challenger) for s in scores)
    assert {s["route"] for s in scores} == {"champion", "challenger"}

    service.configure(_pinned(served_data, challenger_version=challenger, rollout=Rollout(mode="shadow")))
    before = _count(service.metrics, "scores", route="shadow", version=challenger)
    shadowed = client.post("/v1/score/batch", json={"transactions": bodies[:50]}).json()["scores"]
    assert {s["route"] for s in shadowed} == {"champion"}
    shadow_scores = _count(service.metrics, "scores", route="shadow", version=challenger)
    assert shadow_scores == before + 50
    service.close()


def test_every_answer_reaches_the_predictions_topic(
    served_data: ServedData, training_set: pd.DataFrame, kafka_bootstrap: str, namespace: str
) -> None:
    bus = KafkaBus(kafka_bootstrap)
    topic = f"{namespace}predictions"
    bus.ensure_topics([topic])
    metrics = ServingMetrics()
    sent = _count(metrics, "prediction_log", outcome="sent")
    log = PredictionLog(bus.producer, topic, metrics)
    resources = served_data.resources
    service = ScoringService(resources["stream"].online(), ModelStore(resources["mlflow"]), metrics, log)
    service.configure(_pinned(served_data))
    client = TestClient(build_api(service))
    bodies = [score_body(r) for _, r in training_set.head(30).iterrows()]
    answers = client.post("/v1/score/batch", json={"transactions": bodies}).json()["scores"]
    answers.append(client.post("/v1/score", json=bodies[0]).json())
    service.close()  # flushes the log
    assert _count(metrics, "prediction_log", outcome="sent") == sent + 31

    consumer = bus.consumer(topic, "prediction-reader", "reader")
    records: list[dict[str, Any]] = []
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    while len(records) < 31 and datetime.now(UTC) < deadline:
        records += [json.loads(m.value) for m in consumer.poll(100, 1.0)]
    consumer.close()
    by_request = {r["request_id"]: r for r in records}
    assert set(by_request) == {a["request_id"] for a in answers}
    for answer in answers:
        record = by_request[answer["request_id"]]
        assert record["probability"] == answer["probability"]
        assert record["model_version"] == answer["model"]["version"] and record["route"] == answer["route"]
        assert list(record["features"]) == list(MODEL_FEATURES)
        assert all(math.isfinite(v) for v in record["features"].values())


def test_an_unreachable_bus_never_fails_an_answer(
    served_data: ServedData, training_set: pd.DataFrame
) -> None:
    def no_bus() -> Any:
        raise ConnectionError("bus down")

    metrics = ServingMetrics()
    dropped = _count(metrics, "prediction_log", outcome="dropped")
    resources = served_data.resources
    log = PredictionLog(no_bus, "predictions", metrics)
    service = ScoringService(resources["stream"].online(), ModelStore(resources["mlflow"]), metrics, log)
    service.configure(_pinned(served_data))
    client = TestClient(build_api(service))
    assert client.post("/v1/score", json=score_body(training_set.iloc[5])).status_code == 200
    service.close()
    assert _count(metrics, "prediction_log", outcome="dropped") == dropped + 1


@pytest.fixture
def api_schema(service: ScoringService) -> Any:
    """The OpenAPI spec the app publishes, fuzzed with inputs that fit it and inputs that break it."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", build_api(service))
    schema.config.generation.update(modes=list(GenerationMode), max_examples=60, deterministic=True)
    return schema


fuzzed = schemathesis.pytest.from_fixture("api_schema")


@fuzzed.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_input_gets_a_server_error(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
