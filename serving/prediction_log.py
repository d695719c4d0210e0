"""Every answer, sent to the predictions stream off the request path.

Monitoring joins these records with outcomes once labels arrive. Scoring must
never wait on the bus, nor fail because of it: records go through a bounded
queue to one sender thread; a full queue or a bus failure drops records and
counts them (`fraudpipe_serve_prediction_log{outcome="dropped"}`), which the
monitoring side can alert on.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import pydantic_core

from serving.metrics import ServingMetrics
from streaming.bus import Producer
from streaming.bus_kafka import LOG as KAFKA_CLIENT_LOG

logger = logging.getLogger(__name__)

_FLUSH_EVERY_S = 0.5
_RETRY_CONNECT_S = 5.0
WARN_EVERY_S = 60.0
"""At most one warning per this many seconds while the bus does not answer, with the records dropped."""
START_A_BUS = (
    "the local profile's bus runs with `make consume` (or `make broker`); elsewhere, check FRAUDPIPE_BUS_URL"
)
_STOP = object()


class RecordBatch(Protocol):
    """Answers not yet turned into records: that work is done on the sender thread, off the request path."""

    def __len__(self) -> int: ...

    def records(self) -> Sequence[Mapping[str, Any]]: ...


class _ClientLogFold(logging.Filter):
    """Keeps the bus client's own log records of one thread out of the log, remembering the last.

    librdkafka logs every failed connection attempt (ten a second to a dead
    address, through `streaming.bus_kafka.LOG`), and it logs on the thread that
    polls or flushes its producer: the sender's. The sender's rate-limited
    warning quotes the last of them instead; other threads' records pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.thread_id: int | None = None
        self.last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread_id:
            return True
        self.last = record.getMessage()
        return False


class PredictionLog:
    """An asynchronous sender of prediction records.

    While the bus does not answer, records are dropped and counted, and the log
    says so once a minute (`WARN_EVERY_S`), with the number dropped and how to
    start a bus, instead of once per failed attempt; then once when it answers again.

    Args:
        connect: opens a producer; called on the sender thread, again after a failure.
        topic: the predictions topic.
        metrics: where sent and dropped records are counted.
        max_pending: batches of records the queue holds before dropping.
        flush_timeout_s: how long a flush waits for the bus before its records count as dropped.
    """

    def __init__(
        self,
        connect: Callable[[], Producer],
        topic: str,
        metrics: ServingMetrics,
        max_pending: int = 1024,
        flush_timeout_s: float = 10.0,
    ) -> None:
        self._connect = connect
        self._topic = topic
        self._metrics = metrics
        self._flush_timeout_s = flush_timeout_s
        self._queue: queue.Queue[object] = queue.Queue(max_pending)
        self._client_log = _ClientLogFold()
        self._unreported = 0  # records dropped since the last warning (queue-full ones: about, not locked)
        self._warned_at: float | None = None  # while the bus does not answer: when the log last said so
        self._sending = False
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def submit(self, batch: RecordBatch) -> None:
        """Queue a batch for sending; never blocks."""
        if not len(batch):
            return
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self._metrics.prediction_log.labels("dropped").inc(len(batch))
            self._unreported += len(batch)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within the timeout), then stop."""
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout_s)
        self._thread.join(timeout_s)

    def _drop(self, records: int) -> None:
        self._metrics.prediction_log.labels("dropped").inc(records)
        self._unreported += records

    def _failed(self, error: Exception) -> None:
        """The bus did not answer: say so, with what was dropped, unless the log said it within a minute."""
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY_S:
            return
        since = "so far" if self._warned_at is None else f"in the last {now - self._warned_at:.0f} s"
        # The client's last complaint names the cause ("Connection refused"); librdkafka's prefix
        # ("FAIL [rdkafka#producer-1] [thrd:...]: ") does not.
        client = self._client_log.last
        reason = client.split("]: ", 1)[-1] if client else f"{type(error).__name__}: {error}"
        logger.warning(
            "prediction log: the bus does not answer, %d records dropped %s (%s): %s",
            self._unreported,
            since,
            reason,
            START_A_BUS,
        )
        self._warned_at, self._unreported, self._client_log.last = now, 0, None

    def _sent(self, records: int) -> None:
        self._metrics.prediction_log.labels("sent").inc(records)
        if self._warned_at is not None:
            logger.info(
                "prediction log: the bus answers again (%d more records dropped before it did)",
                self._unreported,
            )
        elif not self._sending:
            logger.info("prediction log: sending to the bus")
        self._sending, self._warned_at, self._unreported = True, None, 0

    def _run(self) -> None:
        self._client_log.thread_id = threading.get_ident()
        KAFKA_CLIENT_LOG.addFilter(self._client_log)
        try:
            self._send_until_stopped()
        finally:
            KAFKA_CLIENT_LOG.removeFilter(self._client_log)

    def _send_until_stopped(self) -> None:
        producer: Producer | None = None
        unflushed = 0
        last_flush = time.monotonic()
        retry_at = 0.0
        while True:
            try:
                item = self._queue.get(timeout=_FLUSH_EVERY_S)
            except queue.Empty:
                item = None
            if item is not None and item is not _STOP:
                batch: RecordBatch = item  # type: ignore[assignment]
                if producer is None and time.monotonic() >= retry_at:
                    try:
                        producer = self._connect()
                    except Exception as exc:  # the bus may be down; scoring goes on
                        self._failed(exc)
                        retry_at = time.monotonic() + _RETRY_CONNECT_S
                if producer is None:
                    self._drop(len(batch))
                else:
                    try:
                        for record in batch.records():
                            producer.send(
                                self._topic,
                                pydantic_core.to_json(record),
                                key=str(record["transaction_id"]).encode(),
                            )
                        unflushed += len(batch)
                    except Exception as exc:
                        self._drop(unflushed + len(batch))
                        self._failed(exc)
                        producer, unflushed = None, 0
                        retry_at = time.monotonic() + _RETRY_CONNECT_S
            due = item is _STOP or item is None or time.monotonic() - last_flush >= _FLUSH_EVERY_S
            if producer is not None and unflushed and due:
                try:
                    producer.flush(timeout_s=self._flush_timeout_s)
                except Exception as exc:
                    self._drop(unflushed)
                    self._failed(exc)
                    producer = None  # a new one next time: this one's queue is counted as dropped
                    retry_at = time.monotonic() + _RETRY_CONNECT_S
                else:
                    self._sent(unflushed)
                unflushed = 0
                last_flush = time.monotonic()
            if item is _STOP:
                return
