"""Serving's prediction log landed from the bus: what serving sends is what monitoring reads.

Records are made by serving's own code (`_Answered.records()`, sent by
`PredictionLog`), so a change to the record on either side fails here.
"""

from __future__ import annotations

import json
import math
import signal
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from assets.stream import observe_landing
from feature_repo.windows import MODEL_FEATURES
from orchestration.resources import EventSourceResource
from orchestration.sensors import day_fingerprint, stream_landing_sensor
from serving.columns import TransactionColumns
from serving.metrics import ServingMetrics
from serving.prediction_log import PredictionLog, RecordBatch
from serving.schemas import Transaction
from serving.service import ScoredBatch, _Answered
from settings import StreamSettings
from streaming.cli import app
from streaming.config import StreamConfig
from streaming.consumer import LANDED_KINDS, ConsumerSettings, StreamConsumer
from streaming.events import Transaction as TransactionEvent
from streaming.events import encode_transaction, transactions_to_frame
from streaming.landing import ConsumerStatus, StreamLanding
from streaming.predictions import Prediction, decode_prediction, predictions_to_frame
from tests.conftest import BACKENDS, read_dead_letters, stream_resource, stream_settings

CEST = timezone(timedelta(hours=2))
START = datetime(2018, 4, 2, 1, 30, tzinfo=CEST)
"""04-01 23:30 UTC: batches 40 minutes apart from here cross midnight UTC, so they land in two days."""
NOW = datetime(2018, 4, 7, 12, tzinfo=UTC)

LANDED_COLUMNS = [
    "REQUEST_ID",
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    *MODEL_FEATURES,
    "PROBABILITY",
    "MODEL_VERSION",
    "ROUTE",
    "CACHED",
    "SERVED_AT",
    "SHADOW_MODEL_VERSION",
    "SHADOW_PROBABILITY",
]
LANDED_DTYPES = {
    "REQUEST_ID": "object",
    "TRANSACTION_ID": "int64",
    "TX_DATETIME": "datetime64[ns, UTC]",
    "CUSTOMER_ID": "int64",
    "TERMINAL_ID": "int64",
    **dict.fromkeys(MODEL_FEATURES, "float64"),
    "PROBABILITY": "float64",
    "MODEL_VERSION": "object",
    "ROUTE": "object",
    "CACHED": "bool",
    "SERVED_AT": "datetime64[ns, UTC]",
    "SHADOW_MODEL_VERSION": "object",
    "SHADOW_PROBABILITY": "float64",
}


class Captured:
    """Serving's batch, keeping the records it produced on the log's thread, as they were sent."""

    def __init__(self, batch: RecordBatch) -> None:
        self._batch = batch
        self.sent: list[Mapping[str, Any]] = []

    def __len__(self) -> int:
        return len(self._batch)

    def records(self) -> Sequence[Mapping[str, Any]]:
        records = self._batch.records()
        self.sent.extend(records)
        return records


def answered(first_id: int, n: int, at: datetime, shadow: bool, seed: int) -> _Answered:
    """A scored batch as `ScoringService.score` hands it to the log: ids from `first_id`, all at `at`."""
    rng = np.random.default_rng(seed)
    transactions = [
        Transaction(
            transaction_id=first_id + i,
            customer_id=int(rng.integers(0, 300)),
            terminal_id=int(rng.integers(0, 600)),
            amount=float(rng.uniform(1, 200)),
            timestamp=at + timedelta(seconds=i),
        )
        for i in range(n)
    ]
    probabilities = rng.uniform(0, 1, n)
    challenger = rng.uniform(0, 1, n) < 0.3
    # Digits to the last bit of a float64: the landed value must be the same number, not a near one.
    features = rng.uniform(0, 1_000, (n, len(MODEL_FEATURES))) / 7
    scored = ScoredBatch(
        transactions=TransactionColumns.of(transactions),
        request_ids=[uuid.uuid4().hex for _ in transactions],
        probabilities=probabilities,
        versions=np.where(challenger, "4", "3").astype(object),
        to_challenger=challenger,
        cached=np.arange(n) % 3 == 0,
        unknown_customer=np.zeros(n, dtype=bool),
        unknown_terminal=np.zeros(n, dtype=bool),
        features=features,
        model_name="fraud",
        threshold=0.5,
        features_ms=1.5,
        model_ms=0.25,
    )
    return _Answered(scored, rng.uniform(0, 1, n) if shadow else None, "4" if shadow else None)


def expected_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The landed table as the contract says, computed from the records without the decoder."""
    return pd.DataFrame(
        {
            "REQUEST_ID": pd.Series([r["request_id"] for r in records], dtype=object),
            "TRANSACTION_ID": [r["transaction_id"] for r in records],
            "TX_DATETIME": pd.to_datetime([r["timestamp"] for r in records], utc=True, format="ISO8601"),
            "CUSTOMER_ID": [r["customer_id"] for r in records],
            "TERMINAL_ID": [r["terminal_id"] for r in records],
            **{name: [float(r["features"][name]) for r in records] for name in MODEL_FEATURES},
            "PROBABILITY": [r["probability"] for r in records],
            "MODEL_VERSION": [r["model_version"] for r in records],
            "ROUTE": [r["route"] for r in records],
            "CACHED": [r["cached"] for r in records],
            "SERVED_AT": pd.to_datetime(
                [datetime.fromtimestamp(r["served_at"], UTC) for r in records], utc=True
            ),
            "SHADOW_MODEL_VERSION": [r["shadow"]["model_version"] if "shadow" in r else "" for r in records],
            "SHADOW_PROBABILITY": [
                r["shadow"]["probability"] if "shadow" in r else math.nan for r in records
            ],
        }
    )


def by_request(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("REQUEST_ID", ignore_index=True)


def bad_records(good: Mapping[str, Any]) -> dict[bytes, str]:
    """Malformed variants of a real record, each with a request id of its own, and the reason each gets."""

    def variant(**changes: Any) -> dict[str, Any]:
        return {**json.loads(json.dumps(good)), "request_id": uuid.uuid4().hex, **changes}

    missing_feature = variant()
    del missing_feature["features"]["TERMINAL_ID_RISK_30DAY_WINDOW"]
    no_probability = variant()
    del no_probability["probability"]
    cases = [
        (no_probability, "probability: must not be missing"),
        (missing_feature, "features.TERMINAL_ID_RISK_30DAY_WINDOW: must not be missing"),
        (variant(timestamp="2018-04-02T10:00:00"), "timestamp: timestamp must carry a timezone"),
        (variant(customer_id="7"), "customer_id: must be a non-negative integer"),
        (variant(cached=1), "cached: must be true or false"),
        (variant(probability=math.nan), "probability: must be a finite number"),
        (variant(probability=math.inf), "probability: must be a finite number"),
        (variant(probability=1.5), "probability: must be between 0 and 1"),
        (
            variant(features={**good["features"], "TX_AMOUNT": math.inf}),
            "features.TX_AMOUNT: must be a finite",
        ),
        (variant(features=[1.0, 2.0]), "features: must be a JSON object"),
        (variant(shadow={"model_version": "4"}), "shadow.probability: must not be missing"),
        (variant(request_id=""), "request_id: must be a non-empty string"),
        (variant(served_at=time.time() + 86_400), "served_at: must not be more than 300 s in the future"),
    ]
    payloads = {json.dumps(record).encode(): reason for record, reason in cases}
    payloads[b'{"request_id": "abc",'] = "malformed JSON"
    return payloads


def landed(landing: StreamLanding, table: str) -> pd.DataFrame:
    return pd.concat([landing.read_day(table, day) for day in landing.days(table)], ignore_index=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_predictions_land_as_sent_once_each_and_bad_ones_go_to_dead_letters(
    backend: str, tmp_path: Path, namespace: str, kafka_bootstrap: str
) -> None:
    stream = stream_resource(backend, tmp_path, namespace, kafka_bootstrap)
    bus = stream.bus()
    topics = stream.topics()
    bus.ensure_topics(topics.names())
    batches = [
        Captured(
            answered(first_id=1_000 * k, n=40, at=START + timedelta(minutes=40 * k), shadow=k == 1, seed=k)
        )
        for k in range(3)
    ]
    log = PredictionLog(bus.producer, topics.predictions, ServingMetrics())
    for batch in batches:
        log.submit(batch)
    log.close()
    sent = [record for batch in batches for record in batch.sent]
    assert len(sent) == 120, "serving's log did not send every record"

    producer = bus.producer()
    # At-least-once: a producer retry or a replayed log delivers the same records again, byte for byte.
    redelivered = sent[::4]
    for record in redelivered:
        producer.send(
            topics.predictions, json.dumps(record).encode(), key=str(record["transaction_id"]).encode()
        )
    bad = bad_records(sent[0])
    for payload in bad:
        producer.send(topics.predictions, payload)
    # Transactions of other ids, so the online store has something that predictions could have disturbed.
    transactions = [
        TransactionEvent(9_000_000 + i, START.astimezone(UTC) + timedelta(minutes=i), 5, 6, 10.0)
        for i in range(5)
    ]
    for tx in transactions:
        producer.send(topics.transactions, encode_transaction(tx))
    producer.flush()

    settings = ConsumerSettings(group=stream.group, status_every_s=0.5, batch_size=50)
    with StreamConsumer(
        bus, topics, stream.landing(), stream.online(), settings, kinds=LANDED_KINDS
    ) as consumer:
        totals = consumer.run(idle_exit_s=0.5)

    assert totals["predictions"].landed == len(sent)
    assert totals["predictions"].duplicates == len(redelivered)
    assert totals["predictions"].dead_letters == len(bad)
    landing = stream.landing()
    assert landing.days("predictions") == ["2018-04-01", "2018-04-02"]
    table = landed(landing, "predictions")
    assert list(table.columns) == LANDED_COLUMNS
    assert table.dtypes.astype(str).to_dict() == LANDED_DTYPES
    assert table["REQUEST_ID"].is_unique
    pd.testing.assert_frame_equal(by_request(table), by_request(expected_frame(sent)), check_exact=True)
    shadowed = table["SHADOW_MODEL_VERSION"] != ""
    assert shadowed.sum() == 40 and table.loc[~shadowed, "SHADOW_PROBABILITY"].isna().all()

    letters = read_dead_letters(stream, len(bad))
    assert len(letters) == len(bad)
    for letter in letters:
        assert letter["topic"] == topics.predictions and letter["position"]
        expected = bad[letter["payload"].encode()]
        assert expected in letter["reason"], f"{letter['payload'][:80]}: {letter['reason']!r}"

    status = {s.table: s for s in landing.read_statuses()}["predictions"]
    assert (status.name, status.topic) == ("consumer-0-predictions", topics.predictions)
    assert (status.events_landed, status.duplicates_skipped, status.dead_letters) == (
        len(sent),
        len(redelivered),
        len(bad),
    )
    assert status.watermark == table["TX_DATETIME"].max().to_pydatetime()
    # Predictions feed no feature: the online store holds the five transactions and nothing else.
    online = stream.online().dump()
    assert sorted(online.customer_events["TRANSACTION_ID"]) == [tx.TRANSACTION_ID for tx in transactions]
    assert sorted(online.terminal_events["TRANSACTION_ID"]) == [tx.TRANSACTION_ID for tx in transactions]
    assert online.reports.empty


def test_decoding_takes_what_serving_may_send_and_ignores_extras() -> None:
    record = Captured(answered(first_id=7, n=1, at=START, shadow=False, seed=9))
    (sent,) = record.records()
    extended = {**sent, "probability": 1, "shadow": None, "explanation": {"TX_AMOUNT": 0.4}}
    extended["features"] = {**sent["features"], "NEW_FEATURE": 3.0}
    decoded = decode_prediction(json.dumps(extended).encode(), datetime.now(UTC))
    assert isinstance(decoded, Prediction), decoded
    assert decoded.PROBABILITY == 1.0 and decoded.SHADOW_MODEL_VERSION == ""
    assert decoded.TX_DATETIME == START and decoded.TX_DATETIME.tzinfo == UTC
    features = tuple(sent["features"][name] for name in MODEL_FEATURES)
    assert features == decoded.FEATURES
    empty = predictions_to_frame([])
    assert list(empty.columns) == LANDED_COLUMNS and empty.dtypes.astype(str).to_dict() == LANDED_DTYPES


def decoded_frame(batch: _Answered) -> pd.DataFrame:
    predictions = [decode_prediction(json.dumps(r).encode(), datetime.now(UTC)) for r in batch.records()]
    assert all(isinstance(p, Prediction) for p in predictions)
    return predictions_to_frame(predictions)  # type: ignore[arg-type]


def test_a_second_process_does_not_land_request_ids_again(tmp_path: Path) -> None:
    first = decoded_frame(answered(first_id=0, n=30, at=START, shadow=True, seed=1))
    assert StreamLanding(tmp_path).land("predictions", first.iloc[:20]).landed == 20
    # Another process (a consumer taking over a partition) reads the day's request ids from disk.
    result = StreamLanding(tmp_path).land("predictions", first)
    assert (result.landed, result.duplicates) == (10, 20)
    pd.testing.assert_frame_equal(
        by_request(landed(StreamLanding(tmp_path), "predictions")), by_request(first)
    )


def test_predictions_launch_no_ingestion_and_leave_the_event_stream_version_alone(tmp_path: Path) -> None:
    landing = StreamLanding(tmp_path / "stream")
    day_one = datetime(2018, 4, 1, 12, tzinfo=UTC)
    landing.land(
        "transactions",
        transactions_to_frame(
            [TransactionEvent(i, day_one + timedelta(minutes=i), 1, 2, 5.0) for i in range(3)]
        ),
    )
    # 04-02 and 04-03 are complete, and 04-02 holds predictions only.
    landing.write_status(
        ConsumerStatus(
            "tx-0", "transactions", "transactions", 3, 0, 0, datetime(2018, 4, 4, tzinfo=UTC), 0, NOW
        )
    )
    day_two = datetime(2018, 4, 2, 10, tzinfo=UTC)
    landing.land("predictions", decoded_frame(answered(first_id=0, n=5, at=day_two, shadow=False, seed=2)))
    resources = {
        "source": EventSourceResource(
            path=str(tmp_path / "stream"),
            stream_path=str(landing.root),
            stream_grace_minutes=StreamSettings().complete_after_minutes,
        )
    }
    with dg.instance_for_test() as instance:
        result = stream_landing_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert isinstance(result, dg.SensorResult) and result.run_requests is not None
        # A day of answers is nothing to ingest: 04-01 alone is launched, not a range up to 04-02.
        assert [r.partition_key for r in result.run_requests] == ["2018-04-01"]

        fingerprint = day_fingerprint(landing, "2018-04-01")
        version = observe_landing(landing, NOW).data_version
        late = decoded_frame(
            answered(first_id=500, n=5, at=day_one + timedelta(hours=6), shadow=False, seed=3)
        )
        assert landing.land("predictions", late).landed == 5
        assert landing.days("predictions") == ["2018-04-01", "2018-04-02"]
        assert day_fingerprint(landing, "2018-04-01") == fingerprint
        assert observe_landing(landing, NOW).data_version == version
        context = dg.build_sensor_context(instance=instance, resources=resources, cursor=result.cursor)
        again = stream_landing_sensor(context)
        assert isinstance(again, dg.SensorResult) and not again.run_requests


@pytest.fixture
def keep_signal_handlers() -> Iterator[None]:
    """`consume` installs its SIGTERM / SIGINT handlers in this process: put pytest's back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_the_consume_command_lands_predictions_unless_told_not_to(
    tmp_path: Path,
    namespace: str,
    kafka_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
    keep_signal_handlers: None,
) -> None:
    settings = stream_settings("kafka", tmp_path, namespace, kafka_bootstrap)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    stream = StreamConfig.from_settings(settings)
    bus = stream.bus()
    bus.ensure_topics(stream.topics().names())
    producer = bus.producer()
    records = answered(first_id=0, n=10, at=START, shadow=False, seed=4).records()
    for record in records:
        producer.send(stream.topics().predictions, json.dumps(record).encode())
    producer.flush()
    runner = CliRunner()

    without = runner.invoke(app, ["consume", "--idle-exit=0.5", "--no-predictions"])
    assert without.exit_code == 0, without.output
    assert stream.landing().days("predictions") == [] and "predictions:" not in without.output

    default = runner.invoke(app, ["consume", "--idle-exit=0.5"])
    assert default.exit_code == 0, default.output
    assert "predictions: 10 read, 10 landed" in default.output
    table = landed(stream.landing(), "predictions")
    pd.testing.assert_frame_equal(by_request(table), by_request(expected_frame(records)), check_exact=True)
