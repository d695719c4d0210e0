"""The stream consumer: events off the bus, validated, landed, and applied to the online features.

Transactions and fraud reports are landed and feed the online features;
serving's prediction log (`PREDICTIONS`) is landed only, for monitoring: an
answer is not an event the features may count.

Each micro-batch goes through the same steps, in an order chosen so that a
process killed at any instant loses nothing and duplicates nothing:

1. poll at most `batch_size` messages: the next poll comes only once this batch
   is committed, so a slow sink slows the consumer down instead of filling
   memory (Kafka's client prefetches ahead, within its own cap);
2. decode each one; a refused event becomes a dead letter (reason, topic,
   position) sent to the dead-letter topic and flushed before anything else,
   and so does a poison message, which the bus could not even make an event
   of (`Message.problem`): it is committed with the batch, so no malformed
   entry ever stops a topic, then or after a restart;
3. land the good events in the lake's stream area, durably (fsync), skipping ids
   already landed: a redelivered event never lands twice, and an id re-sent
   with other content (a *conflict*) is dead-lettered instead, so the lake and
   the online store keep the first copy and no other;
4. apply them, less the conflicts, to the online event buffers, idempotent by
   transaction id (transactions and fraud reports only);
5. commit. A crash before this point means the whole batch comes again, and
   steps 2 to 4 make the second pass a no-op for what the first one finished.

So delivery is at-least-once and the effect exactly-once, for the lake and the
online store alike; a dead letter may be written twice (it carries its source
position, so duplicates are recognisable).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol, TypeVar

import pandas as pd

from feature_repo.contract import MAX_EVENT_BYTES
from feature_repo.online import OnlineStoreUnavailableError
from settings import StreamSettings
from streaming.bus import (
    BusDataLostError,
    BusUnavailableError,
    CommitLostError,
    Consumer,
    DeliveryError,
    EventBus,
    Message,
    Producer,
    Topics,
)
from streaming.events import (
    MAX_FUTURE,
    Rejection,
    dead_letter,
    decode_report,
    decode_transaction,
    reports_to_frame,
    transactions_to_frame,
)
from streaming.landing import TABLES, ConsumerStatus, StreamLanding
from streaming.metrics import ConsumerMetrics
from streaming.predictions import decode_prediction, predictions_to_frame

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class OnlineSink(Protocol):
    """What the consumer needs of the online store (`feature_repo.online`)."""

    def add_transactions(self, frame: pd.DataFrame) -> None: ...

    def add_reports(self, frame: pd.DataFrame) -> None: ...

    def trim(self) -> int: ...


@dataclass(frozen=True)
class EventKind:
    """One kind of event: its topic, how it is decoded, where it lands and how it feeds the features
    (`apply_online` None: it does not)."""

    topic: Callable[[Topics], str]
    table: str
    time_column: str
    decode: Callable[[bytes, datetime, timedelta], Any]
    to_frame: Callable[[Sequence[Any]], pd.DataFrame]
    apply_online: Callable[[OnlineSink, pd.DataFrame], None] | None


TRANSACTIONS = EventKind(
    topic=lambda topics: topics.transactions,
    table="transactions",
    time_column="TX_DATETIME",
    decode=decode_transaction,
    to_frame=transactions_to_frame,
    apply_online=lambda online, frame: online.add_transactions(frame),
)
FRAUD_REPORTS = EventKind(
    topic=lambda topics: topics.fraud_reports,
    table="fraud_reports",
    time_column="REPORT_DATETIME",
    decode=decode_report,
    to_frame=reports_to_frame,
    apply_online=lambda online, frame: online.add_reports(frame),
)
PREDICTIONS = EventKind(
    topic=lambda topics: topics.predictions,
    table="predictions",
    time_column="TX_DATETIME",
    decode=decode_prediction,
    to_frame=predictions_to_frame,
    apply_online=None,
)
EVENT_KINDS = (TRANSACTIONS, FRAUD_REPORTS)
"""The kinds the online features are made of."""
LANDED_KINDS = (*EVENT_KINDS, PREDICTIONS)
"""Everything `python -m streaming consume` lands by default."""


@dataclass(frozen=True)
class TimeWindow:
    """Event times [start, end): what a replay re-lands or re-applies; no end means up to now."""

    start: datetime
    end: datetime | None = None

    def mask(self, times: pd.Series) -> pd.Series:
        after = times >= self.start
        return after if self.end is None else after & (times < self.end)


@dataclass(frozen=True)
class ConsumerSettings:
    """How the consumer reads.

    Attributes:
        group: the consumer group: members of one group share the work; a
            replay uses a group of its own so it reads the bus from its start.
        name: this member, also the name of its status file.
        batch_size: messages per micro-batch, the bound on data in flight
            (at most `batch_size` × `MAX_EVENT_BYTES` of payload per topic).
        poll_timeout_s: how long an idle poll waits for the first message.
        max_future: clock skew allowed to producers (events further ahead are refused).
        status_every_s: how often lag and the status file are refreshed.
        land_window: land only events in this window (replay); None lands all.
        online_window: apply only events in this window to the online store
            (replay); None applies all.
        live: whether this is the landing group, whose progress Dagster's
            sensor follows. A replay is not: it publishes no status file (its
            watermark would hold the sensor back) and sends no dead letters
            (the live group already sent them), counting them only.
    """

    group: str = StreamSettings.model_fields["group"].default
    name: str = "consumer-0"
    batch_size: int = StreamSettings.model_fields["batch_size"].default
    poll_timeout_s: float = 0.5
    max_future: timedelta = MAX_FUTURE
    status_every_s: float = 5.0
    land_window: TimeWindow | None = None
    online_window: TimeWindow | None = None
    live: bool = True


@dataclass
class Totals:
    """What one topic's consumer did since it started."""

    messages: int = 0
    landed: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    """Every event sent to the dead-letter topic: refused ones and conflicts."""
    conflicts: int = 0
    """Ids re-sent with other content than their landed copy (also in `dead_letters`)."""
    skipped: int = 0
    watermark: datetime | None = None
    """The latest event time landed (durably) so far: the stream sensor's notion of progress.
    Events come roughly in time order; its grace period covers the stragglers."""
    applied: datetime | None = None
    """The latest event time applied to the online features."""
    lag: int | None = None

    def add(self, other: Totals) -> None:
        self.messages += other.messages
        self.landed += other.landed
        self.duplicates += other.duplicates
        self.dead_letters += other.dead_letters
        self.conflicts += other.conflicts
        self.skipped += other.skipped
        self.watermark = _latest(self.watermark, other.watermark)
        self.applied = _latest(self.applied, other.applied)


RETRY_LOG_EVERY_S = 30.0
"""While something stays down, how often the consumer says so again: once per interval, not per batch."""


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class TopicConsumer:
    """One topic's micro-batch loop (see the module docstring for the order of its steps)."""

    kind: EventKind
    consumer: Consumer
    producer: Producer
    topics: Topics
    landing: StreamLanding
    online: OnlineSink
    settings: ConsumerSettings
    metrics: ConsumerMetrics
    clock: Callable[[], datetime] = _utc_now
    totals: Totals = field(default_factory=Totals)
    rewind: bool = False
    """A batch failed uncommitted: its messages are to be polled again before anything new."""
    lag_unknown_logged: float = float("-inf")
    """When "lag unknown" was last logged: once per `RETRY_LOG_EVERY_S` while the bus does not answer."""

    @property
    def topic(self) -> str:
        return self.kind.topic(self.topics)

    @property
    def status_name(self) -> str:
        return f"{self.settings.name}-{self.kind.table}"

    def step(self, timeout_s: float) -> Totals:
        """Handle one micro-batch, waiting up to `timeout_s` for it; returns what it did.

        On any error the batch is left uncommitted and marked for a rewind: the
        next step polls it again first, so a retry in-process loses nothing.
        """
        if self.rewind:
            self.consumer.rewind()
            self.rewind = False
        self.rewind = True
        batch = self._step(timeout_s)
        self.rewind = False
        return batch

    def _step(self, timeout_s: float) -> Totals:
        messages = self.consumer.poll(self.settings.batch_size, timeout_s)
        batch = Totals(messages=len(messages))
        if not messages:
            return batch
        started = time.perf_counter()
        self.metrics.in_flight.labels(self.topic).set(len(messages))
        now = self.clock()
        good, sources = [], []
        for message in messages:
            decoded = (
                self.kind.decode(message.value, now, self.settings.max_future)
                if message.problem is None
                else Rejection(message.problem, message.value[:MAX_EVENT_BYTES])
            )
            if isinstance(decoded, Rejection):
                self._dead_letter(decoded, message, now)
                batch.dead_letters += 1
            else:
                good.append(decoded)
                sources.append(message)
        if batch.dead_letters and self.settings.live:
            self.producer.flush()
        frame = self.kind.to_frame(good)
        times = frame[self.kind.time_column]
        to_land = frame if self.settings.land_window is None else frame[self.settings.land_window.mask(times)]
        apply_online = self.kind.apply_online
        if apply_online is None:
            to_apply = frame.iloc[:0]
        elif self.settings.online_window is None:
            to_apply = frame
        else:
            to_apply = frame[self.settings.online_window.mask(times)]
        conflicts: pd.Index = pd.Index([], dtype="int64")
        if len(to_land):
            landed = self.landing.land(self.kind.table, to_land)
            batch.landed, batch.duplicates = landed.landed, landed.duplicates
            batch.watermark = landed.max_event_time
            conflicts = to_land.index[landed.conflicts]
        if len(unlanded := to_apply.loc[to_apply.index.difference(to_land.index)]):
            conflicts = conflicts.union(unlanded.index[self.landing.conflicts(self.kind.table, unlanded)])
        batch.skipped = len(frame) - len(to_land.index.union(to_apply.index))
        if len(conflicts):
            self._conflicts(frame.loc[conflicts], [sources[i] for i in conflicts], now)
            batch.conflicts = len(conflicts)
            batch.dead_letters += len(conflicts)
            to_apply = to_apply.drop(index=conflicts, errors="ignore")
        if apply_online is not None and len(to_apply):
            apply_online(self.online, to_apply)
            batch.applied = to_apply[self.kind.time_column].max().to_pydatetime()
        try:
            self.consumer.commit(messages)
        except CommitLostError as exc:
            # The batch comes again (here or to the partition's new owner), and finds its effects done.
            log.warning(
                "%s: commit refused after a rebalance, the batch will be redelivered: %s", self.topic, exc
            )
        self.metrics.in_flight.labels(self.topic).set(0)
        self.metrics.batch_seconds.labels(self.topic).observe(time.perf_counter() - started)
        for outcome, count in (
            ("landed", batch.landed),
            ("duplicate", batch.duplicates),
            ("dead_letter", batch.dead_letters - batch.conflicts),
            ("conflict", batch.conflicts),
            ("skipped", batch.skipped),
        ):
            self.metrics.events.labels(self.topic, outcome).inc(count)
        self.totals.add(batch)
        if self.totals.applied is not None:
            self.metrics.watermark.labels(self.topic).set(self.totals.applied.timestamp())
        return batch

    def _dead_letter(self, rejection: Rejection, message: Message, now: datetime) -> None:
        """Send one refused event to the dead-letter topic (the live group only: a replay counts them)."""
        if self.settings.live:
            record = dead_letter(rejection, message.topic, message.position, self.settings.name, now)
            self.producer.send(self.topics.dead_letters, record, key=message.key)

    def _conflicts(self, rows: pd.DataFrame, sources: list[Message], now: datetime) -> None:
        """Dead-letter the copies of ids landed with other content, flushed before the batch commits."""
        id_column = TABLES[self.kind.table].id_column
        for event_id, message in zip(rows[id_column].tolist(), sources, strict=True):
            reason = f"conflict: {id_column} {event_id} is already landed with other content"
            self._dead_letter(Rejection(reason, message.value[:MAX_EVENT_BYTES]), message, now)
        if self.settings.live:
            self.producer.flush()
        log.warning("%s: %d id(s) re-sent with other content, dead-lettered", self.topic, len(rows))

    def report(self) -> ConsumerStatus:
        """Refresh the lag and publish the status file that Dagster's `event_stream` observes."""
        try:
            self.totals.lag = self.consumer.lag()
        except Exception as exc:  # the bus's own error types differ; a status is not worth a crash
            if (now_s := time.monotonic()) - self.lag_unknown_logged >= RETRY_LOG_EVERY_S:
                log.warning("%s: lag unknown: %s", self.topic, exc)
                self.lag_unknown_logged = now_s
            self.totals.lag = None
        if self.totals.lag is not None:
            self.metrics.lag.labels(self.topic).set(self.totals.lag)
        now = self.clock()
        if self.totals.applied is not None:
            self.metrics.freshness.labels(self.topic).set((now - self.totals.applied).total_seconds())
        status = ConsumerStatus(
            name=self.status_name,
            topic=self.topic,
            table=self.kind.table,
            events_landed=self.totals.landed,
            duplicates_skipped=self.totals.duplicates,
            dead_letters=self.totals.dead_letters,
            watermark=self.totals.watermark,
            lag=self.totals.lag,
            updated_at=now,
        )
        if self.settings.live:
            self.landing.write_status(status)
        return status


RETRIED: tuple[tuple[type[Exception], str], ...] = (
    (BusUnavailableError, "bus"),
    (DeliveryError, "bus"),
    (OnlineStoreUnavailableError, "online_store"),
    (OSError, "lake"),
)
"""What a consumer waits out, by cause: a server that does not answer, a full or failing disk."""
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
"""The `OSError`s that space or a disk coming back cures; any other (a wrong path, no permission)
ends the consumer with its message instead of being retried for ever."""
MAX_BACKOFF_S = 5.0


def _retried_cause(exc: Exception) -> str | None:
    if isinstance(exc, OSError) and exc.errno not in DISK_ERRNOS:
        return None
    return next((cause for kind, cause in RETRIED if isinstance(exc, kind)), None)


@dataclass
class _Outage:
    """One stretch of failed batches: when it began, how many retries, when it was last logged."""

    cause: str
    started: float
    retries: int = 0
    logged: float = float("-inf")


class StreamConsumer:
    """Consumes every event kind from one process, alternating between topics batch by batch.

    Args:
        bus: the event bus the profile configures.
        topics: topic names (prefixed in tests).
        landing: the lake's stream area.
        online: the online event buffers.
        settings: see `ConsumerSettings`.
        metrics: where counters go; a fresh registry by default.
        kinds: the event kinds to consume: transactions and fraud reports by default
            (`LANDED_KINDS` adds serving's predictions).
        clock: the consumer's notion of now, for the timestamp sanity check.
    """

    def __init__(
        self,
        bus: EventBus,
        topics: Topics,
        landing: StreamLanding,
        online: OnlineSink,
        settings: ConsumerSettings | None = None,
        metrics: ConsumerMetrics | None = None,
        kinds: Sequence[EventKind] = EVENT_KINDS,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.settings = settings or ConsumerSettings()
        self.metrics = metrics or ConsumerMetrics()
        self._online = online
        self._outages: dict[str, _Outage] = {}  # by topic (or "status"): one stretch of failures each
        bus.ensure_topics(topics.names())
        producer = bus.producer()
        self._topic_consumers = [
            TopicConsumer(
                kind=kind,
                consumer=bus.consumer(kind.topic(topics), self.settings.group, self.settings.name),
                producer=producer,
                topics=topics,
                landing=landing,
                online=online,
                settings=self.settings,
                metrics=self.metrics,
                clock=clock,
            )
            for kind in kinds
        ]
        # A restarted member resumes its published watermark, so the sensor does not see it go back.
        previous = {status.name: status for status in landing.read_statuses()}
        for tc in self._topic_consumers:
            if (status := previous.get(tc.status_name)) is not None:
                tc.totals.watermark = status.watermark

    @property
    def totals(self) -> dict[str, Totals]:
        return {tc.kind.table: tc.totals for tc in self._topic_consumers}

    def run(
        self,
        stop: threading.Event | None = None,
        idle_exit_s: float | None = None,
        on_batch: Callable[[str, Totals], None] | None = None,
    ) -> dict[str, Totals]:
        """Consume until `stop` is set or, with `idle_exit_s`, until caught up.

        Caught up means: no message for `idle_exit_s` seconds and no message of
        any topic left uncommitted by the group (a member that died holding
        partitions still counts), so a replay or a test can wait for the end.
        """
        idle_since: float | None = None
        last_report = float("-inf")
        stop = stop or threading.Event()
        busy = True
        while not stop.is_set():
            # While any topic has work, no poll waits: an idle topic must not stall a busy one.
            # Once a whole round came back empty, each topic waits its share of the poll timeout.
            timeout_s = 0.0 if busy else self.settings.poll_timeout_s / len(self._topic_consumers)
            busy = False
            for tc in self._topic_consumers:
                batch = self._retrying(tc.topic, stop, partial(tc.step, timeout_s))
                if batch is None:
                    busy = True
                elif batch.messages:
                    busy = True
                    if on_batch is not None:
                        on_batch(tc.kind.table, batch)
            now = time.monotonic()
            if now - last_report >= self.settings.status_every_s:
                if self._retrying("status", stop, self._report) is None:
                    continue
                last_report = now
            if busy:
                idle_since = None
                continue
            idle_since = idle_since if idle_since is not None else now
            if idle_exit_s is not None and now - idle_since >= idle_exit_s:
                statuses = self._report()
                last_report = now
                if all(status.lag == 0 for status in statuses):
                    break
        self._report()
        return self.totals

    def _retrying(self, topic: str, stop: threading.Event, work: Callable[[], _T]) -> _T | None:
        """`work()`, or None after waiting out a failure that a retry may cure (`RETRIED`).

        The failed batch stays uncommitted and is polled again, so an outage of the
        bus, the online store or the lake costs time, never events: the consumer
        waits with backoff instead of exiting, and logs once per `RETRY_LOG_EVERY_S`.
        A bus found without what it acknowledged (`BusDataLostError`) is reported
        as an error and counted, and reading goes on from what the bus holds now.
        """
        try:
            result = work()
        except BusDataLostError as exc:
            log.error("%s: %s", topic, exc)
            self.metrics.data_lost.labels(topic).inc()
            return None
        except Exception as exc:
            cause = _retried_cause(exc)
            if cause is None:
                raise
            self._wait_out(topic, cause, exc, stop)
            return None
        if (outage := self._outages.pop(topic, None)) is not None:
            log.warning(
                "%s: %s answered again after %.1f s (%d batches retried, none lost)",
                topic,
                outage.cause,
                time.monotonic() - outage.started,
                outage.retries,
            )
        return result

    def _wait_out(self, topic: str, cause: str, exc: Exception, stop: threading.Event) -> None:
        now = time.monotonic()
        outage = self._outages.setdefault(topic, _Outage(cause, now))
        outage.retries += 1
        self.metrics.retries.labels(topic, cause).inc()
        if now - outage.logged >= RETRY_LOG_EVERY_S:
            log.warning(
                "%s: %s unavailable for %.0f s, retrying (nothing committed, nothing lost): %s",
                topic,
                cause,
                now - outage.started,
                exc,
            )
            outage.logged = now
        stop.wait(min(0.1 * 2 ** min(outage.retries, 10), MAX_BACKOFF_S))

    def _report(self) -> list[ConsumerStatus]:
        """Publish statuses, and drop online events that no read can need any more (bounded Redis memory)."""
        self._online.trim()
        return [tc.report() for tc in self._topic_consumers]

    def close(self) -> None:
        """Leave the group now (Kafka hands the partitions over at once, not after the session timeout)."""
        for tc in self._topic_consumers:
            tc.consumer.close()

    def __enter__(self) -> StreamConsumer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
