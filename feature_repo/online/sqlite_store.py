"""The local profile's online event buffers: one SQLite file in WAL mode."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo.online.buffers import (
    _REPORT_US,
    DEFAULT_GRACE,
    BufferState,
    EventBuffers,
    _Snapshot,
    _state,
)

_CUSTOMER_ROW = np.dtype(
    [("CUSTOMER_ID", "i8"), ("TRANSACTION_ID", "i8"), ("TX_DATETIME", "i8"), ("TX_AMOUNT", "f8")]
)
_TERMINAL_ROW = np.dtype(
    [("TERMINAL_ID", "i8"), ("TRANSACTION_ID", "i8"), ("TX_DATETIME", "i8"), (_REPORT_US, "f8")]
)
_REPORT_ROW = np.dtype([("TRANSACTION_ID", "i8"), ("REPORT_DATETIME", "i8")])
"""Rows as SQLite returns them, converted in one go; times in µs, a missing report as NaN."""

_SQLITE_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|")


class SqliteEventBuffers(EventBuffers):
    """The local profile's store: one SQLite file in WAL mode, durable when a write returns.

    Tables (names after `prefix`): `customer_events` (tx_id PRIMARY KEY,
    customer_id, time_us, amount) with an index on (customer_id, time_us,
    amount) that covers the read; `terminal_events` (tx_id PRIMARY KEY,
    terminal_id, time_us) indexed on (terminal_id, time_us); `reports` (tx_id
    PRIMARY KEY, report_us); `meta` (watermark, floor). Each table also has an
    index on its time for `trim`.

    Args:
        path: the database file; its folder is created.
        prefix: a table-name prefix, so that several stores can share a file.
        grace: see `EventBuffers`.
    """

    def __init__(self, path: str | Path, prefix: str = "", grace: timedelta = DEFAULT_GRACE) -> None:
        super().__init__(grace)
        if not _SQLITE_PREFIX.fullmatch(prefix):
            raise ValueError(f"SQLite table prefix must be an SQL identifier, got {prefix!r}")
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._customers, self._terminals = f"{prefix}customer_events", f"{prefix}terminal_events"
        self._reports, self._meta = f"{prefix}reports", f"{prefix}meta"
        # Autocommit mode: every transaction below is explicit. The timeout lets a
        # reader in another process wait out a writer's lock instead of failing.
        # One connection, shared by threads (a serving replica scores off its event
        # loop): the lock keeps their transactions from interleaving on it.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS {self._customers} (
                tx_id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL,
                time_us INTEGER NOT NULL, amount REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS {self._customers}_by_entity
                ON {self._customers} (customer_id, time_us, amount);
            CREATE INDEX IF NOT EXISTS {self._customers}_by_time ON {self._customers} (time_us);
            CREATE TABLE IF NOT EXISTS {self._terminals} (
                tx_id INTEGER PRIMARY KEY, terminal_id INTEGER NOT NULL, time_us INTEGER NOT NULL);
            CREATE INDEX IF NOT EXISTS {self._terminals}_by_entity
                ON {self._terminals} (terminal_id, time_us);
            CREATE INDEX IF NOT EXISTS {self._terminals}_by_time ON {self._terminals} (time_us);
            CREATE TABLE IF NOT EXISTS {self._reports} (
                tx_id INTEGER PRIMARY KEY, report_us INTEGER NOT NULL);
            CREATE INDEX IF NOT EXISTS {self._reports}_by_time ON {self._reports} (report_us);
            CREATE TABLE IF NOT EXISTS {self._meta} (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            """
        )

    @contextmanager
    def _transaction(self, mode: str) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cursor = self._db.cursor()
            cursor.execute(f"BEGIN {mode}")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    def _raise_meta(self, cursor: sqlite3.Cursor, name: str, value: int) -> None:
        cursor.execute(
            f"INSERT INTO {self._meta} (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
            (name, value),
        )

    def _clock(self, cursor: sqlite3.Cursor) -> tuple[int | None, int | None]:
        rows = dict(cursor.execute(f"SELECT name, value FROM {self._meta}").fetchall())
        return rows.get("watermark"), rows.get("floor")

    def _write_transactions(
        self,
        tx: np.ndarray,
        customers: np.ndarray,
        terminals: np.ndarray,
        time_us: np.ndarray,
        amounts: np.ndarray,
    ) -> None:
        tx_list, time_list = tx.tolist(), time_us.tolist()
        with self._transaction("IMMEDIATE") as cursor:
            cursor.executemany(
                f"INSERT INTO {self._customers} (tx_id, customer_id, time_us, amount) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tx_id) DO NOTHING",
                zip(tx_list, customers.tolist(), time_list, amounts.tolist(), strict=True),
            )
            cursor.executemany(
                f"INSERT INTO {self._terminals} (tx_id, terminal_id, time_us) VALUES (?, ?, ?) "
                "ON CONFLICT (tx_id) DO NOTHING",
                zip(tx_list, terminals.tolist(), time_list, strict=True),
            )
            self._raise_meta(cursor, "watermark", int(time_us.max()))

    def _write_reports(self, tx: np.ndarray, report_us: np.ndarray) -> None:
        with self._transaction("IMMEDIATE") as cursor:
            cursor.executemany(
                f"INSERT INTO {self._reports} (tx_id, report_us) VALUES (?, ?) "
                "ON CONFLICT (tx_id) DO UPDATE SET report_us = MIN(report_us, excluded.report_us)",
                zip(tx.tolist(), report_us.tolist(), strict=True),
            )

    def _read(
        self,
        customers: np.ndarray,
        terminals: np.ndarray,
        request_tx: np.ndarray,
        customer_after_us: int,
        terminal_after_us: int,
        until_us: int,
    ) -> _Snapshot:
        # A read transaction sees one WAL snapshot: no write or trim lands half-way.
        with self._transaction("DEFERRED") as cursor:
            watermark, floor = self._clock(cursor)
            customer_rows = cursor.execute(
                f"SELECT customer_id, tx_id, time_us, amount FROM {self._customers} "
                "WHERE customer_id IN (SELECT value FROM json_each(?)) AND time_us > ? AND time_us <= ?",
                (json.dumps(customers.tolist()), customer_after_us, until_us),
            ).fetchall()
            terminal_rows = cursor.execute(
                f"SELECT e.terminal_id, e.tx_id, e.time_us, r.report_us FROM {self._terminals} AS e "
                f"LEFT JOIN {self._reports} AS r ON r.tx_id = e.tx_id "
                "WHERE e.terminal_id IN (SELECT value FROM json_each(?)) "
                "AND e.time_us > ? AND e.time_us <= ?",
                (json.dumps(terminals.tolist()), terminal_after_us, until_us),
            ).fetchall()
            request_reports = dict(
                cursor.execute(
                    f"SELECT tx_id, report_us FROM {self._reports} "
                    "WHERE tx_id IN (SELECT value FROM json_each(?))",
                    (json.dumps(request_tx.tolist()),),
                ).fetchall()
            )
        return _Snapshot(
            watermark,
            floor,
            pd.DataFrame(np.array(customer_rows, dtype=_CUSTOMER_ROW)),
            pd.DataFrame(np.array(terminal_rows, dtype=_TERMINAL_ROW)),
            np.array([request_reports.get(t) for t in request_tx.tolist()], dtype=np.float64),
        )

    def trim(self) -> int:
        with self._transaction("IMMEDIATE") as cursor:
            watermark, _ = self._clock(cursor)
            if watermark is None:
                return 0
            floor, customer_cutoff, terminal_cutoff = self._cutoffs(watermark)
            self._raise_meta(cursor, "floor", floor)
            dropped = 0
            for table, column, cutoff in (
                (self._customers, "time_us", customer_cutoff),
                (self._terminals, "time_us", terminal_cutoff),
                (self._reports, "report_us", terminal_cutoff),
            ):
                dropped += cursor.execute(f"DELETE FROM {table} WHERE {column} <= ?", (cutoff,)).rowcount
        return dropped

    def dump(self) -> BufferState:
        with self._transaction("DEFERRED") as cursor:
            watermark, floor = self._clock(cursor)
            customer_rows = cursor.execute(
                f"SELECT customer_id, tx_id, time_us, amount FROM {self._customers}"
            ).fetchall()
            # NULL for the report column: reads and dumps share one row type.
            terminal_rows = cursor.execute(
                f"SELECT terminal_id, tx_id, time_us, NULL FROM {self._terminals}"
            ).fetchall()
            report_rows = cursor.execute(f"SELECT tx_id, report_us FROM {self._reports}").fetchall()
        return _state(
            pd.DataFrame(np.array(customer_rows, dtype=_CUSTOMER_ROW)),
            pd.DataFrame(np.array(terminal_rows, dtype=_TERMINAL_ROW)),
            pd.DataFrame(np.array(report_rows, dtype=_REPORT_ROW)),
            watermark,
            floor,
        )

    def clear(self) -> None:
        with self._transaction("IMMEDIATE") as cursor:
            for table in (self._customers, self._terminals, self._reports, self._meta):
                cursor.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        self._db.close()
