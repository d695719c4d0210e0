"""The consumer waits out a bus, online store or disk that goes away and comes back, and says so
when the bus came back empty.

Each Redis test runs its own `redis-server` (bench.redis_server) so it can SIGKILL and restart
it, and the Kafka test its own mock cluster (bench.kafka_brokers) so it can take the brokers
down and up, while a `StreamConsumer` runs in a thread: the consumer must never exit, land
every event exactly once, and, when the server came back without what it had acknowledged
(no persistence), report the loss instead of reading on as if nothing had happened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from bench import tmpfs
from bench.kafka_brokers import mock_brokers
from bench.redis_server import REDIS_SERVER, redis_server
from feature_repo.online import TRANSACTION_COLUMNS, OnlineStoreUnavailableError, open_event_buffers
from simulator import SimulatedData, SimulatorConfig, simulate
from streaming.bus import BusUnavailableError, DeliveryError
from streaming.config import StreamConfig
from streaming.consumer import ConsumerSettings, StreamConsumer, _retried_cause
from streaming.landing import LandResult, StreamLanding
from streaming.traffic import send_events
from tests.conftest import local_settings, needs_tool

pytestmark = [pytest.mark.integration, needs_tool(REDIS_SERVER is not None, "redis-server")]


@pytest.fixture(scope="module")
def week() -> SimulatedData:
    return simulate(SimulatorConfig(n_customers=100, n_terminals=200, n_days=7, seed=5))


def _stream(root: Path, bus_url: str, online_url: str | None = None) -> StreamConfig:
    settings = local_settings(root)
    return StreamConfig.from_settings(
        settings,
        bus_url=bus_url,
        online_url=online_url or f"sqlite:///{root / 'online.db'}",
        online_prefix="t:" if online_url else "",
        metrics_port=0,
    )


class Running:
    """A consumer in a thread; `error` holds what ended it if it ended by itself."""

    def __init__(self, stream: StreamConfig, landing: Any = None) -> None:
        self.consumer = StreamConsumer(
            stream.bus(),
            stream.topics(),
            landing or stream.landing(),
            stream.online(),
            ConsumerSettings(
                group=stream.group, batch_size=stream.batch_size, status_every_s=0.5, poll_timeout_s=0.2
            ),
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.consumer.run(self.stop)
        except BaseException as exc:  # the test asserts there is none
            self.error = exc

    def sample(self, name: str, **labels: str) -> float:
        registry: CollectorRegistry = self.consumer.metrics.registry
        return registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        if self.stop.is_set():
            return
        self.stop.set()
        self.thread.join(timeout=30)
        self.consumer.close()


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(stream: StreamConfig, landing: Any = None) -> Running:
        started.append(Running(stream, landing))
        return started[-1]

    yield start
    for consumer in started:
        consumer.close()


def _landed_ids(stream: StreamConfig) -> pd.Series:
    """Every landed transaction id as written, duplicates included."""
    files = sorted((Path(stream.landing_path) / "transactions").glob("date=*/*.parquet"))
    if not files:
        return pd.Series([], dtype="int64")
    return pd.concat([pd.read_parquet(f, columns=["TRANSACTION_ID"]) for f in files])["TRANSACTION_ID"]


class _CallsOnLand:
    """The real landing, that calls `action` once its `nth` land() call has returned."""

    def __init__(self, landing: StreamLanding, nth: int, action: Callable[[], None]) -> None:
        self._landing, self._nth, self._action, self.calls = landing, nth, action, 0

    def land(self, table: str, frame: pd.DataFrame) -> LandResult:
        result = self._landing.land(table, frame)
        self.calls += 1
        if self.calls == self._nth:
            self._action()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._landing, name)


def _send(stream: StreamConfig, transactions: pd.DataFrame, reports: pd.DataFrame) -> None:
    """Send until the bus confirms, as a producer told "resend" does: duplicates are the consumer's job."""
    deadline = time.monotonic() + 60
    while True:
        try:
            send_events(stream.bus().producer(), stream.topics(), transactions, reports)
            return
        except DeliveryError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _send_rest_and_check(
    stream: StreamConfig, consumer: Running, transactions: pd.DataFrame, half: int, week: SimulatedData
) -> None:
    """After the outage: the rest sent, every event landed once, the consumer alive, retries counted."""
    _send(stream, transactions.iloc[half:], week.fraud_reports.iloc[:0])
    _wait_for(lambda: _landed_ids(stream).nunique() == len(transactions), "every event landed")
    landed = _landed_ids(stream)
    assert consumer.error is None and consumer.thread.is_alive()
    assert landed.is_unique, f"{landed.duplicated().sum()} events landed twice"
    assert set(landed) == set(transactions["TRANSACTION_ID"])
    topic = stream.topics().transactions
    assert consumer.sample("fraudpipe_stream_retried_batches_total", topic=topic, cause="bus") > 0


def test_a_bus_outage_is_waited_out_and_loses_nothing(
    tmp_path: Path, week: SimulatedData, running: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    transactions = week.events()
    half = len(transactions) // 2
    with redis_server(tmp_path / "redis", persistent=True) as server:
        stream = _stream(tmp_path, server.url)
        _send(stream, transactions.iloc[:half], week.fraud_reports.iloc[:0])
        consumer = running(stream)
        _wait_for(lambda: len(_landed_ids(stream)) > 0, "the first batch")
        server.kill()
        time.sleep(3)  # the consumer polls, fails, backs off: it must not exit
        assert consumer.error is None and consumer.thread.is_alive()
        said = [r.getMessage() for r in caplog.records]
        # 3 s of statuses every 0.5 s and batches every few ms: each problem said once per topic.
        assert sum("lag unknown" in m for m in said) <= 2, said
        assert sum("unavailable for" in m for m in said) <= 3, said
        server.start()  # same port, same append-only file: every acknowledged entry is back
        _send_rest_and_check(stream, consumer, transactions, half, week)
        topic = stream.topics().transactions
        assert consumer.sample("fraudpipe_stream_bus_data_lost_total", topic=topic) == 0


def test_a_kafka_broker_restart_is_waited_out_and_loses_nothing(
    tmp_path: Path, week: SimulatedData, running: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    """Every broker of the cluster down for 10 s, its logs kept (a restart): the consumer reconnects."""
    transactions = week.events()
    half = len(transactions) // 2
    with mock_brokers() as brokers:
        stream = replace(
            _stream(tmp_path, f"kafka://{brokers.bootstrap}"), session_timeout_ms=6_000, batch_size=200
        )
        _send(stream, transactions.iloc[:half], week.fraud_reports.iloc[:0])
        # The brokers go down between the second batch's landing and its commit: the commit fails
        # ("waiting for coordinator"), and the batch is retried until the brokers are back.
        landing = _CallsOnLand(stream.landing(), 2, brokers.down)
        consumer = running(stream, landing)
        _wait_for(lambda: landing.calls >= 2, "the second batch")
        time.sleep(10)
        assert consumer.error is None and consumer.thread.is_alive()
        assert sum("lag unknown" in r.getMessage() for r in caplog.records) <= 2, "said once per topic"
        brokers.up()
        _send_rest_and_check(stream, consumer, transactions, half, week)
        consumer.close()  # while the cluster is there to leave the group


def test_a_bus_that_came_back_empty_is_reported_and_reading_goes_on(
    tmp_path: Path,
    week: SimulatedData,
    running: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    transactions = week.events()
    half = len(transactions) // 2
    with redis_server(tmp_path / "redis", persistent=False) as server:
        stream = _stream(tmp_path, server.url)
        _send(stream, transactions.iloc[:half], week.fraud_reports.iloc[:0])
        consumer = running(stream)
        _wait_for(lambda: _landed_ids(stream).nunique() == half, "the first half landed")
        server.kill()
        server.start()  # no persistence: the streams and the consumer groups are gone
        _send(stream, transactions.iloc[half:], week.fraud_reports.iloc[:0])
        _wait_for(lambda: _landed_ids(stream).nunique() == len(transactions), "the second half landed")
        topic = stream.topics().transactions
        assert consumer.error is None and consumer.thread.is_alive()
        assert consumer.sample("fraudpipe_stream_bus_data_lost_total", topic=topic) >= 1
        assert "Redis lost entries it had acknowledged" in caplog.text


def test_an_online_store_outage_is_waited_out_and_every_event_is_applied(
    tmp_path: Path, week: SimulatedData, running: Callable[..., Running]
) -> None:
    transactions = week.events()
    with (
        redis_server(tmp_path / "bus", persistent=True) as bus,
        redis_server(tmp_path / "online", persistent=True) as online,
    ):
        stream = _stream(tmp_path, bus.url, online.url)
        consumer = running(stream)
        online.kill()
        _send(stream, transactions, week.fraud_reports.iloc[:0])
        topic = stream.topics().transactions
        _wait_for(
            lambda: (
                consumer.sample("fraudpipe_stream_retried_batches_total", topic=topic, cause="online_store")
                > 0
            ),
            "a retry on the online store",
        )
        assert consumer.error is None and consumer.thread.is_alive()
        online.start()
        _wait_for(lambda: _landed_ids(stream).nunique() == len(transactions), "every event landed")
        last = transactions["TX_DATETIME"].max().to_pydatetime()
        _wait_for(lambda: consumer.consumer.totals["transactions"].applied == last, "the last event applied")
        store = stream.online()
        store.trim()  # the consumer trims on its own clock: both stores trimmed at the last watermark
        state = store.dump()
        assert consumer.error is None
    reference = open_event_buffers(f"sqlite:///{tmp_path / 'reference.db'}")
    reference.add_transactions(transactions[list(TRANSACTION_COLUMNS)])
    reference.trim()
    # Every event applied once, as if the store never went away.
    assert state.floor is not None and state.equals(reference.dump())


@needs_tool(tmpfs.can_mount(), "root and a tmpfs mount (a small filesystem for the lake)")
def test_a_full_lake_disk_stops_commits_and_loses_nothing_once_space_returns(
    tmp_path: Path, week: SimulatedData, running: Callable[..., Running]
) -> None:
    transactions = week.events()
    lake = tmp_path / "stream"
    lake.mkdir()
    with tmpfs.mounted(lake, "1m"):
        filler = lake / "filler"
        # Fill it, then give back a few kB: the first files fit, the next ones do not.
        with open(filler, "wb") as out, contextlib.suppress(OSError):
            out.write(b"\0" * (1 << 20))
        os.truncate(filler, filler.stat().st_size - 8_192)
        with redis_server(tmp_path / "redis", persistent=True) as server:
            stream = _stream(tmp_path, server.url)
            _send(stream, transactions, week.fraud_reports.iloc[:0])
            consumer = running(stream)
            topic = stream.topics().transactions
            _wait_for(
                lambda: (
                    consumer.sample("fraudpipe_stream_retried_batches_total", topic=topic, cause="lake") > 0
                ),
                "a retry on the full disk",
            )
            assert consumer.consumer._topic_consumers[0].consumer.lag() > 0  # nothing committed past the gap
            assert consumer.error is None and consumer.thread.is_alive()
            filler.unlink()  # space returns
            _wait_for(lambda: _landed_ids(stream).nunique() == len(transactions), "every event landed")
            landed = _landed_ids(stream)
            assert landed.is_unique and consumer.error is None
            assert not list(lake.rglob(".*.tmp"))  # no half-written file left behind


class FailingLanding:
    """The real landing, failing its 2nd and 3rd calls as a full disk would (ENOSPC)."""

    def __init__(self, landing: StreamLanding) -> None:
        self._landing = landing
        self.calls = 0

    def land(self, table: str, frame: pd.DataFrame) -> LandResult:
        self.calls += 1
        if self.calls in (2, 3):
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._landing.land(table, frame)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._landing, name)


def test_a_failed_batch_on_kafka_is_read_again_from_the_last_commit(
    tmp_path: Path,
    week: SimulatedData,
    namespace: str,
    kafka_bootstrap: str,
    running: Callable[..., Running],
) -> None:
    """Kafka's consumer position has moved past a failed batch: the retry must seek back to the commit."""
    transactions = week.events()
    stream = replace(_stream(tmp_path, f"kafka://{kafka_bootstrap}"), topic_prefix=namespace, batch_size=200)
    _send(stream, transactions, week.fraud_reports.iloc[:0])
    landing = FailingLanding(stream.landing())
    consumer = running(stream, landing)
    _wait_for(lambda: _landed_ids(stream).nunique() == len(transactions), "every event landed")
    landed = _landed_ids(stream)
    assert landing.calls > 3 and consumer.error is None
    assert landed.is_unique and set(landed) == set(transactions["TRANSACTION_ID"])


def test_only_outages_a_retry_can_cure_are_retried() -> None:
    assert _retried_cause(OSError(errno.ENOSPC, "No space left on device")) == "lake"
    assert _retried_cause(OSError(errno.EIO, "Input/output error")) == "lake"
    assert _retried_cause(PermissionError(errno.EACCES, "Permission denied")) is None  # a setup mistake
    assert _retried_cause(BusUnavailableError("down")) == "bus"
    assert _retried_cause(OnlineStoreUnavailableError("down")) == "online_store"
    assert _retried_cause(ValueError("a bug")) is None
