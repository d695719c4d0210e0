"""Fault suite: real servers killed under steady load, with counts of what failed, was lost or doubled.

Each case runs the real pieces in this process (the HTTP push app, the stream
consumer, the online store) against `redis-server`s of its own, sends a steady
load, kills one server for `--outage-s` and starts it again, then waits for the
consumer to catch up and counts:

* push requests answered, by status, a client resending each 503/504 batch as told;
* events acknowledged (202) against events landed: lost (acknowledged, never
  landed) and duplicated (landed twice);
* recovery: seconds from the restart until every acknowledged event had landed;
* reads of the online store during the outage: refused (serving's 503) or, what
  must never happen, answered with cold-start features for a known customer.

    python -m bench.chaos [--quick] [--outage-s S] [--rate EVENTS_PER_S]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import redis
from fastapi.testclient import TestClient

from bench.common import markdown_table
from bench.redis_server import RedisServer
from bench.results import add_results_argument, write_result
from feature_repo.online import (
    TRANSACTION_COLUMNS,
    OnlineStoreUnavailableError,
    open_event_buffers,
)
from settings import load_settings
from streaming.config import StreamConfig
from streaming.consumer import ConsumerSettings, StreamConsumer
from streaming.http_push import create_app

OUTAGE_S = 10.0
QUICK_OUTAGE_S = 2.0
RATE = 500
"""Events per second pushed, in batches of `BATCH` (the push endpoint's clients)."""
BATCH = 10
POISON = 20
"""Entries without the bus's fields XADDed by hand during the load: each must be dead-lettered."""


@dataclass
class Load:
    """A client pushing `BATCH` events every `BATCH / rate` s, resending a refused batch until it is taken."""

    client: TestClient
    rate: float
    statuses: Counter[int] = field(default_factory=Counter)
    acked: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    next_id: int = 1

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _batch(self) -> list[dict[str, object]]:
        now = pd.Timestamp.now(tz="UTC").floor("us")
        first, self.next_id = self.next_id, self.next_id + BATCH
        return [
            {
                "TRANSACTION_ID": n,
                "TX_DATETIME": (now - pd.Timedelta(minutes=5)).isoformat(),
                "CUSTOMER_ID": n % 97,
                "TERMINAL_ID": n % 193,
                "TX_AMOUNT": float(n % 500) + 0.25,
            }
            for n in range(first, first + BATCH)
        ]

    def _run(self) -> None:
        period = BATCH / self.rate
        due = time.monotonic()
        while not self.stop.is_set():
            batch = self._batch()
            while not self.stop.is_set():
                status = self.client.post("/v1/transactions", json=batch).status_code
                self.statuses[status] += 1
                if status == 202:
                    self.acked += [int(event["TRANSACTION_ID"]) for event in batch]  # type: ignore[call-overload]
                    break
                time.sleep(0.2)  # Retry-After, shortened: the outage is seconds long
            due += period
            time.sleep(max(0.0, due - time.monotonic()))

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)


@dataclass
class Case:
    fault: str
    load: str
    statuses: Counter[int]
    acked: int
    landed: int
    lost: int
    duplicated: int
    recovery_s: float | None
    notes: str
    passed: bool


def _landed(stream: StreamConfig) -> pd.Series:
    files = sorted((Path(stream.landing_path) / "transactions").glob("date=*/*.parquet"))
    if not files:
        return pd.Series([], dtype="int64")
    return pd.concat([pd.read_parquet(f, columns=["TRANSACTION_ID"]) for f in files])["TRANSACTION_ID"]


def _wait(condition: Callable[[], bool], timeout_s: float = 120) -> float | None:
    """Seconds until `condition()` held, or None if it did not within `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            return None
        time.sleep(0.1)
    return time.monotonic() - started


def _stream(root: Path, bus: RedisServer, online: RedisServer | None) -> StreamConfig:
    return StreamConfig.from_settings(
        load_settings(profile="local", data_dir=root),
        bus_url=bus.url,
        online_url=online.url if online else f"sqlite:///{root / 'online.db'}",
        online_prefix="chaos:" if online else "",
        metrics_port=0,
    )


def _consumer(
    stream: StreamConfig,
) -> tuple[StreamConsumer, threading.Event, threading.Thread, list[BaseException]]:
    consumer = StreamConsumer(
        stream.bus(),
        stream.topics(),
        stream.landing(),
        stream.online(),
        ConsumerSettings(group=stream.group, status_every_s=0.5, poll_timeout_s=0.2),
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            consumer.run(stop)
        except BaseException as exc:  # counted: the consumer must never end by itself
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return consumer, stop, thread, errors


def _metric(consumer: StreamConsumer, name: str, **labels: str) -> float:
    return consumer.metrics.registry.get_sample_value(name, labels) or 0.0


def bus_outage(root: Path, outage_s: float, rate: float, persistent: bool) -> Case:
    """Kill the Redis bus under push load; `persistent`: it comes back with its append-only file."""
    bus = RedisServer(root / "bus", persistent)
    bus.start()
    stream = _stream(root, bus, None)
    consumer, stop, thread, errors = _consumer(stream)
    with TestClient(create_app(stream.bus(), stream.topics(), flush_timeout_s=2)) as client:
        load = Load(client, rate)
        load.start()
        time.sleep(2)
        raw = redis.Redis.from_url(bus.url)
        for n in range(POISON):
            raw.xadd(stream.topics().transactions, {"x": str(n)})
        time.sleep(1)
        bus.kill()
        time.sleep(outage_s)
        bus.start()
        restarted_acked = set(load.acked)
        recovery = _wait(lambda: restarted_acked <= set(_landed(stream)))
        time.sleep(2)
        load.finish()
    acked = set(load.acked)
    _wait(lambda: acked <= set(_landed(stream)), timeout_s=30 if persistent else 10)
    stop.set()
    thread.join(timeout=30)
    topic = stream.topics().transactions
    detected = _metric(consumer, "fraudpipe_stream_bus_data_lost_total", topic=topic)
    dead = _metric(consumer, "fraudpipe_stream_events_total", topic=topic, outcome="dead_letter")
    retries = _metric(consumer, "fraudpipe_stream_retried_batches_total", topic=topic, cause="bus")
    consumer.close()
    bus.kill()
    landed = _landed(stream)
    lost = len(acked - set(landed))
    duplicated = int(landed.duplicated().sum())
    alive = not errors
    if persistent:
        passed = alive and lost == 0 and duplicated == 0 and dead >= POISON and recovery is not None
        notes = (
            f"consumer alive: {alive}; {retries:.0f} batches retried; "
            f"{dead:.0f}/{POISON} poison entries dead-lettered"
        )
        fault = f"Redis bus killed {outage_s:.0f} s, restarted with its AOF"
    else:
        passed = alive and duplicated == 0 and (lost == 0 or detected > 0)
        notes = f"consumer alive: {alive}; loss detected and reported: {detected > 0} ({detected:.0f} times)"
        fault = "Redis bus killed, restarted empty (no persistence)"
    return Case(
        fault,
        f"{rate:.0f} events/s pushed, {BATCH} per request",
        load.statuses,
        len(acked),
        int(landed.nunique()),
        lost,
        duplicated,
        recovery,
        notes,
        passed,
    )


def online_outage(root: Path, outage_s: float, rate: float) -> Case:
    """Kill the online store's Redis under push load and steady feature reads."""
    bus = RedisServer(root / "bus", persistent=True)
    online = RedisServer(root / "online", persistent=True)
    bus.start()
    online.start()
    stream = _stream(root, bus, online)
    consumer, stop, thread, errors = _consumer(stream)
    reads: Counter[str] = Counter()
    reading = threading.Event()
    store = stream.online()

    def read() -> None:
        requests = pd.DataFrame(
            {
                "TRANSACTION_ID": [10**9],
                "TX_DATETIME": [pd.Timestamp.now(tz="UTC").floor("us")],
                "CUSTOMER_ID": [1],
                "TERMINAL_ID": [1],
                "TX_AMOUNT": [1.0],
            }
        )
        while not reading.is_set():
            try:
                features = store.features(requests.assign(TX_DATETIME=pd.Timestamp.now(tz="UTC").floor("us")))
                reads["cold start for a known customer" if features.unknown_customer[0] else "answered"] += 1
            except OnlineStoreUnavailableError:
                reads["refused (503)"] += 1
            time.sleep(0.02)

    with TestClient(create_app(stream.bus(), stream.topics(), flush_timeout_s=2)) as client:
        load = Load(client, rate)
        load.start()
        _wait(lambda: len(_landed(stream)) > 0)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(1)
        online.kill()
        time.sleep(outage_s)
        online.start()
        restarted_acked = set(load.acked)
        recovery = _wait(lambda: restarted_acked <= set(_landed(stream)))
        time.sleep(2)
        load.finish()
        reading.set()
        reader.join(timeout=10)
    acked = set(load.acked)
    _wait(lambda: acked <= set(_landed(stream)), timeout_s=30)
    time.sleep(1)
    stop.set()
    thread.join(timeout=30)
    topic = stream.topics().transactions
    retries = _metric(consumer, "fraudpipe_stream_retried_batches_total", topic=topic, cause="online_store")
    consumer.close()
    landed = _landed(stream)
    reference = open_event_buffers(f"sqlite:///{root / 'reference.db'}")
    everything = pd.concat(
        [
            pd.read_parquet(f)
            for f in sorted((Path(stream.landing_path) / "transactions").glob("date=*/*.parquet"))
        ]
    )
    reference.add_transactions(everything[list(TRANSACTION_COLUMNS)])
    reference.trim()  # the consumer's store is trimmed: the same floor
    exact = store.dump().equals(reference.dump())
    store.close()
    bus.kill()
    online.kill()
    lost = len(acked - set(landed))
    duplicated = int(landed.duplicated().sum())
    cold = reads["cold start for a known customer"]
    passed = not errors and lost == 0 and duplicated == 0 and exact and cold == 0
    notes = (
        f"consumer alive: {not errors}; {retries:.0f} batches retried; "
        f"online state = a clean apply: {exact}; "
        f"reads: {', '.join(f'{n} {what}' for what, n in sorted(reads.items()))}"
    )
    return Case(
        f"online store's Redis killed {outage_s:.0f} s",
        f"{rate:.0f} events/s pushed; feature reads every 20 ms",
        load.statuses,
        len(acked),
        int(landed.nunique()),
        lost,
        duplicated,
        recovery,
        notes,
        passed,
    )


def render(cases: list[Case]) -> str:
    rows = [
        [
            case.fault,
            case.load,
            ", ".join(f"{n} x {status}" for status, n in sorted(case.statuses.items())),
            f"{case.acked:,}",
            f"{case.lost:,}",
            f"{case.duplicated:,}",
            "-" if case.recovery_s is None else f"{case.recovery_s:.1f}",
            case.notes,
            "PASS" if case.passed else "MISS",
        ]
        for case in cases
    ]
    headers = [
        "fault",
        "load during it",
        "push answers",
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
        ("online store outage", lambda root: online_outage(root, outage_s, args.rate)),
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
