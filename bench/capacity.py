"""Benchmark: the capacity numbers of docs/scaling.md that no other bench gives.

1. **Stream consumer throughput per partition.** `StreamConsumer` (what `python -m
   streaming consume` runs, with its default event kinds and batch size) drains one
   partition of simulated transactions on librdkafka's in-process mock Kafka cluster:
   each micro-batch decoded, landed in a lake (fsync) and applied to the online event
   buffers, Redis (the prod store) or SQLite (the local one). Baseline in the same
   run: a bare confluent-kafka consumer draining the same partition and doing
   nothing with it, the bus's ceiling. Also two consumer processes on two
   partitions beside one.
2. **Redis memory per entity.** The stream's online event buffers
   (`feature_repo.online.RedisEventBuffers`) holding simulated traffic at the
   simulator's rates, trimmed as the consumer trims them.

Every Redis key is this run's own (a key prefix) and deleted at the end; nothing
is flushed.

    python -m bench.capacity [--quick] [--events N] [--repeat N] [--customers N]
        [--redis-url URL]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis

from bench.common import markdown_table, quiet_warnings
from bench.results import add_results_argument, write_result
from settings import StreamSettings
from simulator import SimulatedData, SimulatorConfig, simulate

REDIS_URL = "redis://127.0.0.1:6379/0"
EVENTS = 100_000
"""Per partition. The mock cluster keeps at most 5 MiB of a partition (hard-coded in
librdkafka), about 117,000 of these events once LZ4-compressed: a run checks that
nothing it produced was dropped."""
QUICK_EVENTS = 20_000
REPEAT = 2
CUSTOMERS = SimulatorConfig().n_customers
"""The simulator's default population, whose fraud share the reports buffered reflect."""
QUICK_CUSTOMERS = 300
BUFFER_DAYS = 45
"""Simulated days for the event buffers: past the terminals' 37-day horizon plus a day
of grace, so that the trim leaves both kinds of buffer in their steady state."""
CUSTOMERS_PER_TERMINAL = 10
"""The guide's example has 10 M customers and 1 M terminals; the simulator's default
has twice as many terminals as customers, so each terminal buffers 20x fewer events."""
MEMORY_AGREEMENT = 0.2
"""How far a used_memory delta may stray from the per-key sum before the run is suspect: the delta
also holds the keyspace's hash table growth (a few per cent here)."""
LIVE = "simulator rates, trimmed live"
CAUGHT_UP = "simulator rates, after a catch-up"
DENSE = f"{CUSTOMERS_PER_TERMINAL} customers per terminal, trimmed live"
UTILISATION = 0.7
"""The share of a consumer's measured rate the scaling rule plans for."""
BATCH_SIZE = StreamSettings.model_fields["batch_size"].default
"""The stream settings' default batch size, what `python -m streaming consume` polls."""
TX_PER_CUSTOMER_DAY = 1.9
"""The simulator's average (mean_nb_tx_per_day ~ U(0, 4), a few cards without a terminal near)."""

PRODUCER_SETTINGS = {"acks": "all", "enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4"}
"""As `streaming.bus_kafka.KafkaProducer`: batches reach the broker, and the consumers, LZ4-compressed."""
FETCH_SETTINGS = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "queued.max.messages.kbytes": 8_192,
    "fetch.wait.max.ms": 50,
    "fetch.queue.backoff.ms": 50,
}
"""As `streaming.bus_kafka.KafkaBus.consumer`: the bare baseline fetches as the real consumer does."""

BARE = "bare confluent-kafka consume(), no work"
STREAM_SQLITE = "StreamConsumer, SQLite online store"
STREAM_REDIS = "StreamConsumer, Redis online store"
STREAM_REDIS_2 = "2 x StreamConsumer, Redis online store"


@dataclass(frozen=True)
class Variant:
    """One way of draining: what runs in each consumer process, and how many processes."""

    name: str
    kind: str
    """`bare` or `stream`."""
    online: str | None
    """`sqlite` or `redis` for the stream consumer."""
    processes: int = 1


VARIANTS = (
    Variant(BARE, "bare", None),
    Variant(STREAM_SQLITE, "stream", "sqlite"),
    Variant(STREAM_REDIS, "stream", "redis"),
    Variant(STREAM_REDIS_2, "stream", "redis", processes=2),
)


# --- 1. Stream consumer throughput -------------------------------------------------------------


@dataclass(frozen=True)
class DrainSpec:
    """What one consumer process drains, and into what."""

    kind: str
    servers: str
    topic_prefix: str
    group: str
    name: str
    expected: int
    workdir: str
    online_url: str | None
    online_prefix: str


@dataclass
class Drain:
    """One consumer process's drain: after each batch, when it ended, the events so far and CPU so far."""

    times: list[float] = field(default_factory=list)
    """time.monotonic(), comparable between processes of one machine."""
    events: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    """This process's CPU seconds, every thread (librdkafka's too)."""
    landed: int = 0
    duplicates: int = 0
    dead_letters: int = 0

    def record(self, events: int) -> None:
        self.times.append(time.monotonic())
        self.events.append(events)
        self.cpu.append(time.process_time())

    def at(self, moment: float, series: Sequence[float]) -> float:
        return float(np.interp(moment, self.times, series))


@dataclass(frozen=True)
class Throughput:
    """One variant's drain in one repeat: while every one of its processes was draining."""

    variant: Variant
    events: int
    """Produced, in all partitions."""
    rate: float
    """Events/s of all its processes together."""
    cores: float
    """CPU of its processes over the window, in cores."""
    overlap: float
    """The window over the longest process's drain (1 for one process)."""
    redis_cpu: float | None
    """Redis server CPU seconds per event, over the whole drain (None: no Redis)."""
    other_cores: float
    """CPU the rest of the machine used meanwhile, in cores: neither this bench nor Redis."""
    drains: list[Drain]


def _topics(prefix: str) -> Any:
    from streaming.bus import TOPICS

    return TOPICS.prefixed(prefix)


def _drain_bare(spec: DrainSpec, start: Any) -> Drain:
    """The bus's ceiling: fetch and hand over messages, nothing else.

    Assigned rather than subscribed (no group to join): nothing of the group's work is
    left to time once the messages flow. Timed, like the real consumer, from the end
    of its first batch: the first fetch holds about a fifth of the partition, the
    rest is fetched inside the window.
    """
    import confluent_kafka
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": spec.servers, "group.id": spec.group, **FETCH_SETTINGS}
    )
    drain, seen = Drain(), 0
    start.wait()
    consumer.assign([TopicPartition(_topics(spec.topic_prefix).transactions, 0, OFFSET_BEGINNING)])
    try:
        while seen < spec.expected:
            records = consumer.consume(num_messages=BATCH_SIZE, timeout=0.5)
            good = sum(1 for record in records if record.error() is None)
            if good:
                seen += good
                drain.record(seen)
    finally:
        consumer.close()
    return drain


def _drain_stream(spec: DrainSpec, start: Any) -> Drain:
    from feature_repo.online import open_event_buffers
    from streaming.bus_kafka import KafkaBus
    from streaming.consumer import LANDED_KINDS, ConsumerSettings, StreamConsumer, Totals
    from streaming.landing import StreamLanding

    assert spec.online_url is not None
    online = open_event_buffers(spec.online_url, prefix=spec.online_prefix)
    landing = StreamLanding(Path(spec.workdir) / "lake" / "stream")
    settings = ConsumerSettings(group=spec.group, name=spec.name, batch_size=BATCH_SIZE)
    drain, stop = Drain(), threading.Event()

    def on_batch(table: str, batch: Totals) -> None:
        if table != "transactions":
            return
        seen = (drain.events[-1] if drain.events else 0) + batch.messages
        drain.record(seen)
        if seen >= spec.expected:
            stop.set()

    # As `python -m streaming consume` runs it: every landed kind, predictions included.
    with StreamConsumer(
        KafkaBus(spec.servers), _topics(spec.topic_prefix), landing, online, settings, kinds=LANDED_KINDS
    ) as consumer:
        start.wait()
        totals = consumer.run(stop, on_batch=on_batch)["transactions"]
    online.close()
    drain.landed, drain.duplicates, drain.dead_letters = totals.landed, totals.duplicates, totals.dead_letters
    return drain


DRAINS: dict[str, Callable[[DrainSpec, Any], Drain]] = {
    "bare": _drain_bare,
    "stream": _drain_stream,
}


def _drain_child(spec: DrainSpec, start: Any, results: Any) -> None:
    """A consumer process: drains, then hands back its `Drain` (or its traceback)."""
    quiet_warnings()
    try:
        results.put((spec.name, DRAINS[spec.kind](spec, start)))
    except BaseException:
        results.put((spec.name, traceback.format_exc()))


def _produce(servers: str, topic: str, payloads: Sequence[tuple[bytes, bytes]]) -> None:
    """Every payload to partition 0 of `topic`; raises if the mock cluster did not keep them all."""
    import confluent_kafka
    from confluent_kafka import TopicPartition

    producer = confluent_kafka.Producer({"bootstrap.servers": servers, **PRODUCER_SETTINGS})
    for key, value in payloads:
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=0)
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(30):
        raise RuntimeError(f"{topic}: the mock cluster did not confirm every event within 30 s")
    probe = confluent_kafka.Consumer({"bootstrap.servers": servers, "group.id": "bench-capacity-probe"})
    try:
        low, high = probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=15)
    finally:
        probe.close()
    if low != 0 or high != len(payloads):
        raise SystemExit(
            f"{topic}: the mock cluster holds offsets {low}..{high} of the {len(payloads):,} events "
            "produced: it keeps at most 5 MiB a partition; run with fewer --events"
        )


def _window(drains: Sequence[Drain]) -> tuple[float, float, float]:
    """The interval where every process was draining (from the end of its first batch to its last),
    and that interval's share of the longest drain."""
    start = max(d.times[0] for d in drains)
    end = min(d.times[-1] for d in drains)
    longest = max(d.times[-1] - d.times[0] for d in drains)
    if end <= start or longest <= 0:
        raise RuntimeError("the consumer processes never drained at the same time: too few events per batch")
    return start, end, (end - start) / longest


def measure_variant(
    variant: Variant,
    servers: str,
    payloads: Sequence[Sequence[tuple[bytes, bytes]]],
    run: str,
    workdir: Path,
    redis_url: str,
) -> Throughput:
    """Produce one partition per process, then drain them, each in a spawned process of its own."""
    from feature_repo.online import RedisEventBuffers
    from streaming.bus_kafka import KafkaBus

    tag = f"{run}-{variant.kind}-{variant.online or 'none'}-{variant.processes}-{uuid.uuid4().hex[:6]}"
    variant_dir = workdir / tag
    online_url = {
        "redis": redis_url,
        "sqlite": f"sqlite:///{(variant_dir / 'online.db').resolve()}",
        None: None,
    }[variant.online]
    variant_dir.mkdir(parents=True)
    # SQLite: a database of this variant's own; Redis: a key prefix of its own.
    online_prefix = f"bench-capacity:{tag}:" if variant.online == "redis" else ""
    specs = []
    for i in range(variant.processes):
        prefix = f"capacity-{tag}-{i}."
        # One topic per process, not two partitions of one group's topic: the second member's join would
        # rebalance the first mid-drain (the mock cluster has no static membership to avoid it). Each
        # process still drains one partition into the same lake and online store.
        KafkaBus(servers).ensure_topics(_topics(prefix).names())
        _produce(servers, _topics(prefix).transactions, payloads[i])
        specs.append(
            DrainSpec(
                kind=variant.kind,
                servers=servers,
                topic_prefix=prefix,
                group=f"capacity-{tag}",
                name=f"consumer-{i}",
                expected=len(payloads[i]),
                workdir=str(variant_dir),
                online_url=online_url,
                online_prefix=online_prefix,
            )
        )
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(len(specs)), context.Queue()
    processes = [context.Process(target=_drain_child, args=(spec, start, results)) for spec in specs]
    client = redis.Redis.from_url(redis_url)
    before = _CpuSnapshot.take(client)
    for process in processes:
        process.start()
    try:
        outcomes = dict(results.get(timeout=600) for _ in specs)
        for process in processes:
            process.join(timeout=60)  # a joined child's CPU counts in this process's children times
        used = _CpuSnapshot.take(client).minus(before)
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
        if variant.online == "redis":
            RedisEventBuffers(client, online_prefix).clear()
        client.close()
    failed = {name: outcome for name, outcome in outcomes.items() if isinstance(outcome, str)}
    if failed:
        raise RuntimeError(f"{variant.name}: a consumer process failed:\n" + "\n".join(failed.values()))
    drains: list[Drain] = [outcomes[spec.name] for spec in specs]
    begin, end, overlap = _window(drains)
    events = sum(d.at(end, d.events) - d.at(begin, d.events) for d in drains)
    cpu = sum(d.at(end, d.cpu) - d.at(begin, d.cpu) for d in drains)
    produced = sum(len(spec_payloads) for spec_payloads in payloads[: variant.processes])
    return Throughput(
        variant,
        produced,
        events / (end - begin),
        cpu / (end - begin),
        overlap,
        used.server / produced if variant.online == "redis" else None,
        used.other_cores,
        drains,
    )


def partition_payloads(
    events_per_partition: int, partitions: int, seed: int
) -> list[list[tuple[bytes, bytes]]]:
    """Simulated transactions as the bus carries them (key, JSON), dealt in turn to `partitions` partitions.

    In prod the producer hashes the key (the transaction id) to a partition, so each
    partition holds an even share of every card's traffic, in time order: dealing the
    time-ordered events in turn gives the same.
    """
    from streaming.events import encode_transaction, transactions_from_frame

    needed = events_per_partition * partitions
    customers = SimulatorConfig().n_customers
    days = math.ceil(needed / (customers * TX_PER_CUSTOMER_DAY)) + 2
    events = simulate(replace(SimulatorConfig(), n_days=days, seed=seed)).events()
    if len(events) < needed:
        raise RuntimeError(f"simulated {len(events):,} transactions in {days} days, need {needed:,}")
    keyed = [
        (str(tx.TRANSACTION_ID).encode(), encode_transaction(tx))
        for tx in transactions_from_frame(events.iloc[:needed])
    ]
    return [keyed[i::partitions] for i in range(partitions)]


def measure_consumers(
    events_per_partition: int, repeat: int, seed: int, redis_url: str, workdir: Path, run: str
) -> list[Throughput]:
    """Every variant `repeat` times, in alternating order, on one mock cluster."""
    from streaming.bus_kafka import mock_kafka_cluster

    partitions = max(v.processes for v in VARIANTS)
    print(f"[capacity] simulating {events_per_partition * partitions:,} transactions ...", flush=True)
    payloads = partition_payloads(events_per_partition, partitions, seed)
    results = []
    with mock_kafka_cluster() as servers:
        for r in range(repeat):
            for variant in VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS)):
                print(f"[capacity] {variant.name} (run {r + 1} of {repeat}) ...", flush=True)
                result = measure_variant(variant, servers, payloads, run, workdir, redis_url)
                print(
                    f"[capacity] {variant.name}: {result.rate:,.0f} events/s, {result.cores:.2f} cores",
                    flush=True,
                )
                results.append(result)
    return results


@dataclass(frozen=True)
class _CpuSnapshot:
    """CPU seconds so far: the machine's busy time, this bench's process tree, the Redis server."""

    wall: float
    machine: float
    bench: float
    server: float
    """The Redis server's."""

    @classmethod
    def take(cls, client: redis.Redis) -> _CpuSnapshot:
        machine = psutil.cpu_times()
        bench = psutil.Process().cpu_times()
        info = client.info("cpu")
        return cls(
            time.monotonic(),
            machine.user + machine.nice + machine.system + machine.irq + machine.softirq,
            bench.user + bench.system + bench.children_user + bench.children_system,
            float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        )

    def minus(self, earlier: _CpuSnapshot) -> _CpuSnapshot:
        return _CpuSnapshot(
            self.wall - earlier.wall,
            self.machine - earlier.machine,
            self.bench - earlier.bench,
            self.server - earlier.server,
        )

    @property
    def other_cores(self) -> float:
        """Of a difference: cores busy with neither this bench (broker included) nor Redis.
        (A Redis on another machine makes this read low.)"""
        return max(self.machine - self.bench - self.server, 0.0) / self.wall


# --- 2. Redis memory ---------------------------------------------------------------------------


def _used_memory(client: redis.Redis) -> int:
    """Redis's used_memory once lazily freed objects are gone."""
    for _ in range(100):
        info = client.info("memory")
        if not int(info.get("lazyfree_pending_objects", 0)):
            return int(info["used_memory"])
        time.sleep(0.05)
    return int(client.info("memory")["used_memory"])


def _chunks(items: Sequence[Any], size: int = 1_000) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _memory_usage(client: redis.Redis, keys: Sequence[bytes]) -> int:
    """Redis's own per-key accounting (key, value, dict entry): immune to other clients' writes."""
    total = 0
    for chunk in _chunks(keys):
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.memory_usage(key, samples=0)
        total += sum(int(size or 0) for size in pipe.execute())
    return total


def _encodings(client: redis.Redis, keys: Sequence[bytes]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for chunk in _chunks(keys):
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.object("encoding", key)
        for encoding in pipe.execute():
            name = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
            counts[name] = counts.get(name, 0) + 1
    return counts


def _delete(client: redis.Redis, keys: Sequence[bytes]) -> None:
    """DEL, not UNLINK: memory is back when it returns, so the freed bytes can be read at once."""
    for chunk in _chunks(keys):
        client.delete(*chunk)


def _scan(client: redis.Redis, pattern: bytes) -> list[bytes]:
    return list(client.scan_iter(match=pattern, count=10_000))


def _encoding_text(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return ", ".join(f"{name} {count / total:.0%}" for name, count in sorted(counts.items()))


@dataclass(frozen=True)
class BufferClass:
    """One kind of key of the event buffers: entity buffers, their index, the reports."""

    name: str
    keys: int
    members: int
    memory_usage: int
    encodings: dict[str, int]


@dataclass(frozen=True)
class BufferMemory:
    """The event buffers of one simulated population, in their steady state after a trim."""

    scenario: str
    customers: int
    terminals: int
    days: int
    transactions: int
    used_memory: int
    freed: int
    classes: list[BufferClass]

    def by_name(self, name: str) -> BufferClass:
        return next(c for c in self.classes if c.name == name)

    @property
    def memory_usage(self) -> int:
        return sum(c.memory_usage for c in self.classes)


def measure_buffers(
    redis_url: str,
    prefix: str,
    scenario: str,
    data: SimulatedData,
    terminals_fold: int | None,
    trim_every_batch: bool,
) -> BufferMemory:
    """Apply every event and report in batches as the consumer does, trim, measure, delete.

    `trim_every_batch`: the live consumer trims every 5 s, so its buffers never hold
    much more than their horizon (here a trim after each batch, a few hours of
    traffic); a catch-up or a replay applies days of events between two trims. The difference matters: Redis
    stores a sorted set of up to 128 members as a compact listpack and converts a
    larger one to a skiplist, never back, so a buffer that once overgrew stays
    large. `terminals_fold` maps terminal ids modulo that many terminals: the same
    payments at fewer, busier terminals.
    """
    from feature_repo.online import RedisEventBuffers

    client = redis.Redis.from_url(redis_url)
    buffers = RedisEventBuffers(client, prefix)
    events = data.events()
    if terminals_fold is not None:
        events = events.assign(TERMINAL_ID=events["TERMINAL_ID"] % terminals_fold)
    reports = data.fraud_reports.sort_values("REPORT_DATETIME", ignore_index=True)
    try:
        before = _used_memory(client)
        # Event-time order, batch by batch, as the consumer applies them; reports once their time has come.
        report_times = reports["REPORT_DATETIME"].to_numpy()
        done = 0
        for start in range(0, len(events), BATCH_SIZE):
            frame = events.iloc[start : start + BATCH_SIZE]
            buffers.add_transactions(frame)
            until = frame["TX_DATETIME"].to_numpy()[-1]
            due = int(np.searchsorted(report_times, until, side="right"))
            if due > done:
                buffers.add_reports(reports.iloc[done:due])
                done = due
            if trim_every_batch:
                buffers.trim()
        buffers.trim()
        delta = _used_memory(client) - before
        classes = []
        for name, keys in (
            ("customer buffers", _scan(client, f"{prefix}c:*".encode())),
            ("terminal buffers", _scan(client, f"{prefix}t:*".encode())),
            ("entity indexes", [f"{prefix}customers".encode(), f"{prefix}terminals".encode()]),
            ("fraud reports", [f"{prefix}reported".encode()]),
            ("watermark and floor", [f"{prefix}meta".encode()]),
        ):
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.zcard(key)
            members = sum(pipe.execute())
            classes.append(
                BufferClass(name, len(keys), members, _memory_usage(client, keys), _encodings(client, keys))
            )
        before_clear = _used_memory(client)
        buffers.clear()
        freed = before_clear - _used_memory(client)
    finally:
        leftover = _scan(client, f"{prefix}*".encode())
        if leftover:
            _delete(client, leftover)
        client.close()
    terminals = int(events["TERMINAL_ID"].nunique())
    return BufferMemory(
        scenario,
        int(data.customers.shape[0]),
        terminals,
        int((events["TX_DATETIME"].max() - events["TX_DATETIME"].min()).days + 1),
        len(events),
        delta,
        freed,
        classes,
    )


# --- Report ------------------------------------------------------------------------------------

MIB, GIB = 2**20, 2**30
GUIDE_CUSTOMERS, GUIDE_TERMINALS = 10_000_000, 1_000_000
RULE_RATES = (1_000, 10_000, 50_000)
"""Peak events/s the printed partition rule is worked out for."""


@dataclass(frozen=True)
class CapacityBench:
    """What a run measured, the pass/fail lines and the printed report."""

    throughput: list[Throughput]
    buffers: list[BufferMemory]
    checks: list[tuple[bool, str]]
    report: str

    def median(self, name: str) -> Throughput:
        return median_run([t for t in self.throughput if t.variant.name == name])


def median_run(runs: Sequence[Throughput]) -> Throughput:
    """The run with the median rate (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda t: t.rate)
    return ordered[(len(ordered) - 1) // 2]


def _consumer_table(throughput: Sequence[Throughput]) -> str:
    ceiling = median_run([t for t in throughput if t.variant.name == BARE])
    rows = []
    for variant in VARIANTS:
        runs = [t for t in throughput if t.variant is variant]
        t = median_run(runs)
        per_partition = t.rate / variant.processes
        rows.append(
            [
                variant.name,
                str(variant.processes),
                f"{t.events:,}",
                f"{t.rate:,.0f}",
                f"{per_partition:,.0f}",
                f"{t.cores:.2f}",
                f"{t.rate / t.cores:,.0f}" if t.cores > 0 else "",
                f"{t.redis_cpu * 1e6:.1f}" if t.redis_cpu is not None else "",
                f"{per_partition / ceiling.rate:.1%}",
                f"{min(t.overlap for t in runs):.0%}" if variant.processes > 1 else "",
                f"{t.other_cores:.2f}",
            ]
        )
    return markdown_table(
        [
            "variant",
            "processes (1 partition each)",
            "events",
            "events/s",
            "events/s per partition",
            "consumer cores",
            "events/s per core",
            "Redis CPU µs/event",
            "per partition vs bare",
            "overlap",
            "other cores",
        ],
        rows,
    )


def _buffers_tables(scenarios: Sequence[BufferMemory]) -> str:
    summary = []
    detail = []
    for s in scenarios:
        customers, terminals = s.by_name("customer buffers"), s.by_name("terminal buffers")
        summary.append(
            [
                s.scenario,
                f"{s.customers:,}",
                f"{s.terminals:,}",
                f"{s.transactions / s.customers / s.days:.2f}",
                f"{s.used_memory / MIB:.1f}",
                f"{s.freed / MIB:.1f}",
                f"{s.memory_usage / MIB:.1f}",
                f"{s.used_memory / s.customers:,.0f}",
                f"{s.used_memory / s.customers * 1e6 / GIB:.2f}",
                f"{customers.members / max(customers.keys, 1):.0f}",
                f"{terminals.members / max(terminals.keys, 1):.0f}",
            ]
        )
        for c in s.classes:
            entities = {"customer buffers": s.customers, "terminal buffers": s.terminals}.get(c.name)
            detail.append(
                [
                    s.scenario,
                    c.name,
                    f"{c.keys:,}",
                    f"{c.members:,}",
                    f"{c.memory_usage / MIB:.2f}",
                    f"{c.memory_usage / c.members:.0f}" if c.members else "",
                    f"{c.memory_usage / entities:,.0f}" if entities else "",
                    _encoding_text(c.encodings) if c.encodings else "",
                ]
            )
    return "\n\n".join(
        [
            markdown_table(
                [
                    "scenario",
                    "customers",
                    "terminals",
                    "tx per customer-day",
                    "used_memory MiB",
                    "freed MiB",
                    "MEMORY USAGE MiB",
                    "bytes per customer (all keys)",
                    "GiB per million customers",
                    "events per customer buffer",
                    "events per terminal buffer",
                ],
                summary,
            ),
            markdown_table(
                [
                    "scenario",
                    "key kind",
                    "keys",
                    "members",
                    "MEMORY USAGE MiB",
                    "bytes per member",
                    "bytes per entity",
                    "encoding",
                ],
                detail,
                text_columns=2,
            ),
        ]
    )


def _rules(throughput: Sequence[Throughput], buffers: Sequence[BufferMemory]) -> str:
    """The scaling rules of docs/scaling.md, worked out from this run's numbers."""
    one, two = (
        median_run([t for t in throughput if t.variant.name == n]) for n in (STREAM_REDIS, STREAM_REDIS_2)
    )
    planned = one.rate * UTILISATION
    partitions = ", ".join(f"{rate:,}/s: {math.ceil(rate / planned)}" for rate in RULE_RATES)
    lines = [
        f"- Consumers: one drains {one.rate:,.0f} events/s from its partition with the Redis store, on "
        f"{one.cores:.2f} cores; at {UTILISATION:.0%} utilisation plan {planned:,.0f} events/s a partition. "
        f"Partitions (consumers at most as many) for a peak of {partitions}.",
        f"- Two consumer processes on two partitions: {two.rate / one.rate:.2f}x one "
        f"({two.rate:,.0f} vs {one.rate:,.0f} events/s; {os.cpu_count()} cores shared with Redis "
        "and the broker).",
    ]
    if one.redis_cpu:
        lines.append(
            f"- Redis CPU for the event buffers: {one.redis_cpu * 1e6:.1f} µs an event: one Redis core "
            f"(Redis runs commands on one thread) takes about {1 / one.redis_cpu:,.0f} events/s, "
            f"{UTILISATION / one.redis_cpu:,.0f} at {UTILISATION:.0%}."
        )
    scenario = {b.scenario: b for b in buffers}
    live, caught_up, dense = scenario[LIVE], scenario[CAUGHT_UP], scenario[DENSE]

    def part(name: str, unit: str, total: float, count: int, scale: int) -> tuple[str, str, float]:
        return name, f"{total / count:,.0f} per {unit}", total / count * scale

    def buffer_bytes(memory: BufferMemory, kind: str) -> float:
        """A key kind's per-key sum, scaled so that the kinds add up to the scenario's used_memory delta."""
        return memory.by_name(kind).memory_usage * memory.used_memory / memory.memory_usage

    parts = [
        part(
            "customer event buffers",
            "customer",
            buffer_bytes(dense, "customer buffers"),
            dense.customers,
            GUIDE_CUSTOMERS,
        ),
        part(
            f"terminal event buffers, {CUSTOMERS_PER_TERMINAL} customers a terminal",
            "terminal",
            buffer_bytes(dense, "terminal buffers"),
            dense.terminals,
            GUIDE_TERMINALS,
        ),
        part(
            "entity indexes",
            "entity",
            buffer_bytes(dense, "entity indexes"),
            dense.customers + dense.terminals,
            GUIDE_CUSTOMERS + GUIDE_TERMINALS,
        ),
        part(
            "fraud reports (the simulator's fraud share)",
            "customer",
            buffer_bytes(dense, "fraud reports") + buffer_bytes(dense, "watermark and floor"),
            dense.customers,
            GUIDE_CUSTOMERS,
        ),
    ]
    live_total = sum(total for _, _, total in parts)
    grown = part(
        "customer buffers grown by a catch-up",
        "customer",
        buffer_bytes(caught_up, "customer buffers") - buffer_bytes(live, "customer buffers"),
        live.customers,
        GUIDE_CUSTOMERS,
    )
    rows = [[name, unit_bytes, f"{total / GIB:.1f}"] for name, unit_bytes, total in parts]
    rows += [
        ["total, trimmed live", "", f"{live_total / GIB:.1f}"],
        [grown[0], grown[1], f"{grown[2] / GIB:.1f}"],
        ["total after a catch-up", "", f"{(live_total + grown[2]) / GIB:.1f}"],
    ]
    table = markdown_table(
        [
            "Redis for 10 M customers + 1 M terminals",
            "bytes",
            "GiB (used_memory: no fragmentation, no fork headroom)",
        ],
        rows,
        text_columns=2,
    )
    return "\n".join([*lines, "", table])


def _checks(
    throughput: Sequence[Throughput],
    buffers: Sequence[BufferMemory],
    leftover: int,
) -> list[tuple[bool, str]]:
    streams = [d for t in throughput if t.variant.kind == "stream" for d in t.drains]
    expected = sum(d.events[-1] for d in streams)
    landed = sum(d.landed for d in streams)
    extra = sum(d.duplicates + d.dead_letters for d in streams)
    agreement = [(b.scenario, b.used_memory, b.memory_usage) for b in buffers]
    worst = max(agreement, key=lambda a: abs(a[1] / a[2] - 1))
    return [
        (
            landed == expected and extra == 0,
            f"every StreamConsumer run landed each event of its partition once: {landed:,} of {expected:,}, "
            f"{extra} duplicates or dead letters",
        ),
        (
            abs(worst[1] / worst[2] - 1) <= MEMORY_AGREEMENT,
            f"used_memory deltas agree with Redis's per-key MEMORY USAGE within {MEMORY_AGREEMENT:.0%} "
            f"(worst: {worst[0]}, {worst[1] / worst[2] - 1:+.1%}; more would mean other clients "
            "wrote meanwhile)",
        ),
        (leftover == 0, f"no key of this run left in Redis: {leftover} found"),
    ]


def _report(
    result_parts: tuple[list[Throughput], list[BufferMemory]],
    checks: list[tuple[bool, str]],
    notes: list[str],
) -> str:
    throughput, buffers = result_parts
    runs = "; ".join(
        f"{v.name}: "
        + ", ".join(f"{t.rate:,.0f} ({t.other_cores:.2f})" for t in throughput if t.variant is v)
        for v in VARIANTS
    )
    return "\n".join(
        [
            "### Stream consumer: events/s per partition (median run)",
            "",
            _consumer_table(throughput),
            "",
            f"all runs, events/s (other cores): {runs}",
            "",
            "### Online event buffers in Redis (feature_repo.online)",
            "",
            _buffers_tables(buffers),
            "",
            *(f"{'PASS' if passed else 'MISS'}  {text}" for passed, text in checks),
            "",
            "### Scaling rules",
            "",
            _rules(throughput, buffers),
            "",
            *notes,
        ]
    )


def main(argv: list[str] | None = None) -> CapacityBench:
    """Measure consumer throughput and Redis memory, print the tables and the scaling rules."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help=f"events per partition (default {EVENTS:,}; at most ~117,000)",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help=f"runs of each consumer variant (default {REPEAT})"
    )
    parser.add_argument(
        "--customers",
        type=int,
        default=None,
        help=f"simulated customers for the event buffers (default {CUSTOMERS:,}; terminals twice as many)",
    )
    parser.add_argument("--seed", type=int, default=0, help="simulator and data seed (default 0)")
    parser.add_argument("--redis-url", default=REDIS_URL, help=f"the Redis measured (default {REDIS_URL})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_EVENTS:,} events, one run each, {QUICK_CUSTOMERS:,} customers: a smoke run",
    )
    add_results_argument(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    events = args.events or (QUICK_EVENTS if args.quick else EVENTS)
    repeat = args.repeat or (1 if args.quick else REPEAT)
    customers = args.customers or (QUICK_CUSTOMERS if args.quick else CUSTOMERS)
    quiet_warnings()

    client = redis.Redis.from_url(args.redis_url)
    try:
        version = client.info("server")["redis_version"]
    except redis.RedisError as exc:
        raise SystemExit(
            f"cannot reach Redis at {args.redis_url} ({exc}): start it or pass --redis-url"
        ) from exc
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        workdir = Path(tmp)
        throughput = measure_consumers(events, repeat, args.seed, args.redis_url, workdir, run)
        print(
            f"[capacity] event buffers: simulating {customers:,} customers, {BUFFER_DAYS} days ...",
            flush=True,
        )
        data = simulate(
            SimulatorConfig(
                n_customers=customers, n_terminals=2 * customers, n_days=BUFFER_DAYS, seed=args.seed
            )
        )
        buffers = [
            measure_buffers(args.redis_url, f"bench-capacity:{run}-{i}:", name, data, fold, every)
            for i, (name, fold, every) in enumerate(
                (
                    (LIVE, None, True),
                    (CAUGHT_UP, None, False),
                    (DENSE, max(customers // CUSTOMERS_PER_TERMINAL, 1), True),
                )
            )
        ]
    leftover = len(_scan(client, f"bench-capacity:{run}*".encode()))
    client.close()
    checks = _checks(throughput, buffers, leftover)
    notes = [
        f"Redis {version}; {os.cpu_count()} cores; load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after; {time.perf_counter() - started:.0f} s in all",
    ]
    report = _report((throughput, buffers), checks, notes)
    body = (
        f"## Capacity: {events:,} events per partition x {repeat} runs, event buffers of "
        f"{customers:,} customers over {BUFFER_DAYS} days, seed {args.seed}\n\n{report}"
    )
    print(f"\n{body}\n", flush=True)
    write_result("capacity", body, argv, args.quick, args.results)
    return CapacityBench(throughput, buffers, checks, report)


if __name__ == "__main__":
    main()
