"""The HTTP push adapter, appending to librdkafka's mock Kafka cluster and this machine's real Redis.

What a 202 accepted is read back off the bus by a consumer and decoded, and
what a 422 refused is shown not to be there: the adapter's promise is about the
bus, not about its own answers.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from streaming.bus import TOPICS, Consumer, EventBus, Message, Producer, Topics
from streaming.bus_kafka import KafkaBus, KafkaProducer
from streaming.bus_redis import RedisStreamBus
from streaming.events import FraudReport, Transaction, decode_report, decode_transaction
from streaming.http_push import create_app
from tests.conftest import REDIS_URL

NOW = datetime.now(UTC).replace(microsecond=0)


def transaction(tx_id: int, amount: float = 12.5) -> dict[str, object]:
    return {
        "TRANSACTION_ID": tx_id,
        "TX_DATETIME": (NOW - timedelta(minutes=tx_id)).isoformat(),
        "CUSTOMER_ID": 100 + tx_id,
        "TERMINAL_ID": 200 + tx_id,
        "TX_AMOUNT": amount,
    }


@pytest.fixture
def bootstrap(kafka_bootstrap: str) -> str:
    """The session's mock Kafka cluster (tests/conftest.py)."""
    return kafka_bootstrap


@pytest.fixture
def topics() -> Topics:
    return TOPICS.prefixed(f"h{uuid.uuid4().hex[:8]}_")


@pytest.fixture
def kafka_bus(bootstrap: str, topics: Topics) -> KafkaBus:
    bus = KafkaBus(bootstrap)
    bus.ensure_topics(topics.names())
    return bus


@pytest.fixture
def redis_bus(namespace: str) -> RedisStreamBus:
    return RedisStreamBus(REDIS_URL, prefix=namespace)


@pytest.fixture(params=["kafka_bus", pytest.param("redis_bus", marks=pytest.mark.integration)])
def bus(request: pytest.FixtureRequest) -> EventBus:
    bus: EventBus = request.getfixturevalue(request.param)
    return bus


@pytest.fixture
def client(bus: EventBus, topics: Topics) -> Iterator[TestClient]:
    with TestClient(create_app(bus, topics)) as client:
        yield client


def read_back(bus: EventBus, topic: str, expected: int, quiet_s: float = 0.5) -> list[Message]:
    """Poll until `expected` messages came (or 10 s passed), then once more to catch any extra one."""
    consumer: Consumer = bus.consumer(topic, f"g{uuid.uuid4().hex[:8]}", "reader")
    got: list[Message] = []
    end = time.monotonic() + 10
    while len(got) < expected and time.monotonic() < end:
        got += consumer.poll(500, 0.2)
    got += consumer.poll(500, quiet_s)
    consumer.close()
    return got


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def events_counted(samples: Samples, outcome: str, topic: str) -> float:
    return samples[(f"http_push_events_{outcome}_total", (("topic", topic),))]


def requests_answered(before: Samples, after: Samples, status: str) -> float:
    """Answers with `status` between two scrapes.

    A difference, because conftest imports feast, which switches prometheus_client
    to multiprocess mode: then same-named series share one value across every
    registry of the process, and earlier tests' apps answered on the same paths.
    (The app creates these series at start, so the first scrape already shows the
    shared value.) The event counters need none: their topic label is unique per test.
    """
    key = ("http_push_requests_total", (("path", "/v1/transactions"), ("status", status)))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_accepted_events_are_on_the_bus_as_sent(client: TestClient, bus: EventBus, topics: Topics) -> None:
    batch = [transaction(i) for i in range(1, 4)]
    batch[1]["COUNTRY"] = "FR"  # an extra field is ignored, as on the stream
    assert client.post("/v1/transactions", json=batch).json() == {"accepted": 3}
    response = client.post("/v1/transactions", json=transaction(4, amount=7))
    assert (response.status_code, response.json()) == (202, {"accepted": 1})
    report = {"TRANSACTION_ID": 2, "REPORT_DATETIME": NOW.isoformat()}
    assert client.post("/v1/fraud_reports", json=report).status_code == 202

    with ThreadPoolExecutor(2) as pool:  # each Kafka group join takes the mock broker seconds
        transactions = pool.submit(read_back, bus, topics.transactions, 4)
        reports = pool.submit(read_back, bus, topics.fraud_reports, 1)
    landed = sorted(transactions.result(), key=lambda message: message.key or b"")
    assert [message.key for message in landed] == [b"1", b"2", b"3", b"4"]
    assert [decode_transaction(message.value, datetime.now(UTC)) for message in landed] == [
        Transaction(i, NOW - timedelta(minutes=i), 100 + i, 200 + i, 12.5 if i < 4 else 7.0)
        for i in range(1, 5)
    ]
    assert [(m.key, decode_report(m.value, datetime.now(UTC))) for m in reports.result()] == [
        (b"2", FraudReport(2, NOW))
    ]


def test_one_bad_event_refuses_the_batch_and_names_each(
    client: TestClient, bus: EventBus, topics: Topics
) -> None:
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    bad = [
        {k: v for k, v in transaction(2).items() if k != "CUSTOMER_ID"},
        {**transaction(3), "TERMINAL_ID": "203"},
        {**transaction(4), "TX_AMOUNT": float("nan")},
        {**transaction(5), "TX_AMOUNT": -1.0},
        {**transaction(6), "TX_DATETIME": future},
        "not an event",
    ]
    events = [json.dumps(event) for event in [transaction(1), *bad]]
    events.append('{"TRANSACTION_ID": 8, "TRANSACTION_ID": 9}')
    response = client.post("/v1/transactions", content="[" + ",\n ".join(events) + "]")

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"index": 1, "reason": "CUSTOMER_ID: must not be missing"},
        {"index": 2, "reason": "TERMINAL_ID: must be a non-negative integer"},
        {"index": 3, "reason": "TX_AMOUNT: must be a finite number"},
        {"index": 4, "reason": "TX_AMOUNT: must not be negative"},
        {"index": 5, "reason": "TX_DATETIME: must not be more than 300 s in the future"},
        {"index": 6, "reason": "event must be a JSON object, not string"},
        {"index": 7, "reason": "malformed JSON: duplicate key 'TRANSACTION_ID'"},
    ]
    samples = metric_samples(client)
    assert events_counted(samples, "rejected", topics.transactions) == 7
    assert events_counted(samples, "accepted", topics.transactions) == 0

    # The client fixes the batch and sends it again: only that copy is on the bus.
    fixed = [transaction(i) for i in range(1, 9)]
    assert client.post("/v1/transactions", json=fixed).json() == {"accepted": 8}
    landed = read_back(bus, topics.transactions, 8)
    assert sorted(int(message.key or b"") for message in landed) == list(range(1, 9))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"TRANSACTION_ID": 1,', "malformed JSON: Expecting property name"),
        (b"", "malformed JSON: Expecting value"),
        (b"\xff", "malformed JSON: not UTF-8"),
        (b'[{"TRANSACTION_ID": 1}, {', "malformed JSON in event 1"),
        (b"[{}, ]", "malformed JSON in event 1"),
        (b"[{} {}]", "malformed JSON: expecting ',' or ']' after event 0"),
        (b"[{}] []", "malformed JSON: extra data after the array"),
        (b"[" * 100_000, "malformed JSON"),
    ],
)
def test_malformed_json_is_a_422_not_a_500(
    kafka_bus: KafkaBus, topics: Topics, body: bytes, reason: str
) -> None:
    with TestClient(create_app(kafka_bus, topics)) as client:
        response = client.post("/v1/fraud_reports", content=body)
    assert response.status_code == 422
    found = [error["reason"] for error in response.json()["errors"]] or [response.json()["detail"]]
    assert len(found) == 1 and found[0].startswith(reason), found


def test_empty_batch_is_accepted_with_nothing_to_append(kafka_bus: KafkaBus, topics: Topics) -> None:
    with TestClient(create_app(kafka_bus, topics)) as client:
        assert client.post("/v1/transactions", content=b" [ ] ").json() == {"accepted": 0}


def test_oversized_bodies_and_batches_are_413(kafka_bus: KafkaBus, topics: Topics) -> None:
    app = create_app(kafka_bus, topics, max_body_bytes=1_000, max_events=3)
    body = json.dumps([transaction(i) for i in range(10)]).encode()
    with TestClient(app) as client:
        assert client.post("/v1/transactions", content=body).status_code == 413
        # Chunked: no Content-Length to trust, the bytes read are counted.
        chunked = client.post("/v1/transactions", content=iter([body[:500], body[500:]]))
        assert "content-length" not in chunked.request.headers
        assert chunked.status_code == 413
        too_many = client.post("/v1/transactions", json=[transaction(i) for i in range(4)])
        assert too_many.status_code == 413
        assert "more than 3 events" in too_many.json()["detail"]
        assert client.post("/v1/transactions", json=[transaction(i) for i in range(3)]).status_code == 202


class UnreachableKafka(KafkaBus):
    """A Kafka bus at a closed port whose producer does not log each refused connection attempt."""

    def producer(self) -> KafkaProducer:
        return KafkaProducer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})


@pytest.mark.parametrize(
    "dead_bus",
    [
        UnreachableKafka("127.0.0.1:1"),
        pytest.param(
            RedisStreamBus("redis://127.0.0.1:1/0?socket_connect_timeout=0.5"), marks=pytest.mark.integration
        ),
    ],
    ids=["kafka", "redis"],
)
def test_bus_failure_is_503_with_retry_after(dead_bus: EventBus, topics: Topics) -> None:
    app = create_app(dead_bus, topics, flush_timeout_s=0.5, retry_after_s=3)
    with TestClient(app) as client:
        before = metric_samples(client)
        response = client.post("/v1/transactions", json=[transaction(1), transaction(2)])
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "3"
        assert "resend" in response.json()["detail"]
        after = metric_samples(client)
    assert requests_answered(before, after, "503") == 1
    assert events_counted(after, "accepted", topics.transactions) == 0


class GatedProducer:
    """A real producer whose flush first waits for the test's signal: to hold a request in flight."""

    def __init__(self, inner: Producer, flushing: threading.Event, release: threading.Event) -> None:
        self._inner = inner
        self._flushing = flushing
        self._release = release

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self._inner.send(topic, value, key)

    def flush(self, timeout_s: float = 30) -> None:
        self._flushing.set()
        assert self._release.wait(10)
        self._inner.flush(timeout_s)


class GatedBus(KafkaBus):
    """The mock cluster, through gated producers."""

    def __init__(self, bootstrap_servers: str) -> None:
        super().__init__(bootstrap_servers)
        self.flushing = threading.Event()
        self.release = threading.Event()

    def producer(self) -> GatedProducer:  # type: ignore[override]
        return GatedProducer(super().producer(), self.flushing, self.release)


def test_requests_beyond_the_bound_are_503_at_once_and_flush_never_blocks_the_loop(
    bootstrap: str, topics: Topics
) -> None:
    bus = GatedBus(bootstrap)
    bus.ensure_topics(topics.names())
    with TestClient(create_app(bus, topics, max_in_flight=1)) as client, ThreadPoolExecutor(1) as pool:
        before = metric_samples(client)
        first = pool.submit(client.post, "/v1/transactions", json=transaction(1))
        assert bus.flushing.wait(10)

        started = time.monotonic()
        refused = client.post("/v1/transactions", json=transaction(2))
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert client.get("/healthz").json() == {"status": "ok"}
        assert time.monotonic() - started < 2

        bus.release.set()
        assert first.result(10).status_code == 202
        # The slot came back with the first batch's flush.
        assert client.post("/v1/transactions", json=transaction(3)).status_code == 202
        after = metric_samples(client)
    assert (requests_answered(before, after, "202"), requests_answered(before, after, "503")) == (2, 1)
    latency = ("http_push_request_seconds_count", (("path", "/v1/transactions"),))
    assert after[latency] - before.get(latency, 0.0) == 3
    assert events_counted(after, "accepted", topics.transactions) == 2
    assert sorted(message.key for message in read_back(bus, topics.transactions, 2)) == [b"1", b"3"]


def test_concurrent_pushes_each_land_once(bus: EventBus, topics: Topics) -> None:
    """Many clients at once through one producer: no batch lost, none doubled, none interleaved away."""
    app = create_app(bus, topics, max_in_flight=64)
    with TestClient(app) as client, ThreadPoolExecutor(16) as pool:
        batches = [[transaction(b * 25 + i) for i in range(25)] for b in range(32)]
        answers = list(pool.map(lambda batch: client.post("/v1/transactions", json=batch), batches))
        samples = metric_samples(client)
    assert [answer.json() for answer in answers] == [{"accepted": 25}] * 32
    assert events_counted(samples, "accepted", topics.transactions) == 800
    landed = read_back(bus, topics.transactions, 800)
    assert sorted(int(message.key or b"") for message in landed) == list(range(800))
