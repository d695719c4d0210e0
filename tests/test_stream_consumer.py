"""The stream consumer against real buses: bad events to dead letters, backpressure, replay, metrics."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest

from feature_repo.contract import MAX_EVENT_BYTES
from simulator import SimulatedData, SimulatorConfig, simulate
from streaming.cli import REPLAY_LOOKBACK
from streaming.config import StreamConfig
from streaming.consumer import ConsumerSettings, StreamConsumer, TimeWindow
from streaming.events import encode_transaction, transactions_from_frame
from streaming.landing import LandResult, StreamLanding
from streaming.traffic import send_events
from tests.conftest import BACKENDS, read_dead_letters, stream_resource

GOOD = {
    "TRANSACTION_ID": 10_000_000,
    "TX_DATETIME": "2018-04-02T10:00:00+00:00",
    "CUSTOMER_ID": 1,
    "TERMINAL_ID": 2,
    "TX_AMOUNT": 12.5,
}
DAY_ZERO = datetime(2018, 4, 1, tzinfo=UTC)
BAD_EVENTS: dict[str, tuple[bytes, str]] = {
    "malformed JSON": (b'{"TRANSACTION_ID": 1,', "malformed JSON"),
    "not an object": (b"[1, 2]", "must be a JSON object"),
    "missing field": (json.dumps({k: v for k, v in GOOD.items() if k != "TX_AMOUNT"}).encode(), "TX_AMOUNT"),
    "wrong type": (json.dumps({**GOOD, "CUSTOMER_ID": "1"}).encode(), "CUSTOMER_ID"),
    "NaN": (json.dumps({**GOOD, "TX_AMOUNT": float("nan")}).encode(), "TX_AMOUNT: must be a finite number"),
    "inf": (json.dumps({**GOOD, "TX_AMOUNT": float("inf")}).encode(), "TX_AMOUNT: must be a finite number"),
    "negative amount": (json.dumps({**GOOD, "TX_AMOUNT": -3}).encode(), "TX_AMOUNT: must not be negative"),
    "oversized field": (json.dumps({**GOOD, "TX_DATETIME": "2" * 500}).encode(), "TX_DATETIME: at most"),
    "oversized event": (json.dumps({**GOOD, "note": "x" * MAX_EVENT_BYTES}).encode(), "larger than"),
    "far future": (
        json.dumps({**GOOD, "TX_DATETIME": "2999-01-01T00:00:00+00:00"}).encode(),
        "TX_DATETIME: must not be more than",
    ),
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8"),
}


@pytest.fixture(scope="module")
def week() -> SimulatedData:
    return simulate(SimulatorConfig(n_customers=100, n_terminals=200, n_days=7, seed=5))


def _consume(stream: StreamConfig, **settings: Any) -> StreamConsumer:
    return StreamConsumer(
        stream.bus(),
        stream.topics(),
        stream.landing(),
        stream.online(),
        ConsumerSettings(group=stream.group, status_every_s=0.5, **settings),
    )


def _landed(stream: StreamConfig, table: str) -> pd.DataFrame:
    landing = stream.landing()
    return pd.concat([landing.read_day(table, day) for day in landing.days(table)], ignore_index=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_events_go_to_dead_letters_with_their_reason_and_good_ones_land(
    backend: str, tmp_path: Path, namespace: str, kafka_bootstrap: str, week: SimulatedData
) -> None:
    stream = stream_resource(backend, tmp_path, namespace, kafka_bootstrap, batch_size=50)
    bus = stream.bus()
    bus.ensure_topics(stream.topics().names())
    events = week.events().iloc[:300]
    producer = bus.producer()
    good = iter(transactions_from_frame(events))
    # Each bad event sits between good ones, in the same micro-batches.
    for _, (payload, _reason) in BAD_EVENTS.items():
        for _ in range(300 // len(BAD_EVENTS)):
            tx = next(good, None)
            if tx is not None:
                producer.send(stream.topics().transactions, encode_transaction(tx))
        producer.send(stream.topics().transactions, payload)
    for tx in good:
        producer.send(stream.topics().transactions, encode_transaction(tx))
    producer.flush()

    with _consume(stream, batch_size=50) as consumer:
        totals = consumer.run(idle_exit_s=0.5)
    assert totals["transactions"].dead_letters == len(BAD_EVENTS)
    assert totals["transactions"].landed == len(events)

    landed = _landed(stream, "transactions")
    pd.testing.assert_frame_equal(
        landed.sort_values("TRANSACTION_ID").reset_index(drop=True),
        events.sort_values("TRANSACTION_ID").reset_index(drop=True),
        check_exact=True,
    )
    records = read_dead_letters(stream, len(BAD_EVENTS))
    assert len(records) == len(BAD_EVENTS)
    for case, (_payload, reason) in BAD_EVENTS.items():
        matching = [r for r in records if reason in r["reason"]]
        assert matching, f"{case}: no dead letter says {reason!r}: {[r['reason'] for r in records]}"
        record = matching[0]
        assert record["topic"] == stream.topics().transactions and record["position"]
        assert record["consumer"] == "consumer-0"
    # The online store saw the good events only.
    assert len(stream.online().dump().customer_events) == len(events)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_id_re_sent_with_other_content_keeps_its_first_copy_everywhere(
    backend: str, tmp_path: Path, namespace: str, kafka_bootstrap: str, week: SimulatedData
) -> None:
    """Ids re-sent with another amount, day, customer or report time: dead-lettered, not landed or applied."""
    stream = stream_resource(backend, tmp_path, namespace, kafka_bootstrap)
    bus = stream.bus()
    bus.ensure_topics(stream.topics().names())
    events, reports = week.events(), week.fraud_reports
    send_events(bus.producer(), stream.topics(), events, reports)
    resent = events.iloc[[10, 20, 30, 40]].copy()
    resent.iloc[0, resent.columns.get_loc("TX_AMOUNT")] += 1.0
    resent.iloc[1, resent.columns.get_loc("TX_DATETIME")] += timedelta(days=2)
    resent.iloc[2, resent.columns.get_loc("CUSTOMER_ID")] += 1
    resent.iloc[2, resent.columns.get_loc("TERMINAL_ID")] += 1
    # Row 3 is an exact copy: a redelivery, not a conflict.
    resent_reports = reports.iloc[:2].assign(
        REPORT_DATETIME=lambda f: f["REPORT_DATETIME"] - timedelta(hours=1)
    )
    send_events(bus.producer(), stream.topics(), resent, resent_reports)

    with _consume(stream) as consumer:
        totals = consumer.run(idle_exit_s=0.5)
    assert (totals["transactions"].conflicts, totals["transactions"].duplicates) == (3, 1)
    assert totals["fraud_reports"].conflicts == 2
    pd.testing.assert_frame_equal(
        _landed(stream, "transactions").sort_values("TRANSACTION_ID", ignore_index=True),
        events.sort_values("TRANSACTION_ID", ignore_index=True),
        check_exact=True,
    )
    landed_reports = _landed(stream, "fraud_reports").set_index("TRANSACTION_ID")["REPORT_DATETIME"]
    sent_reports = reports.set_index("TRANSACTION_ID")["REPORT_DATETIME"]
    # The bus carries microseconds (truncated); the simulator's reports have nanoseconds.
    assert (landed_reports.sort_index() - sent_reports.sort_index()).abs().max() < timedelta(microseconds=1)
    records = read_dead_letters(stream, 5)
    assert sorted(r["reason"].split()[2] for r in records) == sorted(
        str(i) for i in [*resent["TRANSACTION_ID"][:3], *resent_reports["TRANSACTION_ID"]]
    )
    assert all("already landed with other content" in r["reason"] for r in records)

    clean = stream_resource(backend, tmp_path / "clean", f"{namespace}clean-", kafka_bootstrap).online()
    clean.add_transactions(events)
    clean.add_reports(reports.assign(REPORT_DATETIME=reports["REPORT_DATETIME"].dt.floor("us")))
    expected = clean.dump()

    def assert_first_copies_online() -> None:
        online = stream.online().dump()
        for part in ("customer_events", "terminal_events", "reports"):
            pd.testing.assert_frame_equal(getattr(online, part), getattr(expected, part), obj=part)
        assert online.watermark == expected.watermark, "no later copy moved the store's clock"

    assert_first_copies_online()
    # A replay applies its look-back without landing it: the landed copies still decide.
    stream.online().clear()
    window = TimeWindow(datetime(2018, 4, 8, tzinfo=UTC))
    replay_settings = ConsumerSettings(
        group="replay", name="replay", land_window=window, online_window=TimeWindow(DAY_ZERO), live=False
    )
    with StreamConsumer(bus, stream.topics(), stream.landing(), stream.online(), replay_settings) as replay:
        assert replay.run(idle_exit_s=0.5)["transactions"].conflicts == 3
    assert_first_copies_online()


class SlowLanding:
    """The real landing, `factor` times slower: every call sleeps (factor − 1) × its own duration."""

    def __init__(self, landing: StreamLanding, factor: float) -> None:
        self._landing = landing
        self._factor = factor

    def land(self, table: str, frame: pd.DataFrame) -> LandResult:
        started = time.perf_counter()
        result = self._landing.land(table, frame)
        time.sleep((self._factor - 1) * (time.perf_counter() - started))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._landing, name)


PADDED_EVENTS = 12_000
PAD = 3_000
"""Each event padded to ~3 KiB with a field the reader ignores: 36 MB on the bus in all."""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sink_slowed_tenfold_bounds_memory_and_loses_nothing(
    backend: str, tmp_path: Path, namespace: str, kafka_bootstrap: str, week: SimulatedData
) -> None:
    """The bound: `batch_size` messages in Python (500 × 3 KiB ≈ 1.5 MB of payload) plus, for Kafka,
    librdkafka's prefetch (`queued.max.messages.kbytes`, 8 MiB, soft). Asserted: Python's peak
    allocation stays under 24 MiB and the process's RSS grows less than 48 MiB, while the bus holds 36 MB."""
    stream = stream_resource(backend, tmp_path, namespace, kafka_bootstrap, batch_size=500)
    bus = stream.bus()
    bus.ensure_topics(stream.topics().names())
    copies = -(-PADDED_EVENTS // len(week.events()))
    events = pd.concat([week.events()] * copies, ignore_index=True).iloc[:PADDED_EVENTS]
    events["TRANSACTION_ID"] = range(len(events))
    producer = bus.producer()
    for tx in transactions_from_frame(events):
        payload = encode_transaction(tx)[:-1] + b',"pad":"' + b"p" * PAD + b'"}'
        producer.send(stream.topics().transactions, payload)
    producer.flush()

    consumer = _consume(stream, batch_size=500)
    consumer._topic_consumers[0].landing = SlowLanding(stream.landing(), factor=10)  # type: ignore[assignment]
    process = psutil.Process()
    rss_start = process.memory_info().rss
    peak_rss = rss_start
    in_flight: list[int] = []
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_rss
        while not done.wait(0.05):
            peak_rss = max(peak_rss, process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    tracemalloc.start()
    try:
        with consumer:
            totals = consumer.run(
                idle_exit_s=0.5, on_batch=lambda _t, batch: in_flight.append(batch.messages)
            )
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        done.set()
        sampler.join()
    assert totals["transactions"].landed == PADDED_EVENTS and totals["transactions"].dead_letters == 0
    assert max(in_flight) <= 500
    assert python_peak < 24 * 2**20, f"Python peak {python_peak / 2**20:.1f} MiB"
    assert peak_rss - rss_start < 48 * 2**20, f"RSS grew {(peak_rss - rss_start) / 2**20:.1f} MiB"
    assert sorted(_landed(stream, "transactions")["TRANSACTION_ID"]) == list(range(PADDED_EVENTS))
    print(
        f"{backend}: slowed sink, {PADDED_EVENTS} events of ~{PAD / 1024:.0f} KiB: Python peak "
        f"{python_peak / 2**20:.1f} MiB, RSS growth {(peak_rss - rss_start) / 2**20:.1f} MiB"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_relands_nothing_twice_and_rebuilds_the_same_online_state(
    backend: str, tmp_path: Path, namespace: str, kafka_bootstrap: str, week: SimulatedData
) -> None:
    stream = stream_resource(backend, tmp_path, namespace, kafka_bootstrap)
    bus = stream.bus()
    bus.ensure_topics(stream.topics().names())
    send_events(bus.producer(), stream.topics(), week.events(), week.fraud_reports)
    with _consume(stream) as consumer:
        consumer.run(idle_exit_s=0.5)
    before = stream.online().dump()
    files_before = sorted(Path(stream.landing_path).rglob("*.parquet"))

    stream.online().clear()
    window = TimeWindow(datetime(2018, 4, 3, tzinfo=UTC), datetime(2018, 4, 5, tzinfo=UTC))
    replay = StreamConsumer(
        bus,
        stream.topics(),
        stream.landing(),
        stream.online(),
        ConsumerSettings(
            group="replay-1",
            name="replay",
            land_window=window,
            online_window=TimeWindow(window.start - REPLAY_LOOKBACK),
            live=False,
        ),
    )
    with replay:
        totals = replay.run(idle_exit_s=0.5)
    in_window = window.mask(week.events()["TX_DATETIME"]).sum()
    assert totals["transactions"].landed == 0
    assert totals["transactions"].duplicates == in_window
    assert totals["transactions"].skipped == 0
    assert sorted(Path(stream.landing_path).rglob("*.parquet")) == files_before
    assert {status.name for status in stream.landing().read_statuses()} == {
        "consumer-0-transactions",
        "consumer-0-fraud_reports",
    }, "a replay must not publish a status the stream sensor would wait on"
    after = stream.online().dump()
    pd.testing.assert_frame_equal(after.customer_events, before.customer_events)
    pd.testing.assert_frame_equal(after.terminal_events, before.terminal_events)
    pd.testing.assert_frame_equal(after.reports, before.reports)
    assert after.equals(before)


def test_metrics_and_status_report_progress(
    tmp_path: Path, namespace: str, kafka_bootstrap: str, week: SimulatedData
) -> None:
    stream = stream_resource("kafka", tmp_path, namespace, kafka_bootstrap)
    bus = stream.bus()
    bus.ensure_topics(stream.topics().names())
    producer = bus.producer()
    sent = send_events(producer, stream.topics(), week.events(), week.fraud_reports)
    producer.send(stream.topics().transactions, b"not json")
    producer.flush()
    with _consume(stream) as consumer:
        consumer.run(idle_exit_s=0.5)
        registry = consumer.metrics.registry
    n_tx = len(week.events())
    tx_topic = stream.topics().transactions

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"topic": tx_topic, **labels})

    assert sample("fraudpipe_stream_events_total", outcome="landed") == n_tx
    assert sample("fraudpipe_stream_events_total", outcome="dead_letter") == 1
    assert sample("fraudpipe_stream_lag_messages") == 0
    assert sample("fraudpipe_stream_in_flight_messages") == 0
    assert (sample("fraudpipe_stream_batch_seconds_count") or 0) >= 1
    watermark = week.events()["TX_DATETIME"].max()
    assert sample("fraudpipe_stream_watermark_seconds") == watermark.timestamp()
    assert (sample("fraudpipe_stream_feature_freshness_seconds") or 0) > 0
    statuses = {s.table: s for s in stream.landing().read_statuses()}
    assert statuses["transactions"].events_landed == n_tx
    assert statuses["fraud_reports"].events_landed == sent - n_tx
    assert statuses["transactions"].watermark == week.events()["TX_DATETIME"].max().to_pydatetime()
    assert statuses["transactions"].lag == 0
    assert datetime.now(UTC) - statuses["transactions"].updated_at < timedelta(minutes=1)
    # A restarted member resumes its watermark instead of publishing None until new events land.
    with _consume(stream) as restarted:
        restarted.run(idle_exit_s=0.2)
    again = {s.table: s for s in stream.landing().read_statuses()}
    assert again["transactions"].watermark == statuses["transactions"].watermark
