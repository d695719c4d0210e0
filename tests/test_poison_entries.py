"""Poison entries of any shape, on either bus, are dead-lettered and ingestion goes on.

A poison entry is one the bus cannot even make an event of: a Redis stream entry
without the `v` field or with other fields, a Kafka record with no value, or one
the client could not read. Written between good events, each must come out as a
dead letter (reason, topic, position), the good events around it must land, and
a consumer restarted with the entry still pending must not stop on it again.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka
import pandas as pd
import pytest
import redis
from confluent_kafka import KafkaError

from simulator import SimulatedData, SimulatorConfig, simulate
from streaming.bus import TOPICS, Message
from streaming.bus_kafka import KafkaConsumer, read_record
from streaming.config import StreamConfig
from streaming.consumer import TRANSACTIONS, ConsumerSettings, StreamConsumer, TopicConsumer
from streaming.events import encode_transaction, transactions_from_frame
from streaming.metrics import ConsumerMetrics
from tests.conftest import REDIS_URL, read_dead_letters, stream_resource


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    data: SimulatedData = simulate(SimulatorConfig(n_customers=30, n_terminals=60, n_days=3, seed=11))
    return data.events().iloc[:120]


def _consume(stream: StreamConfig, name: str = "consumer-0") -> StreamConsumer:
    return StreamConsumer(
        stream.bus(),
        stream.topics(),
        stream.landing(),
        stream.online(),
        ConsumerSettings(group=stream.group, name=name, batch_size=20, status_every_s=0.5),
    )


def _landed_ids(stream: StreamConfig) -> set[int]:
    landing = stream.landing()
    days = landing.days("transactions")
    if not days:
        return set()
    frame = pd.concat([landing.read_day("transactions", day) for day in days], ignore_index=True)
    return set(frame["TRANSACTION_ID"].tolist())


# --- Redis Streams --------------------------------------------------------------------------------

GOOD_FIELDS_EVENT = {
    "TRANSACTION_ID": 99_000_001,
    "TX_DATETIME": "2018-04-02T10:00:00+00:00",
    "CUSTOMER_ID": 1,
    "TERMINAL_ID": 2,
    "TX_AMOUNT": 12.5,
}
GOOD_PAYLOAD = json.dumps(GOOD_FIELDS_EVENT).encode()

REDIS_POISON: dict[str, tuple[dict[bytes, bytes], str]] = {
    "no v field": ({b"x": b"y"}, "poison Redis entry: no 'v' field"),
    "event written as fields": (
        {name.encode(): str(value).encode() for name, value in GOOD_FIELDS_EVENT.items()},
        "poison Redis entry: no 'v' field",
    ),
    "key only": ({b"k": b"7"}, "poison Redis entry: no 'v' field"),
    "binary field name, no v": ({b"\xff\xfe": b"\xfe\x01"}, "poison Redis entry: no 'v' field"),
    "extra field": ({b"v": GOOD_PAYLOAD, b"trace": b"abc"}, "poison Redis entry: fields other than"),
    "extra binary field beside v and k": (
        {b"v": GOOD_PAYLOAD, b"k": b"1", b"\xff": b"\xfe"},
        "poison Redis entry: fields other than",
    ),
    # The right shape with a bad payload: the decoder's refusal, as before.
    "v not UTF-8": ({b"v": b"\xff\xfe garbage"}, "malformed JSON: not UTF-8"),
    "v empty": ({b"v": b""}, "malformed JSON"),
}


@pytest.mark.integration
def test_redis_poison_entries_are_dead_lettered_and_ingestion_goes_on(
    tmp_path: Path, namespace: str, kafka_bootstrap: str, events: pd.DataFrame
) -> None:
    stream = stream_resource("redis", tmp_path, namespace, kafka_bootstrap, batch_size=20)
    topics = stream.topics()
    client = redis.Redis.from_url(REDIS_URL)
    good = [encode_transaction(tx) for tx in transactions_from_frame(events)]
    first, second = good[:80], good[80:]

    # Good events with each poison entry between them, in the same micro-batches.
    positions: dict[str, str] = {}
    per_gap = len(first) // len(REDIS_POISON)
    for n, (case, (fields, _reason)) in enumerate(REDIS_POISON.items()):
        for payload in first[n * per_gap : (n + 1) * per_gap]:
            client.xadd(topics.transactions, {b"v": payload})
        positions[case] = client.xadd(topics.transactions, fields).decode()
    for payload in first[len(REDIS_POISON) * per_gap :]:
        client.xadd(topics.transactions, {b"v": payload})

    # A previous life of consumer-0 read every entry and died before acknowledging any: on
    # restart the member re-reads its own pending entries first, poison ones included.
    client.xgroup_create(topics.transactions, stream.group, id="0", mkstream=True)
    client.xreadgroup(stream.group, "consumer-0", {topics.transactions: ">"})
    assert client.xpending(topics.transactions, stream.group)["pending"] == len(first) + len(REDIS_POISON)

    with _consume(stream) as consumer:
        totals = consumer.run(idle_exit_s=0.5)
    assert totals["transactions"].dead_letters == len(REDIS_POISON)
    assert totals["transactions"].landed == len(first)
    assert _landed_ids(stream) == set(events["TRANSACTION_ID"].iloc[:80])

    records = read_dead_letters(stream, len(REDIS_POISON))
    by_position = {record["position"]: record for record in records}
    assert len(records) == len(REDIS_POISON)
    for case, (_fields, reason) in REDIS_POISON.items():
        record = by_position.get(positions[case])
        assert record is not None, f"{case}: no dead letter at {positions[case]}: {sorted(by_position)}"
        assert record["reason"].startswith(reason), (case, record["reason"])
        assert (record["topic"], record["consumer"]) == (topics.transactions, "consumer-0")
    # A poison entry's dead letter keeps every field, binary ones in base64.
    pairs = json.loads(by_position[positions["binary field name, no v"]]["payload"])
    assert pairs == [[{"base64": "//4="}, {"base64": "/gE="}]]
    # Everything was acknowledged: nothing is left pending to stop the next life.
    assert client.xpending(topics.transactions, stream.group)["pending"] == 0

    # The restarted consumer goes on: new good events and another poison entry after them.
    for payload in second[:20]:
        client.xadd(topics.transactions, {b"v": payload})
    late = client.xadd(topics.transactions, {b"no_v": b"1"}).decode()
    for payload in second[20:]:
        client.xadd(topics.transactions, {b"v": payload})
    with _consume(stream) as restarted:
        again = restarted.run(idle_exit_s=0.5)
    assert (again["transactions"].landed, again["transactions"].dead_letters) == (len(second), 1)
    assert _landed_ids(stream) == set(events["TRANSACTION_ID"])
    assert client.xpending(topics.transactions, stream.group)["pending"] == 0
    records = read_dead_letters(stream, len(REDIS_POISON) + 1)
    assert [r["position"] for r in records if r["position"] == late] == [late]
    client.close()


@pytest.mark.integration
def test_redis_poison_entry_claimed_from_a_dead_consumer_is_dead_lettered(namespace: str) -> None:
    """XAUTOCLAIM hands a dead member's poison entry over like any other: it is delivered, not raised."""
    from streaming.bus_redis import RedisStreamBus

    bus = RedisStreamBus(REDIS_URL, prefix=namespace, claim_min_idle_ms=0)
    client = redis.Redis.from_url(REDIS_URL)
    stream = f"{namespace}transactions"
    dead = bus.consumer("transactions", "g", "dead")
    client.xadd(stream, {b"v": GOOD_PAYLOAD})
    poison = client.xadd(stream, {b"x": b"y"}).decode()
    assert len(dead.poll(10, 0.1)) == 2  # read, never acknowledged
    live = bus.consumer("transactions", "g", "live")
    claimed = live.claim_stale(0, 10)
    assert [(m.position, m.problem is None) for m in claimed] == [
        (claimed[0].position, True),
        (poison, False),
    ]
    live.commit(claimed)
    assert client.xpending(stream, "g")["pending"] == 0
    for consumer in (dead, live):
        consumer.close()
    client.close()


# --- Kafka ------------------------------------------------------------------------------------------

KAFKA_POISON: dict[str, tuple[dict[str, Any], str]] = {
    "null value (tombstone), binary key": (
        {"value": None, "key": b"\xff\x00"},
        "poison Kafka record: no value (null)",
    ),
    "null value with headers": (
        {"value": None, "headers": [("trace", b"\xff"), ("empty", None)]},
        "poison Kafka record: no value (null)",
    ),
    "binary garbage with headers and a binary key": (
        {"value": b"\x00\xff\xfe\x80", "key": b"\x80", "headers": [("h", b"\xff")]},
        "malformed JSON: not UTF-8",
    ),
    "empty value": ({"value": b""}, "malformed JSON"),
    "good event with odd headers": (
        {"value": GOOD_PAYLOAD[:-1] + b',"TX_AMOUNT":-0.0}', "headers": [("\u00e9", b"\x00")]},
        "malformed JSON: duplicate key",
    ),
}


def test_kafka_poison_records_are_dead_lettered_and_ingestion_goes_on(
    tmp_path: Path, namespace: str, kafka_bootstrap: str, events: pd.DataFrame
) -> None:
    stream = stream_resource("kafka", tmp_path, namespace, kafka_bootstrap, batch_size=20)
    stream.bus().ensure_topics(stream.topics().names())
    raw = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap, "logger": logging.getLogger("raw")})
    try:
        _kafka_poison_between_good_events(stream, raw, events)
    finally:
        raw.close()


def _kafka_poison_between_good_events(
    stream: StreamConfig, raw: confluent_kafka.Producer, events: pd.DataFrame
) -> None:
    topics = stream.topics()
    good = [encode_transaction(tx) for tx in transactions_from_frame(events)]
    first, second = good[:80], good[80:]
    per_gap = len(first) // len(KAFKA_POISON)
    positions: dict[str, str] = {}

    def delivered(case: str) -> Any:
        def report(error: KafkaError | None, message: confluent_kafka.Message) -> None:
            assert error is None, error
            positions[case] = f"{message.partition()}:{message.offset()}"

        return report

    for n, (case, (record, _reason)) in enumerate(KAFKA_POISON.items()):
        for payload in first[n * per_gap : (n + 1) * per_gap]:
            raw.produce(topics.transactions, value=payload, partition=0)
        raw.produce(topics.transactions, partition=0, on_delivery=delivered(case), **record)
    for payload in first[len(KAFKA_POISON) * per_gap :]:
        raw.produce(topics.transactions, value=payload, partition=0)
    assert raw.flush(30) == 0

    with _consume(stream) as consumer:
        totals = consumer.run(idle_exit_s=0.5)
    assert totals["transactions"].dead_letters == len(KAFKA_POISON)
    assert totals["transactions"].landed == len(first)
    assert _landed_ids(stream) == set(events["TRANSACTION_ID"].iloc[:80])
    records = {r["position"]: r for r in read_dead_letters(stream, len(KAFKA_POISON))}
    assert len(records) == len(KAFKA_POISON)
    for case, (_record, reason) in KAFKA_POISON.items():
        letter = records.get(positions[case])
        assert letter is not None, f"{case}: no dead letter at {positions[case]}: {sorted(records)}"
        assert letter["reason"].startswith(reason), (case, letter["reason"])
        assert letter["topic"] == topics.transactions

    # A restart goes on past them: new events (and another tombstone) land, nothing comes again.
    for payload in second[:20]:
        raw.produce(topics.transactions, value=payload, partition=1)
    raw.produce(topics.transactions, value=None, partition=1)
    for payload in second[20:]:
        raw.produce(topics.transactions, value=payload, partition=1)
    assert raw.flush(30) == 0
    with _consume(stream) as restarted:
        again = restarted.run(idle_exit_s=0.5)
    assert (again["transactions"].landed, again["transactions"].dead_letters) == (len(second), 1)
    assert _landed_ids(stream) == set(events["TRANSACTION_ID"])


def _record(**fields: Any) -> confluent_kafka.Message:
    return confluent_kafka.Message(**{"topic": "tx", "partition": 2, "offset": 41, **fields})


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (_record(value=None, key=b"k"), "poison Kafka record: no value (null)"),
        (
            _record(value=b"\x00", error=KafkaError(KafkaError._BAD_MSG, "CRC mismatch")),
            "poison Kafka record: the client could not read it (CRC mismatch)",
        ),
        (
            _record(value=None, error=KafkaError(KafkaError._BAD_COMPRESSION, "lz4 frame")),
            "poison Kafka record: the client could not read it (lz4 frame)",
        ),
        (_record(value="text, not bytes"), "poison Kafka record: its key and value must be bytes"),
        (_record(value=b"{}", key="text key"), "poison Kafka record: its key and value must be bytes"),
    ],
    ids=["tombstone", "corrupt record", "undecompressable record", "str value", "str key"],
)
def test_kafka_unreadable_records_become_poison_messages_at_their_offset(
    record: confluent_kafka.Message, problem: str
) -> None:
    message = read_record(record)
    assert isinstance(message, Message)
    assert (message.topic, message.position, message.problem) == ("tx", "2:41", problem)
    assert isinstance(message.value, bytes) and (message.key is None or isinstance(message.key, bytes))


def test_kafka_errors_without_a_record_are_still_raised_and_eof_ignored() -> None:
    assert read_record(_record(error=KafkaError(KafkaError._PARTITION_EOF))) is None
    transport = KafkaError(KafkaError._TRANSPORT, "broker down")
    assert read_record(_record(error=transport, offset=-1001)) is transport
    # A poison error code at no known offset is not a record either: raised, not committed past.
    unplaced = KafkaError(KafkaError._BAD_MSG, "corrupt")
    assert read_record(_record(error=unplaced, offset=-1001)) is unplaced
    assert read_record(_record(value=b"{}", key=b"7")) == Message("tx", b"7", b"{}", "2:41")


class _Queued:
    """confluent-kafka's consumer reduced to a queue of records, for `KafkaConsumer.poll`."""

    def __init__(self, records: list[confluent_kafka.Message]) -> None:
        self.records = records

    def consume(self, num_messages: int, timeout: float) -> list[confluent_kafka.Message]:
        taken, self.records = self.records[:num_messages], self.records[num_messages:]
        return taken

    def poll(self, timeout: float) -> None:
        return None


def test_kafka_consumer_delivers_a_corrupt_record_instead_of_raising_on_it() -> None:
    consumer = KafkaConsumer.__new__(KafkaConsumer)
    consumer._topic = "tx"
    consumer._deferred_error = None
    consumer._consumer = _Queued(  # type: ignore[assignment]
        [
            _record(value=b"{}", offset=40),
            _record(value=None, offset=41, error=KafkaError(KafkaError._BAD_MSG, "CRC mismatch")),
            _record(value=b"{}", offset=42),
        ]
    )
    messages = consumer.poll(10, 0)
    assert [(m.position, m.problem is not None) for m in messages] == [
        ("2:40", False),
        ("2:41", True),
        ("2:42", False),
    ]
    assert consumer.poll(10, 0) == []  # nothing deferred to raise: the batch goes on


def test_a_poison_message_is_dead_lettered_by_the_consumer_with_its_problem() -> None:
    """Through the consumer's own step, with a bus double: the problem is the dead letter's reason."""

    class _Bus:
        def __init__(self, messages: list[Message]) -> None:
            self.messages = messages
            self.sent: list[tuple[str, Any, bytes | None]] = []
            self.committed: list[Message] = []

        def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
            taken, self.messages = self.messages, []
            return taken

        def commit(self, messages: list[Message]) -> None:
            self.committed += messages

        def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
            self.sent.append((topic, json.loads(value), key))

        def flush(self, timeout_s: float = 30) -> None:
            pass

    poison = Message("tx", b"k", b'[["x","y"]]', "1-0", "poison Redis entry: no 'v' field (it has 'x')")
    bus = _Bus([poison])
    topics = TOPICS.prefixed(f"p{uuid.uuid4().hex[:6]}_")

    class _Landing:
        def land(self, *_args: Any) -> Any:
            raise AssertionError("nothing to land")

    consumer = TopicConsumer(
        kind=TRANSACTIONS,
        consumer=bus,  # type: ignore[arg-type]
        producer=bus,
        topics=topics,
        landing=_Landing(),  # type: ignore[arg-type]
        online=None,  # type: ignore[arg-type]
        settings=ConsumerSettings(name="c"),
        metrics=ConsumerMetrics(),
    )
    batch = consumer.step(0)
    assert batch.dead_letters == 1
    ((topic, record, key),) = bus.sent
    assert (topic, key) == (topics.dead_letters, b"k")
    assert record["reason"] == poison.problem and record["position"] == "1-0"
    assert record["payload"] == '[["x","y"]]'
    assert bus.committed == [poison]
