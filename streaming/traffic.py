"""Live traffic from simulated data: transactions and fraud reports sent to the bus in event-time order.

The two kinds are interleaved by their own clocks (a report at its report
time), which is the order a real system would see them in, so the online
features read between two sends are what serving would have read then.
Keys are transaction ids: a resent event goes to the same Kafka partition, so
the member that landed it is the one that sees it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import pandas as pd
from tqdm import tqdm

from streaming.bus import Producer, Topics
from streaming.events import (
    encode_report,
    encode_transaction,
    reports_from_frame,
    transactions_from_frame,
)

FLUSH_EVERY = 10_000
"""Sends between flushes: a failed delivery surfaces within this many events."""


def in_window(frame: pd.DataFrame, column: str, start: datetime | None, end: datetime | None) -> pd.DataFrame:
    """Rows with `column` in [start, end); an open bound keeps everything on its side."""
    keep = pd.Series(True, index=frame.index)
    if start is not None:
        keep &= frame[column] >= start
    if end is not None:
        keep &= frame[column] < end
    return frame[keep]


def event_stream(
    transactions: pd.DataFrame, reports: pd.DataFrame, topics: Topics
) -> Iterator[tuple[str, bytes, bytes]]:
    """(topic, key, payload) of every event, transactions and reports merged by event time.

    At equal times a transaction goes first: a report can never precede its own transaction.
    """
    tx_times = transactions["TX_DATETIME"].to_numpy()
    report_times = reports["REPORT_DATETIME"].to_numpy()
    txs = transactions_from_frame(transactions)
    reps = reports_from_frame(reports)
    i = j = 0
    while i < len(tx_times) or j < len(report_times):
        if j >= len(report_times) or (i < len(tx_times) and tx_times[i] <= report_times[j]):
            tx = next(txs)
            yield topics.transactions, str(tx.TRANSACTION_ID).encode(), encode_transaction(tx)
            i += 1
        else:
            report = next(reps)
            yield topics.fraud_reports, str(report.TRANSACTION_ID).encode(), encode_report(report)
            j += 1


def send_events(
    producer: Producer,
    topics: Topics,
    transactions: pd.DataFrame,
    reports: pd.DataFrame,
    rate: float = 0.0,
    progress: bool = False,
) -> int:
    """Send the events and wait until the bus stored every one.

    Args:
        producer: a bus producer.
        topics: where each kind goes.
        transactions: typed events (`SimulatedData.events()`), in time order.
        reports: typed fraud reports, in report-time order.
        rate: events per second to pace at (0: as fast as the bus takes them).
        progress: show a progress bar.

    Returns:
        How many events were sent.
    """
    transactions = transactions.sort_values("TX_DATETIME", kind="stable")
    reports = reports.sort_values("REPORT_DATETIME", kind="stable")
    total = len(transactions) + len(reports)
    started = time.monotonic()
    sent = 0
    with tqdm(total=total, unit="event", disable=not progress) as bar:
        for topic, key, payload in event_stream(transactions, reports, topics):
            producer.send(topic, payload, key=key)
            sent += 1
            if sent % FLUSH_EVERY == 0:
                producer.flush()
                bar.update(FLUSH_EVERY)
            if rate > 0 and (ahead := sent / rate - (time.monotonic() - started)) > 0:
                time.sleep(ahead)
        producer.flush()
        bar.update(sent % FLUSH_EVERY)
    return sent
