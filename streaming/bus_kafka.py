"""The Kafka event bus (confluent-kafka), and librdkafka's mock cluster for the local profile.

The local profile runs the very same clients against the mock cluster, so the
demo and the tests exercise the production code path, not a stand-in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import confluent_kafka
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from settings.stream import PLAINTEXT_KAFKA, KafkaSecurity
from streaming.bus import BusUnavailableError, CommitLostError, DeliveryError, Message

ADMIN_TIMEOUT_S = 15.0
LOG = logging.getLogger("streaming.kafka")
REBALANCE_ERRORS = frozenset(
    {KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.UNKNOWN_MEMBER_ID}
)
"""Commit refusals that only mean the group moved on: the batch comes again."""
UNAVAILABLE_ERRORS = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._WAIT_COORD,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.REQUEST_TIMED_OUT,
    }
)
"""Errors that mean the brokers did not answer: `BusUnavailableError`, retried by the consumer."""

MOCK_CLUSTER_ID_PREFIX = "mockCluster"
"""librdkafka names its mock clusters so; they cannot create topics through the admin API."""


class KafkaProducer:
    """An idempotent producer (acks=all): a retried send is never written twice.

    Batches are LZ4-compressed: JSON events shrink about fourfold, on the wire
    and in the brokers' logs (the mock cluster keeps only 5 MiB per partition).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self._producer = confluent_kafka.Producer(
            {**config, "acks": "all", "enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4"}
        )
        self._failures: list[KafkaError] = []
        self._delivered = 0

    def _on_delivery(self, error: KafkaError | None, _message: confluent_kafka.Message) -> None:
        if error is None:
            self._delivered += 1
        else:
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
        """Wait for every queued message; on failure, none of them is left to be sent later.

        Left queued, librdkafka would deliver them after the sender was told to resend:
        messages not yet sent are purged, so they are certainly not stored; those already
        sent may still be (`DeliveryError.possibly_stored`).
        """
        undelivered = self._producer.flush(timeout_s)
        if undelivered:
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.flush(0)  # the purged messages' delivery reports
        failures, self._failures = self._failures, []
        delivered, self._delivered = self._delivered, 0
        if undelivered or failures:
            possibly = delivered > 0 or any(error.code() not in NOT_STORED for error in failures)
            raise DeliveryError(
                f"{undelivered} messages not delivered after {timeout_s}s, {len(failures)} failed"
                + (f" (first: {failures[0]})" if failures else ""),
                possibly_stored=possibly,
            )


NOT_STORED = frozenset({KafkaError._PURGE_QUEUE})
"""Delivery errors that prove a message was never stored: purged before it was sent."""

POISON_ERRORS = frozenset(
    {
        KafkaError._BAD_MSG,
        KafkaError._BAD_COMPRESSION,
        KafkaError._KEY_DESERIALIZATION,
        KafkaError._VALUE_DESERIALIZATION,
    }
)
"""Errors of one record the client could not read (corrupt, undecompressable): at a known offset, the
record is poison, dead-lettered and committed past; raising would meet it again after every restart."""


def read_record(record: confluent_kafka.Message) -> Message | KafkaError | None:
    """One polled record as a `Message` (a poison one when it holds no readable event), an error to
    raise, or None for end-of-partition notices.

    Poison: a record with no value (null: a tombstone, which no event producer writes), a value or
    key that is not bytes, or one of `POISON_ERRORS` at a known offset. Its `problem` says which.
    Any other value, binary garbage included, goes to the decoder, which refuses it with its reason.
    """
    error = record.error()
    if error is not None and error.code() == KafkaError._PARTITION_EOF:
        return None
    topic, partition, offset = record.topic(), record.partition(), record.offset()
    key, value = record.key(), record.value()
    if error is not None:
        at_a_record = bool(topic) and partition is not None and offset is not None and offset >= 0
        if error.code() not in POISON_ERRORS or not at_a_record:
            return error
        problem = f"poison Kafka record: the client could not read it ({error.str()})"
    elif value is None:
        problem = "poison Kafka record: no value (null)"
    elif type(value) is not bytes or (key is not None and type(key) is not bytes):
        problem = "poison Kafka record: its key and value must be bytes"
    else:
        return Message(topic or "", key, value, f"{partition}:{offset}")
    raw = value if type(value) is bytes else b"" if value is None else repr(value).encode()
    return Message(topic or "", key if type(key) is bytes else None, raw, f"{partition}:{offset}", problem)


class KafkaConsumer:
    """A group member that only ever commits explicitly, and synchronously."""

    def __init__(self, config: dict[str, Any], topic: str) -> None:
        self._consumer = confluent_kafka.Consumer(config)
        self._consumer.subscribe([topic])
        self._topic = topic
        self._partitions: list[TopicPartition] = []
        self._deferred_error: KafkaError | None = None

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        self._raise_deferred()
        # consume() waits for a full batch until the timeout: take what is queued now, and
        # wait only when nothing is, so a quiet topic never stalls the consumer's other topics.
        records = self._consumer.consume(num_messages=max_messages, timeout=0)
        if not records and (first := self._consumer.poll(timeout_s)) is not None:
            records = [first, *self._consumer.consume(num_messages=max_messages - 1, timeout=0)]
        messages = []
        for record in records:
            read = read_record(record)
            if isinstance(read, Message):
                messages.append(read)
            elif read is not None:
                # Raised on the next poll, not now: raising here would drop this batch's good
                # messages although the consumer's position has already moved past them.
                self._deferred_error = read
        if not messages:
            self._raise_deferred()
        return messages

    def _raise_deferred(self) -> None:
        if self._deferred_error is not None:
            error, self._deferred_error = self._deferred_error, None
            _raise(error)

    def rewind(self) -> None:
        assigned = self._consumer.assignment()
        if not assigned:
            return
        try:
            committed = self._consumer.committed(assigned, timeout=ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            _raise(exc.args[0])
        for position in committed:
            if position.offset < 0:  # nothing committed yet: from the start, as auto.offset.reset says
                position = TopicPartition(position.topic, position.partition, OFFSET_BEGINNING)
            self._consumer.seek(position)

    def commit(self, messages: Sequence[Message]) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            partition, offset = (int(part) for part in message.position.split(":"))
            key = (message.topic, partition)
            next_offsets[key] = max(next_offsets.get(key, 0), offset + 1)
        if not next_offsets:
            return
        offsets = [TopicPartition(topic, part, offset) for (topic, part), offset in next_offsets.items()]
        try:
            committed = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            _raise(exc.args[0])
        errors = [part.error for part in committed or [] if part.error is not None]
        if errors:
            _raise(errors[0])

    def lag(self) -> int | None:
        # Every partition of the topic, not only this member's: a partition still held by a
        # killed member until its session times out has a lag that a caller must not miss.
        if not self._partitions:
            topic = self._consumer.list_topics(self._topic, timeout=ADMIN_TIMEOUT_S).topics[self._topic]
            if topic.error is not None or not topic.partitions:
                return None
            self._partitions = [TopicPartition(self._topic, number) for number in topic.partitions]
        assigned = {tp.partition for tp in self._consumer.assignment()}
        total = 0
        for committed in self._consumer.committed(self._partitions, timeout=ADMIN_TIMEOUT_S):
            # A partition this member fetches from has its high watermark cached by every fetch
            # response; the others (held by another member, or a dead one) cost a round trip.
            low, high = (
                self._consumer.get_watermark_offsets(committed, cached=True)
                if committed.partition in assigned
                else (-1, -1)
            )
            if high < 0:
                low, high = self._consumer.get_watermark_offsets(committed, timeout=ADMIN_TIMEOUT_S)
            if 0 <= committed.offset < low:
                LOG.error(
                    "%s [%d]: retention dropped offsets %d..%d before this group read them",
                    self._topic,
                    committed.partition,
                    committed.offset,
                    low - 1,
                )
            # No commit yet (offset < 0) or one below what retention kept: reading starts at low.
            total += high - max(committed.offset, low)
        return total

    def close(self) -> None:
        self._consumer.close()


def _raise(error: KafkaError) -> NoReturn:
    """A client error as the bus's own where it has one: a rebalance, brokers not answering."""
    if error.code() in REBALANCE_ERRORS:
        raise CommitLostError(str(error))
    if error.code() in UNAVAILABLE_ERRORS:
        raise BusUnavailableError(f"Kafka did not answer: {error.str()}")
    raise KafkaException(error)


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
        security: TLS and SASL of every client this bus makes (the default: plaintext).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        partitions: int = 3,
        session_timeout_ms: int = 45_000,
        prefetch_kbytes: int = 8_192,
        security: KafkaSecurity = PLAINTEXT_KAFKA,
    ) -> None:
        # librdkafka logs to stderr by default; through `logging`, they obey the process's log setup.
        self._config: dict[str, Any] = {
            **security.client_config(),
            "bootstrap.servers": bootstrap_servers,
            "logger": LOG,
        }
        self._partitions = partitions
        self._session_timeout_ms = session_timeout_ms
        self._prefetch_kbytes = prefetch_kbytes

    def producer(self) -> KafkaProducer:
        return KafkaProducer(self._config)

    def consumer(self, topic: str, group: str, name: str) -> KafkaConsumer:
        # Kafka rebalances a whole group whenever any member joins or leaves, whatever its
        # topic: one group id per topic keeps a reports member joining from revoking the
        # transactions members' partitions mid-batch (a refused commit, a redelivered batch).
        return KafkaConsumer(
            {
                **self._config,
                "group.id": f"{group}.{topic}",
                "client.id": name,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": self._session_timeout_ms,
                "queued.max.messages.kbytes": self._prefetch_kbytes,
                "fetch.wait.max.ms": 50,
                "fetch.queue.backoff.ms": 50,
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
    It also keeps at most 5 MiB (and 100,000 batches) per partition, dropping
    the oldest beyond that (hard-coded in librdkafka): enough for the demo's
    traffic, compressed, but replays reach back only that far.
    """
    host = confluent_kafka.Producer({"test.mock.num.brokers": num_brokers, "logger": LOG})
    try:
        brokers = host.list_topics(timeout=ADMIN_TIMEOUT_S).brokers.values()
        yield ",".join(f"{broker.host}:{broker.port}" for broker in brokers)
    finally:
        host.close()
