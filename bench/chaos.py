"""Fault suite: real servers killed under steady load, with counts of what failed, was lost or doubled.

Each case runs the real pieces in this process (the HTTP push app, the stream
consumer, the online store, the scoring service, Dagster runs) against servers of
its own (a `redis-server`, a librdkafka mock cluster, a tmpfs for the lake, a model
registry, a database behind a relay), sends a steady load, takes one piece away for `--outage-s` and
brings it back, then waits for the consumer to catch up and counts:

* requests answered, by status, a client resending each 503/504 batch as told;
* events acknowledged (202) against events landed: lost (acknowledged, never
  landed) and duplicated (landed twice);
* recovery: seconds from the restart until every acknowledged event had landed
  (the registry: until the new version answered);
* what the case is about besides: poison entries dead-lettered, reads refused
  rather than answered cold, conflicting copies dead-lettered, bad model
  versions refused.

The PostgreSQL case runs Dagster jobs back to back on the prod instance and cuts the database
off in front of the server (`bench.postgres_restart`): runs cut off must fail, be marked for
Dagster's run retry, and complete when re-executed from their failure.

    python -m bench.chaos [--quick] [--outage-s S] [--rate EVENTS_PER_S]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import confluent_kafka
import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import psycopg
import redis
import xgboost as xgb
import yaml
from dagster._core.storage.tags import WILL_RETRY_TAG
from fastapi.testclient import TestClient
from mlflow.exceptions import MlflowException

from bench import postgres_restart as pg
from bench import tmpfs
from bench.common import markdown_table
from bench.kafka_brokers import mock_brokers
from bench.ports import free_port
from bench.redis_server import RedisServer
from bench.results import add_results_argument, write_result
from feature_repo.online import (
    TRANSACTION_COLUMNS,
    EventBuffers,
    OnlineStoreUnavailableError,
    open_event_buffers,
)
from feature_repo.windows import MODEL_FEATURES
from modeling import registry
from modeling.registry import ModelArtifactError, ModelRegistry
from serving.api import build_api
from serving.metrics import ServingMetrics
from serving.model import ModelStore
from serving.service import ScoringService
from settings import ServingConfig, load_settings
from streaming.config import StreamConfig
from streaming.consumer import ConsumerSettings, StreamConsumer
from streaming.http_push import create_app

OUTAGE_S = 10.0
QUICK_OUTAGE_S = 2.0
RATE = 500
"""Events per second pushed, in batches of `BATCH` (the push endpoint's clients)."""
BATCH = 10
POISON = 20
"""Entries the bus cannot make an event of, written by hand during the load: each must be dead-lettered."""
RESEND_EVERY = 10
"""In the re-sent ids case, every 10th request also carries two earlier events: one as it was, one changed."""
SCORE_RATE = 100
"""Scoring requests per second in the registry case."""
LAKE_SIZE = "64m"
"""The lake's tmpfs in the disk-full case: filled up by hand, then emptied."""


class Steady(ABC):
    """A client thread sending at a steady rate until `finish`; `statuses` counts the answers."""

    def __init__(self, client: TestClient, rate: float) -> None:
        self.client, self.rate = client, rate
        self.statuses: Counter[int] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        due = time.monotonic()
        while not self.stop.is_set():
            due += self.send()
            time.sleep(max(0.0, due - time.monotonic()))

    @abstractmethod
    def send(self) -> float:
        """One request (or one request resent until taken); returns the seconds the next one is due after."""

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _amount(transaction_id: int) -> float:
    return float(transaction_id % 500) + 0.25


class Load(Steady):
    """Pushes `BATCH` events every `BATCH / rate` s, resending a refused batch until it is taken.

    `resend_every`: every n-th request also carries two acknowledged events again, one as it
    was (a redelivery: dropped) and one with another amount (a conflict: dead-lettered).
    """

    def __init__(self, client: TestClient, rate: float, resend_every: int = 0) -> None:
        super().__init__(client, rate)
        self.resend_every = resend_every
        self.acked: list[int] = []
        self.events: dict[int, dict[str, object]] = {}
        self.copies: list[int] = []
        self.conflicts: list[int] = []
        self._next_id = 1
        self._requests = 0

    def _batch(self) -> list[dict[str, object]]:
        at = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=5)).floor("us").isoformat()
        first, self._next_id = self._next_id, self._next_id + BATCH
        return [
            {
                "TRANSACTION_ID": n,
                "TX_DATETIME": at,
                "CUSTOMER_ID": n % 97,
                "TERMINAL_ID": n % 193,
                "TX_AMOUNT": _amount(n),
            }
            for n in range(first, first + BATCH)
        ]

    def send(self) -> float:
        batch, copy, conflict = self._batch(), [], []
        self._requests += 1
        if self.resend_every and self._requests % self.resend_every == 0:
            done = len(self.copies) + len(self.conflicts)
            if len(self.acked) >= done + 2:
                copy, conflict = [self.acked[done]], [self.acked[done + 1]]
                batch += [self.events[copy[0]], {**self.events[conflict[0]], "TX_AMOUNT": 9_999.5}]
        while not self.stop.is_set():
            status = self.client.post("/v1/transactions", json=batch).status_code
            self.statuses[status] += 1
            if status == 202:
                for event in batch[:BATCH]:
                    self.acked.append(int(event["TRANSACTION_ID"]))  # type: ignore[call-overload]
                    self.events[self.acked[-1]] = event
                self.copies += copy
                self.conflicts += conflict
                break
            time.sleep(0.2)  # Retry-After, shortened: the outage is seconds long
        return BATCH / self.rate


class ScoreLoad(Steady):
    """Scores one transaction every `1 / rate` s; `versions` counts the model versions that answered."""

    def __init__(self, client: TestClient, rate: float) -> None:
        super().__init__(client, rate)
        self.versions: Counter[str] = Counter()
        self._next_id = 1

    def send(self) -> float:
        n, self._next_id = self._next_id, self._next_id + 1
        at = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=1)
        body = {"transaction_id": n, "customer_id": n % 97, "terminal_id": n % 193, "amount": _amount(n)}
        answer = self.client.post("/v1/score", json={**body, "timestamp": at.isoformat()})
        self.statuses[answer.status_code] += 1
        if answer.status_code == 200:
            self.versions[answer.json()["model"]["version"]] += 1
        return 1 / self.rate


@dataclass
class Case:
    fault: str
    load: str
    statuses: Counter[int]
    acked: int | None
    """Events acknowledged; None where the load is scoring, not ingestion."""
    landed: int | None
    lost: int | None
    duplicated: int | None
    recovery_s: float | None
    notes: str
    passed: bool


def _landed(stream: StreamConfig, columns: tuple[str, ...] = ("TRANSACTION_ID",)) -> pd.DataFrame:
    files = sorted((Path(stream.landing_path) / "transactions").glob("date=*/*.parquet"))
    if not files:
        return pd.DataFrame({column: pd.Series([], dtype="float64") for column in columns})
    return pd.concat([pd.read_parquet(f, columns=list(columns)) for f in files])


def _landed_ids(stream: StreamConfig) -> pd.Series:
    return _landed(stream)["TRANSACTION_ID"]


def _wait(condition: Callable[[], bool], timeout_s: float = 120) -> float | None:
    """Seconds until `condition()` held, or None if it did not within `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(0.1)
    return time.monotonic() - started


def _stream(root: Path, bus_url: str, online: RedisServer | None = None) -> StreamConfig:
    return StreamConfig.from_settings(
        load_settings(profile="local", data_dir=root),
        bus_url=bus_url,
        online_url=online.url if online else f"sqlite:///{root / 'online.db'}",
        online_prefix="chaos:" if online else "",
        metrics_port=0,
    )


def _with_redis_online(root: Path) -> tuple[RedisServer, RedisServer, StreamConfig]:
    """A Redis bus and a Redis online store, both persistent and started, and the stream over them."""
    bus = RedisServer(root / "bus", persistent=True)
    online = RedisServer(root / "online", persistent=True)
    bus.start()
    online.start()
    return bus, online, _stream(root, bus.url, online)


def _clean_apply(root: Path, stream: StreamConfig, store: EventBuffers) -> bool:
    """Whether `store` (then closed) holds what applying the landed events once to an empty store gives."""
    reference = open_event_buffers(f"sqlite:///{root / 'reference.db'}")
    reference.add_transactions(_landed(stream, TRANSACTION_COLUMNS)[list(TRANSACTION_COLUMNS)])
    reference.trim()  # the consumer's store is trimmed: the same floor
    exact = bool(store.dump().equals(reference.dump()))
    store.close()
    reference.close()
    return exact


@dataclass
class Consuming:
    """The stream consumer in a thread; `errors` holds what ended it, which must stay empty."""

    consumer: StreamConsumer
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    @classmethod
    def start(cls, stream: StreamConfig) -> Consuming:
        settings = ConsumerSettings(group=stream.group, status_every_s=0.5, poll_timeout_s=0.2)
        running = cls(
            StreamConsumer(stream.bus(), stream.topics(), stream.landing(), stream.online(), settings)
        )
        running.thread = threading.Thread(target=running._run, daemon=True)
        running.thread.start()
        return running

    def _run(self) -> None:
        try:
            self.consumer.run(self.stop)
        except BaseException as exc:  # counted: the consumer must never end by itself
            self.errors.append(exc)

    def metric(self, name: str, **labels: str) -> float:
        return self.consumer.metrics.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.consumer.close()


@dataclass
class Outcome:
    """What an ingestion case counted once the load stopped and the consumer caught up."""

    acked: set[int]
    landed: pd.Series
    lost: int
    duplicated: int


def _push_through(
    stream: StreamConfig,
    consuming: Consuming,
    fault: Callable[[], None],
    rate: float,
    resend_every: int = 0,
    catch_up_s: float = 120,
) -> tuple[Load, float | None, Outcome]:
    """Push under `fault` (which takes a piece away and brings it back), then count what landed.

    Recovery: seconds from the piece's return until every event acknowledged by then had landed
    (None if that took over `catch_up_s`: a bus that came back empty may never get there).
    """
    with TestClient(create_app(stream.bus(), stream.topics(), flush_timeout_s=2)) as client:
        load = Load(client, rate, resend_every)
        load.start()
        fault()
        back = set(load.acked)
        recovery = _wait(lambda: back <= set(_landed_ids(stream)), catch_up_s)
        time.sleep(2)
        load.finish()
    acked = set(load.acked)
    _wait(lambda: acked <= set(_landed_ids(stream)), timeout_s=min(30, catch_up_s))
    time.sleep(1)  # what was landed is applied online and committed too
    consuming.close()
    landed = _landed_ids(stream)
    return load, recovery, Outcome(acked, landed, len(acked - set(landed)), int(landed.duplicated().sum()))


def _case(
    fault: str, load: str, pushed: Load, recovery: float | None, outcome: Outcome, notes: str, passed: bool
) -> Case:
    return Case(
        fault,
        load,
        pushed.statuses,
        len(outcome.acked),
        int(outcome.landed.nunique()),
        outcome.lost,
        outcome.duplicated,
        recovery,
        notes,
        passed,
    )


def _pushed(rate: float) -> str:
    return f"{rate:.0f} events/s pushed, {BATCH} per request"


def bus_outage(root: Path, outage_s: float, rate: float, persistent: bool) -> Case:
    """Kill the Redis bus under push load; `persistent`: it comes back with its append-only file."""
    bus = RedisServer(root / "bus", persistent)
    bus.start()
    stream = _stream(root, bus.url)
    consuming = Consuming.start(stream)

    def fault() -> None:
        time.sleep(2)
        raw = redis.Redis.from_url(bus.url)
        for n in range(POISON):
            raw.xadd(stream.topics().transactions, {"x": str(n)})
        time.sleep(1)
        bus.kill()
        time.sleep(outage_s)
        bus.start()

    topic = stream.topics().transactions
    load, recovery, outcome = _push_through(
        stream, consuming, fault, rate, catch_up_s=120 if persistent else 10
    )
    detected = consuming.metric("fraudpipe_stream_bus_data_lost_total", topic=topic)
    dead = consuming.metric("fraudpipe_stream_events_total", topic=topic, outcome="dead_letter")
    retries = consuming.metric("fraudpipe_stream_retried_batches_total", topic=topic, cause="bus")
    bus.kill()
    alive = not consuming.errors
    if persistent:
        passed = alive and outcome.lost == outcome.duplicated == 0 and dead >= POISON and recovery is not None
        notes = (
            f"consumer alive: {alive}; {retries:.0f} batches retried; "
            f"{dead:.0f}/{POISON} poison entries dead-lettered"
        )
        fault_name = f"Redis bus killed {outage_s:.0f} s, restarted with its AOF"
    else:
        passed = alive and outcome.duplicated == 0 and (outcome.lost == 0 or detected > 0)
        notes = f"consumer alive: {alive}; loss detected and reported: {detected > 0} ({detected:.0f} times)"
        fault_name = "Redis bus killed, restarted empty (no persistence)"
    return _case(fault_name, _pushed(rate), load, recovery, outcome, notes, passed)


def kafka_restart(root: Path, outage_s: float, rate: float) -> Case:
    """Every Kafka broker down (logs kept, as in a restart) under push load, poison on the topic."""
    with mock_brokers() as brokers:
        stream = replace(_stream(root, f"kafka://{brokers.bootstrap}"), session_timeout_ms=6_000)
        stream.bus().ensure_topics(stream.topics().names())
        consuming = Consuming.start(stream)
        topic = stream.topics().transactions

        def fault() -> None:
            time.sleep(2)
            raw = confluent_kafka.Producer({"bootstrap.servers": brokers.bootstrap})
            for n in range(POISON):
                raw.produce(topic, b"\xff not an event " + str(n).encode() if n % 2 else b'{"x": 1}')
            raw.flush(10)
            time.sleep(1)
            brokers.down()
            time.sleep(outage_s)
            brokers.up()

        load, recovery, outcome = _push_through(stream, consuming, fault, rate)
    dead = consuming.metric("fraudpipe_stream_events_total", topic=topic, outcome="dead_letter")
    retries = consuming.metric("fraudpipe_stream_retried_batches_total", topic=topic, cause="bus")
    alive = not consuming.errors
    passed = alive and outcome.lost == outcome.duplicated == 0 and dead >= POISON and recovery is not None
    notes = (
        f"consumer alive: {alive}; {retries:.0f} batches retried; "
        f"{dead:.0f}/{POISON} poison messages dead-lettered"
    )
    return _case(
        f"every Kafka broker down {outage_s:.0f} s (a restart)",
        _pushed(rate),
        load,
        recovery,
        outcome,
        notes,
        passed,
    )


def lake_full(root: Path, outage_s: float, rate: float) -> Case:
    """The lake's filesystem filled up under push load, then emptied: nothing lost or committed past it."""
    fault_name = f"lake's disk full {outage_s:.0f} s ({LAKE_SIZE} tmpfs)"
    if not tmpfs.can_mount():
        why = "not run: mounting a tmpfs needs root"
        return Case(fault_name, _pushed(rate), Counter(), None, None, None, None, None, why, passed=False)
    lake = root / "stream"  # the local profile's landing path under `root`
    lake.mkdir(parents=True)
    bus = RedisServer(root / "bus", persistent=True)
    lags: list[float] = []
    with tmpfs.mounted(lake, LAKE_SIZE):
        bus.start()
        stream = _stream(root, bus.url)
        consuming = Consuming.start(stream)
        topic = stream.topics().transactions

        def fault() -> None:
            time.sleep(3)
            filler = lake / "filler"
            with open(filler, "wb") as out, contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * (1 << 20))
            deadline = time.monotonic() + outage_s
            while time.monotonic() < deadline:
                lags.append(consuming.metric("fraudpipe_stream_lag_messages", topic=topic))
                time.sleep(0.5)
            filler.unlink()  # space returns

        load, recovery, outcome = _push_through(stream, consuming, fault, rate)
        retries = consuming.metric("fraudpipe_stream_retried_batches_total", topic=topic, cause="lake")
        leftovers = len(list(lake.rglob(".*.tmp")))
        bus.kill()
    alive = not consuming.errors
    passed = alive and outcome.lost == outcome.duplicated == 0 and retries > 0 and leftovers == 0
    notes = (
        f"consumer alive: {alive}; {retries:.0f} batches retried; "
        f"uncommitted lag rose to {max(lags, default=0):.0f} while full; "
        f"{leftovers} half-written files left"
    )
    return _case(fault_name, _pushed(rate), load, recovery, outcome, notes, passed)


def resent_ids(root: Path, duration_s: float, rate: float) -> Case:
    """Clients re-send earlier ids, as they were and with another amount, under push load."""
    bus, online, stream = _with_redis_online(root)
    consuming = Consuming.start(stream)
    topic = stream.topics().transactions
    load, _catch_up, outcome = _push_through(
        stream, consuming, lambda: time.sleep(duration_s), rate, resend_every=RESEND_EVERY
    )
    conflicts = consuming.metric("fraudpipe_stream_events_total", topic=topic, outcome="conflict")
    redelivered = consuming.metric("fraudpipe_stream_events_total", topic=topic, outcome="duplicate")
    amounts = _landed(stream, ("TRANSACTION_ID", "TX_AMOUNT")).set_index("TRANSACTION_ID")["TX_AMOUNT"]
    first_copies = bool((amounts == amounts.index.map(_amount)).all())
    exact = _clean_apply(root, stream, stream.online())
    bus.kill()
    online.kill()
    alive = not consuming.errors
    passed = (
        alive
        and outcome.lost == outcome.duplicated == 0
        and conflicts == len(load.conflicts) > 0
        and redelivered >= len(load.copies)
        and first_copies
        and exact
    )
    notes = (
        f"{len(load.conflicts)} ids re-sent with another amount: {conflicts:.0f} conflicts dead-lettered; "
        f"{len(load.copies)} exact copies: {redelivered:.0f} redeliveries dropped; "
        f"lake holds the first copies: {first_copies}; online (Redis) = a clean apply: {exact}"
    )
    return _case(
        f"ids re-sent: 1 exact and 1 changed copy every {RESEND_EVERY} requests, {duration_s:.0f} s",
        _pushed(rate),
        load,
        None,  # nothing went away
        outcome,
        notes,
        passed,
    )


def online_outage(root: Path, outage_s: float, rate: float) -> Case:
    """Kill the online store's Redis under push load and steady feature reads."""
    bus, online, stream = _with_redis_online(root)
    consuming = Consuming.start(stream)
    reads: Counter[str] = Counter()
    reading = threading.Event()
    store = stream.online()

    def read() -> None:
        request = pd.DataFrame(
            {"TRANSACTION_ID": [10**9], "CUSTOMER_ID": [1], "TERMINAL_ID": [1], "TX_AMOUNT": [1.0]}
        )
        while not reading.is_set():
            try:
                features = store.features(request.assign(TX_DATETIME=pd.Timestamp.now(tz="UTC").floor("us")))
                reads["cold start for a known customer" if features.unknown_customer[0] else "answered"] += 1
            except OnlineStoreUnavailableError:
                reads["refused (503)"] += 1
            time.sleep(0.02)

    reader = threading.Thread(target=read, daemon=True)

    def fault() -> None:
        _wait(lambda: len(_landed_ids(stream)) > 0)
        reader.start()
        time.sleep(1)
        online.kill()
        time.sleep(outage_s)
        online.start()

    topic = stream.topics().transactions
    load, recovery, outcome = _push_through(stream, consuming, fault, rate)
    reading.set()
    reader.join(timeout=10)
    retries = consuming.metric("fraudpipe_stream_retried_batches_total", topic=topic, cause="online_store")
    exact = _clean_apply(root, stream, store)
    bus.kill()
    online.kill()
    cold = reads["cold start for a known customer"]
    alive = not consuming.errors
    passed = alive and outcome.lost == outcome.duplicated == 0 and exact and cold == 0
    notes = (
        f"consumer alive: {alive}; {retries:.0f} batches retried; "
        f"online state = a clean apply: {exact}; "
        f"reads: {', '.join(f'{n} {what}' for what, n in sorted(reads.items()))}"
    )
    return _case(
        f"online store's Redis killed {outage_s:.0f} s",
        f"{rate:.0f} events/s pushed; feature reads every 20 ms",
        load,
        recovery,
        outcome,
        notes,
        passed,
    )


INSTANTIATED: list[str] = []


class Trap:
    """The class a tampered MLmodel file names: building it would be running code from the registry."""

    def __init__(self) -> None:
        INSTANTIATED.append(type(self).__name__)


def register_small_model(
    models: ModelRegistry, n_features: int = len(MODEL_FEATURES)
) -> tuple[str, xgb.XGBClassifier]:
    """A small XGBoost classifier on the model's features (and `extra_` ones past them), registered."""
    rng = np.random.default_rng(0)
    columns = [*MODEL_FEATURES, *(f"extra_{i}" for i in range(n_features - len(MODEL_FEATURES)))]
    features = pd.DataFrame(rng.normal(size=(200, n_features)), columns=columns[:n_features])
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(features, rng.integers(0, 2, 200))
    version = registry.register_model(
        model, features.head(5), models.model_name, models.activate(), {}, {}, {}
    )
    return version, model


def _newest_model_dir(models: ModelRegistry) -> Path:
    return max(models.artifact_root.rglob("MLmodel"), key=lambda path: path.stat().st_mtime).parent


@contextlib.contextmanager
def _registry_down(models: ModelRegistry) -> Iterator[None]:
    """MLflow pointed at a port nobody listens on, without retries, as a registry that does not answer."""
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    down = f"http://127.0.0.1:{free_port()}"
    mlflow.set_tracking_uri(down)
    mlflow.set_registry_uri(down)
    try:
        yield
    finally:
        if retries is None:
            del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = retries
        models.activate()


def registry_faults(root: Path, outage_s: float, rate: float) -> Case:
    """A deployment while the registry does not answer, then a tampered and a corrupt version: scored."""
    models = ModelRegistry.from_settings(load_settings(profile="local", data_dir=root))
    (first, _), (second, _), (tampered, _) = (register_small_model(models) for _ in range(3))
    spec_file = _newest_model_dir(models) / "MLmodel"
    spec = yaml.safe_load(spec_file.read_text())
    spec["flavors"]["xgboost"]["model_class"] = f"{__name__}.{Trap.__name__}"
    spec_file.write_text(yaml.safe_dump(spec))
    corrupt, _ = register_small_model(models)
    data = _newest_model_dir(models) / "model.ubj"
    data.write_bytes(b"{not ubj" + data.read_bytes()[:40])
    service = ScoringService(
        open_event_buffers(f"sqlite:///{root / 'online.db'}"), ModelStore(models), ServingMetrics()
    )
    service.configure(ServingConfig(champion_version=first, prediction_log=False))
    refused: Counter[str] = Counter()
    readiness: Counter[str] = Counter()
    with TestClient(build_api(service)) as client:
        load = ScoreLoad(client, rate)
        load.start()
        time.sleep(1)
        with _registry_down(models):
            deadline = time.monotonic() + outage_s
            while time.monotonic() < deadline:  # the deployer retries every second
                try:
                    service.configure(ServingConfig(champion_version=second, prediction_log=False))
                except MlflowException:
                    refused["registry down"] += 1
                answer = client.get("/readyz")
                readiness[f"{answer.status_code} {answer.json()['detail']}"] += 1
                time.sleep(1)
        back = time.monotonic()
        service.configure(ServingConfig(champion_version=second, prediction_log=False))
        _wait(lambda: load.versions[second] > 0, timeout_s=30)
        recovery = time.monotonic() - back if load.versions[second] else None
        for version, what in ((tampered, "tampered class"), (corrupt, "corrupt file")):
            try:
                service.configure(ServingConfig(champion_version=version, prediction_log=False))
            except ModelArtifactError:
                refused[what] += 1
        time.sleep(1)
        load.finish()
    service.close()
    bad_served = sum(n for version, n in load.versions.items() if version not in (first, second))
    passed = (
        set(load.statuses) == {200}
        and refused["registry down"] > 0
        and refused["tampered class"] == refused["corrupt file"] == 1
        and not INSTANTIATED
        and bad_served == 0
        and set(readiness) == {f"200 champion v{first}"}
        and recovery is not None
    )
    notes = (
        f"deployments refused: {', '.join(f'{n} x {why}' for why, n in sorted(refused.items()))}; "
        f"readiness while down: {', '.join(f'{n} x {what}' for what, n in sorted(readiness.items()))}; "
        f"answered by v{first}/v{second}/other: {load.versions[first]}/{load.versions[second]}/{bad_served}; "
        f"tampered class built: {len(INSTANTIATED)} times"
    )
    return Case(
        f"model registry down {outage_s:.0f} s during a deployment; then a tampered and a corrupt version",
        f"{rate:.0f} scoring requests/s",
        load.statuses,
        None,
        None,
        None,
        None,
        recovery,
        notes,
        passed,
    )


STEP_S = 4.0
"""The middle step's length in the PostgreSQL case."""


def postgres_restart(root: Path, outage_s: float) -> Case:
    """PostgreSQL cut off under Dagster runs launched back to back: what is cut off fails and is retried."""
    fault = f"PostgreSQL cut off {outage_s:.0f} s under Dagster runs (prod instance)"
    # One client: Dagster runs executed in threads of one process deadlock in `logging`'s locks.
    load = "a 3-step job run back to back"
    with contextlib.ExitStack() as stack:
        try:
            name = stack.enter_context(pg.database())
        except psycopg.OperationalError:
            why = f"not run: no PostgreSQL answers on {pg.SERVER[0]}:{pg.SERVER[1]}"
            return Case(fault, load, Counter(), None, None, None, None, None, why, passed=False)
        instance, proxy = stack.enter_context(pg.prod_instance(name, root / "dagster_home"))
        refused: list[float] = []
        succeeded: list[float] = []
        stop = threading.Event()

        def launch() -> None:
            while not stop.is_set():
                try:
                    result = dg.execute_job(
                        dg.reconstructable(pg.etl), instance, pg.run_config(STEP_S), raise_on_error=False
                    )
                except Exception:  # the instance could not record the run: its caller is told at once
                    refused.append(time.monotonic())
                    time.sleep(0.5)
                    continue
                if result.success:
                    succeeded.append(time.monotonic())

        launcher = threading.Thread(target=launch, daemon=True)
        launcher.start()
        pg.restart_at_step_launch(instance, proxy, outage_s)
        back = time.monotonic()
        _wait(lambda: any(at > back for at in succeeded), timeout_s=120)
        stop.set()
        launcher.join(timeout=120)
        runs = instance.get_runs(dg.RunsFilter(job_name=pg.etl.name))
        statuses: Counter[str] = Counter()
        retried: Counter[bool] = Counter()
        for run in runs:
            if run.status == dg.DagsterRunStatus.SUCCESS:
                statuses["succeeded"] += 1
            elif run.status == dg.DagsterRunStatus.FAILURE and run.tags.get(WILL_RETRY_TAG) == "true":
                statuses["cut off, marked will_retry"] += 1
                # What the daemon launches for it: a re-execution from the failure.
                options = dg.ReexecutionOptions.from_failure(run.run_id, instance)
                with dg.execute_job(
                    dg.reconstructable(pg.etl), instance, pg.run_config(STEP_S), reexecution_options=options
                ) as retry:
                    retried[retry.success] += 1
            else:
                statuses[f"{run.status.value.lower()}, not retried"] += 1
    recovery = min((at - back for at in succeeded if at > back), default=None)
    cut_off = statuses["cut off, marked will_retry"]
    lost = sum(n for what, n in statuses.items() if what.endswith("not retried")) + retried[False]
    passed = (
        cut_off + len(refused) > 0  # the outage was felt
        and lost == 0
        and retried[True] == cut_off
        and recovery is not None
        and not launcher.is_alive()
    )
    notes = (
        f"runs: {', '.join(f'{n} {what}' for what, n in sorted(statuses.items()))}; "
        f"{retried[True]}/{cut_off} retries from the failure completed; "
        f"{len(refused)} launches refused at once while it was down; runs lost: {lost}"
    )
    return Case(fault, load, Counter(), None, None, None, None, recovery, notes, passed)


def render(cases: list[Case]) -> str:
    rows = [
        [
            case.fault,
            case.load,
            ", ".join(f"{n} x {status}" for status, n in sorted(case.statuses.items())) or "-",
            *("-" if n is None else f"{n:,}" for n in (case.acked, case.lost, case.duplicated)),
            "-" if case.recovery_s is None else f"{case.recovery_s:.1f}",
            case.notes,
            "PASS" if case.passed else "MISS",
        ]
        for case in cases
    ]
    headers = [
        "fault",
        "load during it",
        "answers",
        "events acked",
        "lost",
        "duplicated",
        "recovery s",
        "what else",
        "verdict",
    ]
    return markdown_table(headers, rows, text_columns=3)


def main(argv: list[str] | None = None) -> list[Case]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_OUTAGE_S:.0f} s outages")
    parser.add_argument("--outage-s", type=float, default=None)
    parser.add_argument("--rate", type=float, default=RATE)
    add_results_argument(parser)
    args = parser.parse_args(argv)
    outage_s = args.outage_s or (QUICK_OUTAGE_S if args.quick else OUTAGE_S)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cases = []
    for name, run in (
        ("bus outage", lambda root: bus_outage(root, outage_s, args.rate, persistent=True)),
        ("bus lost its data", lambda root: bus_outage(root, outage_s, args.rate, persistent=False)),
        ("Kafka broker restart", lambda root: kafka_restart(root, outage_s, args.rate)),
        ("online store outage", lambda root: online_outage(root, outage_s, args.rate)),
        ("lake disk full", lambda root: lake_full(root, outage_s, args.rate)),
        ("ids re-sent", lambda root: resent_ids(root, outage_s, args.rate)),
        ("model registry", lambda root: registry_faults(root, outage_s, SCORE_RATE)),
        ("PostgreSQL restart", lambda root: postgres_restart(root, pg.OUTAGE_S)),  # quick runs too
    ):
        print(f"[chaos] {name} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            cases.append(run(Path(tmp)))
    table = render(cases)
    print(table)
    body = "\n".join(
        [
            "## Fault suite",
            "",
            f"Each fault under load, {outage_s:.0f} s outages; a client resends every 503/504 batch "
            "after a short wait. Lost: acknowledged (202) but never landed; duplicated: landed twice.",
            "",
            table,
        ]
    )
    write_result("chaos", body, argv, args.quick, args.results)
    return cases


if __name__ == "__main__":
    main()
