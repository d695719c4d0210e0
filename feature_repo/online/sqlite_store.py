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
    Columns,
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

_CUSTOMER_PACKED = np.dtype([("TRANSACTION_ID", "<i8"), ("TX_DATETIME", "<i8"), ("TX_AMOUNT", "<f8")])
_TERMINAL_PACKED = np.dtype([("TRANSACTION_ID", "<i8"), ("TX_DATETIME", "<i8"), (_REPORT_US, "<f8")])
"""One entity's events as one BLOB, in (time, transaction) order: a read decodes a value per entity
with numpy instead of building a Python tuple per event, which was most of a batch read's time."""

_MMAP_BYTES = 256 << 20
"""Reads through a memory map instead of SQLite's 2 MB page cache: a batch read's two
queries of 1,000 packed rows took 3.8 ms each, 2.1 ms mapped (this machine)."""

_SQLITE_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|")


class SqliteEventBuffers(EventBuffers):
    """The local profile's store: one SQLite file in WAL mode, durable when a write returns.

    Tables (names after `prefix`): `customer_events` (tx_id PRIMARY KEY,
    customer_id, time_us, amount); `terminal_events` (tx_id PRIMARY KEY,
    terminal_id, time_us); `reports` (tx_id PRIMARY KEY, report_us); `meta`
    (watermark, floor); each indexed on its time for `trim`. Reads go to
    `customer_packed` / `terminal_packed`: per entity, its buffered events
    packed in one BLOB (a terminal's with their report times), rewritten in
    the same transaction as the rows, so a read costs one row per entity.

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
        self._customers_packed = f"{prefix}customer_packed"
        self._terminals_packed = f"{prefix}terminal_packed"
        # Autocommit mode: every transaction below is explicit. The timeout lets a
        # reader in another process wait out a writer's lock instead of failing.
        # One connection, shared by threads (a serving replica scores off its event
        # loop): the lock keeps their transactions from interleaving on it.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
        self._db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS {self._customers} (
                tx_id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL,
                time_us INTEGER NOT NULL, amount REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS {self._customers}_by_time ON {self._customers} (time_us);
            CREATE TABLE IF NOT EXISTS {self._terminals} (
                tx_id INTEGER PRIMARY KEY, terminal_id INTEGER NOT NULL, time_us INTEGER NOT NULL);
            CREATE INDEX IF NOT EXISTS {self._terminals}_by_time ON {self._terminals} (time_us);
            CREATE TABLE IF NOT EXISTS {self._customers_packed} (
                customer_id INTEGER PRIMARY KEY, events BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS {self._terminals_packed} (
                terminal_id INTEGER PRIMARY KEY, events BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS {self._reports} (
                tx_id INTEGER PRIMARY KEY, report_us INTEGER NOT NULL);
            CREATE INDEX IF NOT EXISTS {self._reports}_by_time ON {self._reports} (report_us);
            CREATE TABLE IF NOT EXISTS {self._meta} (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            """
        )
        self._pack_stored_rows()

    def _pack_stored_rows(self) -> None:
        """Fill the packed tables from the rows of a store written before they existed."""
        unpacked = (
            f"SELECT 1 FROM {self._customers} "
            f"WHERE NOT EXISTS (SELECT 1 FROM {self._customers_packed}) LIMIT 1"
        )
        with self._transaction("DEFERRED") as cursor:  # no write lock for the usual answer: nothing to do
            if cursor.execute(unpacked).fetchone() is None:
                return
        with self._transaction("IMMEDIATE") as cursor:
            if cursor.execute(unpacked).fetchone() is None:
                return
            customers = np.array(
                cursor.execute(
                    f"SELECT customer_id, tx_id, time_us, amount FROM {self._customers}"
                ).fetchall(),
                dtype=_CUSTOMER_ROW,
            )
            if not len(customers):
                return
            terminals = np.array(
                cursor.execute(
                    f"SELECT e.terminal_id, e.tx_id, e.time_us, r.report_us FROM {self._terminals} AS e "
                    f"LEFT JOIN {self._reports} AS r ON r.tx_id = e.tx_id"
                ).fetchall(),
                dtype=_TERMINAL_ROW,
            )
            for table, key, rows, dtype in (
                (self._customers_packed, "customer_id", customers, _CUSTOMER_PACKED),
                (self._terminals_packed, "terminal_id", terminals, _TERMINAL_PACKED),
            ):
                events = np.empty(len(rows), dtype)
                for name in _fields(dtype):
                    events[name] = rows[name]
                self._store_packed(cursor, table, key, rows[key.upper()], events)

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
            customer_events = np.empty(len(tx), _CUSTOMER_PACKED)
            customer_events["TRANSACTION_ID"], customer_events["TX_DATETIME"] = tx, time_us
            customer_events["TX_AMOUNT"] = amounts
            self._pack(cursor, self._customers_packed, "customer_id", customers, customer_events)
            terminal_events = np.empty(len(tx), _TERMINAL_PACKED)
            terminal_events["TRANSACTION_ID"], terminal_events["TX_DATETIME"] = tx, time_us
            terminal_events[_REPORT_US] = self._report_times(cursor, tx)  # a report may come first
            self._pack(cursor, self._terminals_packed, "terminal_id", terminals, terminal_events)
            self._raise_meta(cursor, "watermark", int(time_us.max()))

    def _write_reports(self, tx: np.ndarray, report_us: np.ndarray) -> None:
        with self._transaction("IMMEDIATE") as cursor:
            cursor.executemany(
                f"INSERT INTO {self._reports} (tx_id, report_us) VALUES (?, ?) "
                "ON CONFLICT (tx_id) DO UPDATE SET report_us = MIN(report_us, excluded.report_us)",
                zip(tx.tolist(), report_us.tolist(), strict=True),
            )
            # The terminals of the reported transactions already applied: their packed events
            # take the report times now kept (the earliest of each transaction's).
            terminals = dict(
                cursor.execute(
                    f"SELECT terminal_id, 1 FROM {self._terminals} "
                    "WHERE tx_id IN (SELECT value FROM json_each(?))",
                    (json.dumps(tx.tolist()),),
                ).fetchall()
            )
            if not terminals:
                return
            ids, events = self._unpack(
                cursor,
                self._terminals_packed,
                "terminal_id",
                np.fromiter(terminals, np.int64),
                _TERMINAL_PACKED,
            )
            events = events.copy()
            events[_REPORT_US] = self._report_times(cursor, events["TRANSACTION_ID"])
            self._store_packed(cursor, self._terminals_packed, "terminal_id", ids, events)

    def _report_times(self, cursor: sqlite3.Cursor, tx: np.ndarray) -> np.ndarray:
        """Each transaction's kept report time in µs, NaN where none is."""
        reports = dict(
            cursor.execute(
                f"SELECT tx_id, report_us FROM {self._reports} "
                "WHERE tx_id IN (SELECT value FROM json_each(?))",
                (json.dumps(tx.tolist()),),
            ).fetchall()
        )
        return np.array([reports.get(t) for t in tx.tolist()], dtype=np.float64)

    def _unpack(
        self, cursor: sqlite3.Cursor, table: str, key: str, entities: np.ndarray, dtype: np.dtype
    ) -> tuple[np.ndarray, np.ndarray]:
        """The packed events of `entities` (those that have any): entity id per event, and the events."""
        rows = cursor.execute(
            f"SELECT {key}, events FROM {table} WHERE {key} IN (SELECT value FROM json_each(?))",
            (json.dumps(np.unique(entities).tolist()),),
        ).fetchall()
        events = np.frombuffer(b"".join(blob for _, blob in rows), dtype)  # read-only: copied to change
        counts = [len(blob) // dtype.itemsize for _, blob in rows]
        return np.repeat(np.array([entity for entity, _ in rows], dtype=np.int64), counts), events

    def _pack(
        self, cursor: sqlite3.Cursor, table: str, key: str, entities: np.ndarray, events: np.ndarray
    ) -> None:
        """Add `events` to their entities' packed events; a transaction already there is kept as it is."""
        held_ids, held = self._unpack(cursor, table, key, entities, events.dtype)
        ids, merged = np.concatenate([held_ids, entities]), np.concatenate([held, events])
        _, first = np.unique(merged["TRANSACTION_ID"], return_index=True)  # held rows come first: kept
        self._store_packed(cursor, table, key, ids[first], merged[first])

    @staticmethod
    def _store_packed(
        cursor: sqlite3.Cursor, table: str, key: str, ids: np.ndarray, events: np.ndarray
    ) -> None:
        """Write each entity's events, in (time, transaction) order, as its packed row."""
        order = np.lexsort((events["TRANSACTION_ID"], events["TX_DATETIME"], ids))
        ids, events = ids[order], events[order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        ends = np.r_[starts[1:], len(ids)]
        cursor.executemany(
            f"INSERT INTO {table} ({key}, events) VALUES (?, ?) "
            f"ON CONFLICT ({key}) DO UPDATE SET events = excluded.events",
            [(int(ids[a]), events[a:b].tobytes()) for a, b in zip(starts, ends, strict=True)],
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
            customer_ids, customer_events = self._unpack(
                cursor, self._customers_packed, "customer_id", customers, _CUSTOMER_PACKED
            )
            terminal_ids, terminal_events = self._unpack(
                cursor, self._terminals_packed, "terminal_id", terminals, _TERMINAL_PACKED
            )
            request_reports = self._report_times(cursor, request_tx)
        return _Snapshot(
            watermark,
            floor,
            _in_window(customer_ids, "CUSTOMER_ID", customer_events, customer_after_us, until_us),
            _in_window(terminal_ids, "TERMINAL_ID", terminal_events, terminal_after_us, until_us),
            request_reports,
        )

    def _trim(self) -> int:
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
            for table, key, dtype, cutoff in (
                (self._customers_packed, "customer_id", _CUSTOMER_PACKED, customer_cutoff),
                (self._terminals_packed, "terminal_id", _TERMINAL_PACKED, terminal_cutoff),
            ):
                self._trim_packed(cursor, table, key, dtype, cutoff)
        return dropped

    def _trim_packed(
        self, cursor: sqlite3.Cursor, table: str, key: str, dtype: np.dtype, cutoff_us: int
    ) -> None:
        """Drop packed events at or before `cutoff_us`, and the entities left with none."""
        # Events are in time order: an entity's first one says whether any is old enough.
        stale = [
            entity
            for entity, first in cursor.execute(
                f"SELECT {key}, substr(events, 1, {dtype.itemsize}) FROM {table}"
            ).fetchall()
            if np.frombuffer(first, dtype)["TX_DATETIME"][0] <= cutoff_us
        ]
        if not stale:
            return
        ids, events = self._unpack(cursor, table, key, np.array(stale, dtype=np.int64), dtype)
        cursor.execute(
            f"DELETE FROM {table} WHERE {key} IN (SELECT value FROM json_each(?))", (json.dumps(stale),)
        )
        kept = events["TX_DATETIME"] > cutoff_us
        self._store_packed(cursor, table, key, ids[kept], events[kept])

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
            for table in (
                self._customers,
                self._terminals,
                self._reports,
                self._meta,
                self._customers_packed,
                self._terminals_packed,
            ):
                cursor.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        self._db.close()


def _in_window(ids: np.ndarray, key: str, events: np.ndarray, after_us: int, until_us: int) -> Columns:
    """Packed events in (after_us, until_us] as the snapshot's columns, entity id first."""
    times = events["TX_DATETIME"]
    inside = np.flatnonzero((times > after_us) & (times <= until_us))
    return {key: ids[inside], **{name: events[name][inside] for name in _fields(events.dtype)}}


def _fields(dtype: np.dtype) -> tuple[str, ...]:
    return dtype.names or ()
