"""The Kafka event bus (confluent-kafka), and librdkafka's mock cluster for the local profile.

The local profile runs the very same clients against the mock cluster, so the
demo and the tests exercise the production code path, not a stand-in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streaming.bus import DeliveryError, Message

ADMIN_TIMEOUT_S = 15.0

MOCK_CLUSTER_ID_PREFIX = "mockCluster"
"""librdkafka names its mock clusters so; they cannot create topics through the admin API."""


class KafkaProducer:
    """An idempotent producer (acks=all): a retried send is never written twice."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = confluent_kafka.Producer(
            {**config, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
        )
        self._failures: list[KafkaError] = []

    def _on_delivery(self, error: KafkaError | None, _message: confluent_kafka.Message) -> None:
        if error is not None:
            self._failures.append(error)

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                # The local queue is full: wait for deliveries rather than drop the message.
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30) -> None:
        undelivered = self._producer.flush(timeout_s)
        failures, self._failures = self._failures, []
        if undelivered or failures:
            raise DeliveryError(
                f"{undelivered} messages still queued after {timeout_s}s, {len(failures)} failed"
                + (f" (first: {failures[0]})" if failures else "")
            )


class KafkaConsumer:
    """A group member that only ever commits explicitly, and synchronously."""

    def __init__(self, config: dict[str, Any], topic: str) -> None:
        self._consumer = confluent_kafka.Consumer(config)
        self._consumer.subscribe([topic])
        self._deferred_error: KafkaError | None = None

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        self._raise_deferred()
        messages = []
        for record in self._consumer.consume(num_messages=max_messages, timeout=timeout_s):
            error = record.error()
            if error is None:
                messages.append(
                    Message(
                        topic=record.topic() or "",
                        key=record.key(),
                        value=record.value() or b"",
                        position=f"{record.partition()}:{record.offset()}",
                    )
                )
            elif error.code() != KafkaError._PARTITION_EOF:
                # Raised on the next poll, not now: raising here would drop this batch's good
                # messages although the consumer's position has already moved past them.
                self._deferred_error = error
        if not messages:
            self._raise_deferred()
        return messages

    def _raise_deferred(self) -> None:
        if self._deferred_error is not None:
            error, self._deferred_error = self._deferred_error, None
            raise KafkaException(error)

    def commit(self, messages: Sequence[Message]) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            partition, offset = (int(part) for part in message.position.split(":"))
            key = (message.topic, partition)
            next_offsets[key] = max(next_offsets.get(key, 0), offset + 1)
        if not next_offsets:
            return
        offsets = [TopicPartition(topic, part, offset) for (topic, part), offset in next_offsets.items()]
        committed = self._consumer.commit(offsets=offsets, asynchronous=False)
        failed = [part for part in committed or [] if part.error is not None]
        if failed:
            raise KafkaException(failed[0].error)

    def close(self) -> None:
        self._consumer.close()


class KafkaBus:
    """Kafka behind the `EventBus` interface.

    Args:
        bootstrap_servers: "host:port,..." of the cluster (or of `mock_kafka_cluster`).
        partitions: partitions per topic `ensure_topics` creates; the mock cluster always makes 4.
        session_timeout_ms: how long a killed consumer keeps its partitions before the group
            hands them to the others; Kafka's default is 45 s, brokers accept 6 s and up.
        prefetch_kbytes: what a consumer may buffer ahead of `poll`, so a slow sink stops
            fetching instead of filling memory (librdkafka's default is 64 MiB). A soft cap:
            fetches already in flight still land (measured: 12 MB buffered for a 1 MiB cap
            over 4 partitions of 10 kB messages).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        partitions: int = 3,
        session_timeout_ms: int = 45_000,
        prefetch_kbytes: int = 8_192,
    ) -> None:
        self._config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers}
        self._partitions = partitions
        self._session_timeout_ms = session_timeout_ms
        self._prefetch_kbytes = prefetch_kbytes

    def producer(self) -> KafkaProducer:
        return KafkaProducer(self._config)

    def consumer(self, topic: str, group: str, name: str) -> KafkaConsumer:
        return KafkaConsumer(
            {
                **self._config,
                "group.id": group,
                "client.id": name,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": self._session_timeout_ms,
                "queued.max.messages.kbytes": self._prefetch_kbytes,
            },
            topic,
        )

    def ensure_topics(self, topics: Iterable[str]) -> None:
        admin = AdminClient(self._config)
        metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_S)
        missing = sorted(set(topics) - set(metadata.topics))
        if not missing:
            return
        if (metadata.cluster_id or "").startswith(MOCK_CLUSTER_ID_PREFIX):
            self._auto_create(missing)
            return
        futures = admin.create_topics(
            [NewTopic(topic, num_partitions=self._partitions) for topic in missing],
            request_timeout=ADMIN_TIMEOUT_S,
        )
        for future in futures.values():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise

    def _auto_create(self, topics: list[str]) -> None:
        """Create topics the way the mock cluster allows: a producer's metadata request for them."""
        producer = confluent_kafka.Producer(self._config)
        try:
            for topic in topics:
                found = producer.list_topics(topic=topic, timeout=ADMIN_TIMEOUT_S).topics[topic]
                if found.error is not None:
                    raise KafkaException(found.error)
        finally:
            producer.close()


@contextmanager
def mock_kafka_cluster(num_brokers: int = 3) -> Iterator[str]:
    """An in-memory Kafka cluster (librdkafka's mock brokers); yields its bootstrap servers.

    The cluster lives inside a producer handle of *this* process, so it lasts
    while the context is open and its data is lost when it closes. Its brokers
    listen on real 127.0.0.1 TCP ports, though: clients in other processes
    (checked with child `python -c` producers and consumers) produce, join
    consumer groups and commit offsets like against a real cluster, and a
    consumer process killed with SIGKILL loses nothing: after the session
    timeout its partitions go to the group's next member from the last commit.
    So the hosting process must be the long-lived one (the demo runner, a test
    session); the consumers it feeds may die freely. The mock cluster does not
    implement CreateTopics: it makes a topic, always with 4 partitions, on the
    first producer metadata request for it, which `KafkaBus.ensure_topics` uses.
    """
    host = confluent_kafka.Producer({"test.mock.num.brokers": num_brokers})
    try:
        brokers = host.list_topics(timeout=ADMIN_TIMEOUT_S).brokers.values()
        yield ",".join(f"{broker.host}:{broker.port}" for broker in brokers)
    finally:
        host.close()
