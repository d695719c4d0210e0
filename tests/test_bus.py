"""The event bus contract, against librdkafka's mock Kafka cluster and this machine's real Redis.

Every test works in its own namespace (topic prefix, Redis key prefix), so
runs sharing the cluster or the Redis never see each other's messages.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from streaming.bus import TOPICS, Consumer, DeliveryError, EventBus, Message, Topics
from streaming.bus_kafka import KafkaBus
from streaming.bus_redis import RedisStreamBus
from tests.conftest import REDIS_URL

SESSION_TIMEOUT_MS = 6_000
"""The broker minimum: how long a SIGKILLed Kafka consumer keeps its partitions."""

CONSUME_AND_DIE = """
import json, sys, time
from streaming.bus_kafka import KafkaBus

bootstrap, topic, group, expected, committed, session_timeout_ms = sys.argv[1:]
consumer = KafkaBus(bootstrap, session_timeout_ms=int(session_timeout_ms)).consumer(topic, group, "doomed")
got = []
deadline = time.monotonic() + 30
while len(got) < int(expected) and time.monotonic() < deadline:
    got += consumer.poll(100, 0.2)
consumer.commit(got[: int(committed)])
print(json.dumps([m.position for m in got[: int(committed)]]), flush=True)
sys.stdin.read()
"""
"""A consumer process that reads everything, commits only a prefix, then waits to be killed."""


@pytest.fixture
def bootstrap(kafka_bootstrap: str) -> str:
    """The session's mock Kafka cluster (tests/conftest.py)."""
    return kafka_bootstrap


@pytest.fixture
def topics() -> Topics:
    return TOPICS.prefixed(f"t{uuid.uuid4().hex[:8]}_")


@pytest.fixture
def kafka_bus(bootstrap: str, topics: Topics) -> KafkaBus:
    bus = KafkaBus(bootstrap, session_timeout_ms=SESSION_TIMEOUT_MS)
    bus.ensure_topics(topics.names())
    return bus


@pytest.fixture
def redis_prefix(namespace: str) -> str:
    """A key prefix of this test alone, its keys deleted afterwards (tests/conftest.py)."""
    return namespace


@pytest.fixture
def redis_bus(redis_prefix: str) -> RedisStreamBus:
    return RedisStreamBus(REDIS_URL, prefix=redis_prefix, claim_min_idle_ms=200)


@pytest.fixture(params=["kafka_bus", pytest.param("redis_bus", marks=pytest.mark.integration)])
def bus(request: pytest.FixtureRequest) -> EventBus:
    bus: EventBus = request.getfixturevalue(request.param)
    return bus


def produce(bus: EventBus, topic: str, count: int, start: int = 0) -> None:
    producer = bus.producer()
    for i in range(start, start + count):
        producer.send(topic, str(i).encode(), key=f"k{i % 10}".encode())
    producer.flush(10)


def drain(consumer: Consumer, expected: int, batch: int = 100, deadline_s: float = 20) -> list[Message]:
    """Poll until `expected` messages came, then once more to catch any extra one."""
    got: list[Message] = []
    end = time.monotonic() + deadline_s
    while len(got) < expected and time.monotonic() < end:
        messages = consumer.poll(batch, 0.2)
        assert len(messages) <= batch
        got += messages
    return got + consumer.poll(batch, 0.5)


def values(messages: list[Message]) -> list[int]:
    return [int(message.value) for message in messages]


def test_round_trip_delivers_each_message_once_in_key_order(bus: EventBus, topics: Topics) -> None:
    produce(bus, topics.transactions, 1_000)
    consumer = bus.consumer(topics.transactions, "round-trip", "c1")
    got: list[Message] = []
    end = time.monotonic() + 20
    while len(got) < 1_000 and time.monotonic() < end:
        batch = consumer.poll(100, 0.2)
        assert len(batch) <= 100
        consumer.commit(batch)
        got += batch
    got += consumer.poll(100, 0.5)
    consumer.close()

    assert sorted(values(got)) == list(range(1_000))
    for key in {message.key for message in got}:
        in_key = values([message for message in got if message.key == key])
        assert in_key == sorted(in_key), f"key {key!r} out of order"
    assert {message.topic for message in got} == {topics.transactions}


def test_uncommitted_messages_come_again_and_committed_ones_do_not(bus: EventBus, topics: Topics) -> None:
    produce(bus, topics.transactions, 50)
    first = bus.consumer(topics.transactions, "redelivery", "c1")
    read = drain(first, 50, batch=10)
    assert sorted(values(read)) == list(range(50))
    first.commit(read[:20])
    first.close()

    # The same instance restarted: what it did not commit comes again, and only that.
    second = bus.consumer(topics.transactions, "redelivery", "c1")
    again = drain(second, 30, batch=10)
    second.close()
    assert sorted(values(again)) == sorted(values(read[20:]))


@pytest.mark.integration
def test_redis_live_consumer_claims_a_dead_consumers_pending_entries(
    redis_bus: RedisStreamBus, redis_prefix: str
) -> None:
    topic = TOPICS.transactions
    produce(redis_bus, topic, 20)
    dead = redis_bus.consumer(topic, "claims", "dead")
    read = drain(dead, 20)
    dead.close()
    live = redis_bus.consumer(topic, "claims", "live")

    assert live.claim_stale(min_idle_ms=60_000) == []
    time.sleep(0.3)
    claimed = live.poll(100, 0.1)
    assert [m.position for m in claimed] == [m.position for m in read]
    # Entries in flight are not claimed back by their own consumer, however slow it is.
    time.sleep(0.3)
    assert live.poll(100, 0.1) == []
    live.commit(claimed)
    live.close()
    client = redis.Redis.from_url(REDIS_URL)
    assert client.xpending(redis_prefix + topic, "claims")["pending"] == 0
    client.close()


def test_kafka_consumer_killed_before_commit_loses_nothing(
    bootstrap: str, kafka_bus: KafkaBus, topics: Topics
) -> None:
    """SIGKILL in a separate process: the mock cluster is shared across processes like a real one."""
    produce(kafka_bus, topics.transactions, 100)
    args = [bootstrap, topics.transactions, "killed", "100", "40", str(SESSION_TIMEOUT_MS)]
    child = subprocess.Popen(
        [sys.executable, "-c", CONSUME_AND_DIE, *args],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        committed = set(json.loads(child.stdout.readline()))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)

    consumer = kafka_bus.consumer(topics.transactions, "killed", "restarted")
    again = drain(consumer, 60, deadline_s=SESSION_TIMEOUT_MS / 1000 + 20)
    consumer.close()
    redelivered = {message.position for message in again}
    assert len(committed) == 40
    assert len(again) == len(redelivered) == 60
    assert len(committed | redelivered) == 100


def test_kafka_flush_raises_when_no_broker_answers(topics: Topics) -> None:
    producer = KafkaBus("127.0.0.1:1").producer()
    producer.send(topics.transactions, b"lost")
    with pytest.raises(DeliveryError):
        producer.flush(timeout_s=1)


@pytest.mark.integration
def test_redis_flush_raises_when_the_server_is_unreachable(topics: Topics) -> None:
    producer = RedisStreamBus("redis://127.0.0.1:1/0?socket_connect_timeout=0.5").producer()
    producer.send(topics.transactions, b"lost")
    with pytest.raises(DeliveryError):
        producer.flush(timeout_s=1)
