"""Every answer, sent to the predictions stream off the request path.

Monitoring joins these records with outcomes once labels arrive. Scoring must
never wait on the bus, nor fail because of it: records go through a bounded
queue to one sender thread; a full queue or a bus failure drops records and
counts them (`fraudpipe_serve_prediction_log{outcome="dropped"}`), which the
monitoring side can alert on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from serving.metrics import ServingMetrics
from streaming.bus import Producer

logger = logging.getLogger(__name__)

_FLUSH_EVERY_S = 0.5
_RETRY_CONNECT_S = 5.0
_STOP = object()


class RecordBatch(Protocol):
    """Answers not yet turned into records: that work is done on the sender thread, off the request path."""

    def __len__(self) -> int: ...

    def records(self) -> Sequence[Mapping[str, Any]]: ...


class PredictionLog:
    """An asynchronous sender of prediction records.

    Args:
        connect: opens a producer; called on the sender thread, again after a failure.
        topic: the predictions topic.
        metrics: where sent and dropped records are counted.
        max_pending: batches of records the queue holds before dropping.
    """

    def __init__(
        self,
        connect: Callable[[], Producer],
        topic: str,
        metrics: ServingMetrics,
        max_pending: int = 1024,
    ) -> None:
        self._connect = connect
        self._topic = topic
        self._metrics = metrics
        self._queue: queue.Queue[object] = queue.Queue(max_pending)
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

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within the timeout), then stop."""
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout_s)
        self._thread.join(timeout_s)

    def _run(self) -> None:
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
                if producer is None and time.monotonic() >= retry_at:
                    try:
                        producer = self._connect()
                        logger.info("prediction log: connected to the bus")
                    except Exception as exc:  # the bus may be down; scoring goes on
                        if retry_at == 0.0:
                            logger.warning("prediction log: cannot reach the bus, dropping records: %s", exc)
                        retry_at = time.monotonic() + _RETRY_CONNECT_S
                batch: RecordBatch = item  # type: ignore[assignment]
                if producer is None:
                    self._metrics.prediction_log.labels("dropped").inc(len(batch))
                else:
                    retry_at = 0.0
                    try:
                        for record in batch.records():
                            producer.send(
                                self._topic,
                                json.dumps(record).encode(),
                                key=str(record["transaction_id"]).encode(),
                            )
                        unflushed += len(batch)
                    except Exception as exc:
                        logger.warning("prediction log: send failed, %d records dropped: %s", len(batch), exc)
                        self._metrics.prediction_log.labels("dropped").inc(len(batch))
                        producer = None
            due = item is _STOP or item is None or time.monotonic() - last_flush >= _FLUSH_EVERY_S
            if producer is not None and unflushed and due:
                try:
                    producer.flush(timeout_s=10)
                    self._metrics.prediction_log.labels("sent").inc(unflushed)
                except Exception as exc:
                    logger.warning("prediction log: flush failed, %d records may be lost: %s", unflushed, exc)
                    self._metrics.prediction_log.labels("dropped").inc(unflushed)
                    producer = None
                unflushed = 0
                last_flush = time.monotonic()
            if item is _STOP:
                return
