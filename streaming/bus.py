"""The event bus interface that Kafka and Redis Streams both implement.

The stream consumer, the simulator and the prediction log talk only to these
protocols, so a profile picks the backend and no caller changes. Delivery is
at-least-once: a message counts as handled only once its consumer commits it,
so a consumer killed between `poll` and `commit` gets it again after restart;
an exactly-once *effect* is the consumer's job (idempotent writes by event id).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from typing import Protocol


@dataclass(frozen=True)
class Topics:
    """The bus's topic (Kafka) or stream (Redis) names, one per kind of event."""

    transactions: str
    fraud_reports: str
    predictions: str
    dead_letters: str

    def prefixed(self, prefix: str) -> Topics:
        """The same topics under a namespace, so tests or tenants sharing one cluster stay apart."""
        return Topics(**{field.name: prefix + getattr(self, field.name) for field in fields(self)})

    def names(self) -> tuple[str, ...]:
        """Every topic name, for `EventBus.ensure_topics`."""
        return astuple(self)


TOPICS = Topics(
    transactions="transactions",
    fraud_reports="fraud_reports",
    predictions="predictions",
    dead_letters="dead_letters",
)


class DeliveryError(RuntimeError):
    """The bus did not confirm every message sent since the last flush: the sender must send them again.

    `possibly_stored` says whether any of them may be on the bus all the same (some
    confirmed, or a timeout after the bus had them): False only when none can be, so
    a sender can promise "nothing was appended". Resending is safe either way: the
    consumer lands each event id once.
    """

    def __init__(self, message: str, possibly_stored: bool = True) -> None:
        super().__init__(message)
        self.possibly_stored = possibly_stored


class BusUnavailableError(RuntimeError):
    """The bus's server did not answer (down, restarting, unreachable): a later try may succeed.

    Nothing was committed: a consumer rewinds (`Consumer.rewind`) and retries, it does not exit.
    """


class BusDataLostError(RuntimeError):
    """The bus no longer holds what it acknowledged: its consumer group or stream is gone.

    A Redis restarted without persistence comes back empty, and a consumer that
    recreated its group would read "lag 0" over the loss; this says so instead.
    The consumer reports it (log and metric) and goes on with what the bus holds now.
    """


class CommitLostError(RuntimeError):
    """The group was rebalanced while a batch was handled: its commit was refused.

    Nothing is lost: the batch will be delivered again, to this member or to
    the one that now holds its partition, and an idempotent consumer just
    carries on.
    """


@dataclass(frozen=True)
class Message:
    """One event as read from the bus.

    `position` is where the backend holds it ("partition:offset" in Kafka, the
    entry id in Redis): opaque to callers, it goes into logs and dead letters
    so a bad event can be found again, and it is what `commit` acknowledges.

    `problem` says why the backend could not make an event of what it holds
    there (a poison entry: a Redis entry without its `v` field, a Kafka record
    with no value or one the client could not read); `value` is then a rendering
    of what was there, for the dead letter. A consumer must dead-letter such a
    message and commit it like any other, never stop on it: otherwise it would
    meet it again after every restart, and its topic would stop for good.
    """

    topic: str
    key: bytes | None
    value: bytes
    position: str
    problem: str | None = None


class Producer(Protocol):
    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Queue one message; it is buffered, so only `flush` says whether it arrived."""
        ...

    def flush(self, timeout_s: float = 30) -> None:
        """Wait until every queued message is stored; raise `DeliveryError` otherwise."""
        ...


class Consumer(Protocol):
    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        """At most `max_messages` messages, or [] once `timeout_s` passes; never commits anything.

        The bound is what keeps a slow sink from piling up data in memory:
        the caller asks for the next batch only when the last one is handled.
        """
        ...

    def commit(self, messages: Sequence[Message]) -> None:
        """Acknowledge messages this consumer returned, once their effects are durable.

        Kafka commits a cursor per partition, so committing a message also
        commits every earlier one of its partition: commit batches in order.
        Raises `CommitLostError` when a rebalance took the partition meanwhile.
        """
        ...

    def rewind(self) -> None:
        """Forget what `poll` returned since the last commit: the next polls return it again.

        After a failed batch (the bus or a sink down), so a consumer that retries
        in-process handles those messages again instead of leaving them pending.
        """
        ...

    def lag(self) -> int | None:
        """Messages of the topic this consumer's group has not committed yet; None while unknown.

        Kafka: the high watermark less the committed offset over every
        partition of the topic (also those another member holds); Redis:
        entries not yet delivered plus those pending.
        It asks the server, so call it once per status update, not per batch.
        """
        ...

    def close(self) -> None:
        """Release the connection; uncommitted messages stay pending for the group."""
        ...


class EventBus(Protocol):
    def producer(self) -> Producer: ...

    def consumer(self, topic: str, group: str, name: str) -> Consumer:
        """A consumer of `topic` in consumer group `group`; `name` identifies this instance."""
        ...

    def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create the topics that do not exist yet."""
        ...
