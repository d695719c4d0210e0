"""The online store of real-time window features, exact at the request's own timestamp.

Why buffers and not running aggregates: Feast's online store (and any store of
aggregates updated per event) holds an entity's values as of its *last* event,
so a 1-day count read 20 hours after that event still counts events from 40
hours ago. A window feature read at time t must see exactly the entity's events
in (t - delay - n days, t - delay], whenever t is. So the online store keeps,
per entity, the raw events of the last `group.horizon_days` (30 days for a
customer, 37 for a terminal) and the fraud reports by transaction id; a read at
t fetches the buffers of the requested entities in one round trip and
evaluates them with `feature_repo.engine.evaluate_arrays`, the very function
that builds the training set. Online equals offline by construction, not by a
second implementation kept in step. It is cheap here: a customer makes at most
about 4 payments a day and a terminal about 1, so a batch of 256 requests reads
some ten thousand events.

Decisions a caller should know:

* The request's own transaction counts in its customer windows, as it does
  offline (ties at t included): requests are merged into the fetched events,
  de-duplicated by TRANSACTION_ID when the consumer already applied them.
* Writes are idempotent by transaction id and one batch is all-or-nothing, so
  the consumer may redeliver a batch after a crash. A transaction id names one
  payload: a redelivery repeats it, and the store does not arbitrate between
  two different payloads under one id. A report is kept by transaction id
  whatever the arrival order, and the earliest report of a transaction wins.
* A report counts as a label only if it came within the terminal group's
  delay after its transaction. Offline, `reported_labels` refuses such data
  outright; a serving read cannot fail for one bad report, and a label later
  than the delay could be unknown at t, i.e. read from the future.
* Retention: the store tracks its watermark (the latest transaction time
  applied) itself, so every process agrees on it. `trim` sets the store's read
  floor to watermark - grace and drops what no read at or after the floor can
  need: events at or before floor - horizon, reports dated at or before
  floor - terminal horizon (a valid report is never dated before its
  transaction). A read before the floor raises `StaleReadError` instead of
  returning silently wrong values.
* Cold starts are flagged per request, so that serving can mark the score:
  a customer with no transaction in its longest window but the request, a
  terminal with none in its longest (delayed) window. The flags read the
  features themselves, so they mean the same offline and do not depend on
  how requests are batched. An unknown entity's features are those of a first
  transaction: zeros, but for the request's own customer count and amount.

Backends: `SqliteEventBuffers` for the local profile, `RedisEventBuffers` for
prod, chosen from a URL by `open_event_buffers`.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import pandas as pd
import redis

from feature_repo.engine import NS_PER_DAY, evaluate_arrays, to_ns
from feature_repo.on_demand import calendar_arrays
from feature_repo.windows import (
    CUSTOMER_SPENDING,
    MODEL_FEATURES,
    REQUEST_FEATURES,
    TERMINAL_RISK,
    Aggregation,
    FeatureGroup,
)

DEFAULT_GRACE = timedelta(days=1)
"""How far a read may lag the newest applied transaction after a trim.

Requests come in at about the watermark, but a slow client, a producer's clock
skew or a replayed day lags it; a day covers these for one more day of buffer.
"""

TRANSACTION_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT")
REPORT_COLUMNS = ("TRANSACTION_ID", "REPORT_DATETIME")

NS_PER_US = 1_000
US_PER_DAY = NS_PER_DAY // NS_PER_US

CUSTOMER_EVENT_COLUMNS = ["CUSTOMER_ID", "TRANSACTION_ID", "TX_DATETIME", "TX_AMOUNT"]
TERMINAL_EVENT_COLUMNS = ["TERMINAL_ID", "TRANSACTION_ID", "TX_DATETIME"]
_REPORT_US = "REPORT_US"


class StaleReadError(RuntimeError):
    """A read before the store's floor: the events it needs may have been trimmed."""


@dataclass(frozen=True)
class OnlineFeatures:
    """The model's inputs for a batch of requests, and which requests are cold starts.

    Attributes:
        values: `MODEL_FEATURES` in order, indexed like the requests.
        unknown_customer: True where the customer's longest window holds no
            transaction but the request.
        unknown_terminal: True where the terminal's longest window is empty.
    """

    values: pd.DataFrame
    unknown_customer: np.ndarray
    unknown_terminal: np.ndarray


@dataclass(frozen=True, eq=False)
class BufferState:
    """Everything a store holds, in canonical order: two stores are equal iff their states are.

    Attributes:
        customer_events: `CUSTOMER_EVENT_COLUMNS`, sorted by TRANSACTION_ID.
        terminal_events: `TERMINAL_EVENT_COLUMNS`, sorted by TRANSACTION_ID.
        reports: TRANSACTION_ID and REPORT_DATETIME, sorted by TRANSACTION_ID.
        watermark: the latest transaction time applied; None when none was.
        floor: the earliest time a read may ask for; None before the first trim.
    """

    customer_events: pd.DataFrame
    terminal_events: pd.DataFrame
    reports: pd.DataFrame
    watermark: pd.Timestamp | None
    floor: pd.Timestamp | None

    def equals(self, other: BufferState) -> bool:
        return (
            self.customer_events.equals(other.customer_events)
            and self.terminal_events.equals(other.terminal_events)
            and self.reports.equals(other.reports)
            and self.watermark == other.watermark
            and self.floor == other.floor
        )


@dataclass(frozen=True)
class _Snapshot:
    """One consistent read of a store for a batch of requests.

    Attributes:
        watermark_us: the store's watermark, None when empty.
        floor_us: the store's read floor, None before the first trim.
        customer_events: CUSTOMER_ID, TRANSACTION_ID, TX_DATETIME (µs int64), TX_AMOUNT.
        terminal_events: TERMINAL_ID, TRANSACTION_ID, TX_DATETIME (µs int64),
            REPORT_US (float64, NaN when not reported).
        request_reports_us: per request, its report time in µs or NaN.
    """

    watermark_us: int | None
    floor_us: int | None
    customer_events: pd.DataFrame
    terminal_events: pd.DataFrame
    request_reports_us: np.ndarray


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")


def _times_us(times: pd.Series, column: str) -> np.ndarray:
    """Whole microseconds, the stored resolution: finer values are refused, never rounded across a bound."""
    ns = to_ns(times, column)
    if (ns % NS_PER_US).any():
        raise ValueError(f"{column}: timestamps finer than a microsecond cannot be stored exactly")
    return ns // NS_PER_US


def _report_times_us(times: pd.Series, column: str) -> np.ndarray:
    """Microseconds rounded up: a label is then never taken as known before it was."""
    return -(-to_ns(times, column) // NS_PER_US)


def _timestamps(us: np.ndarray) -> pd.DatetimeIndex:
    # A view, not pd.to_datetime: that parses an integer array element by element, a hundred times slower.
    return pd.DatetimeIndex((np.asarray(us, dtype=np.int64) * NS_PER_US).view("M8[ns]"), tz="UTC")


def _optional_timestamp(us: int | None) -> pd.Timestamp | None:
    return None if us is None else pd.Timestamp(us * NS_PER_US, tz="UTC")


def _ids(values: pd.Series | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _canonical(frame: pd.DataFrame, time_column: str) -> pd.DataFrame:
    """A dumped table in canonical form: µs times as timestamps, rows in transaction id order."""
    frame = frame.assign(**{time_column: _timestamps(frame[time_column].to_numpy())})
    return frame.sort_values("TRANSACTION_ID", ignore_index=True)


def _state(
    customer_events: pd.DataFrame,
    terminal_events: pd.DataFrame,
    reports: pd.DataFrame,
    watermark_us: int | None,
    floor_us: int | None,
) -> BufferState:
    """The canonical `BufferState` of dumped tables with times in µs, in any row order."""
    return BufferState(
        _canonical(customer_events[CUSTOMER_EVENT_COLUMNS], "TX_DATETIME"),
        _canonical(terminal_events[TERMINAL_EVENT_COLUMNS], "TX_DATETIME"),
        _canonical(reports[list(REPORT_COLUMNS)], "REPORT_DATETIME"),
        watermark=_optional_timestamp(watermark_us),
        floor=_optional_timestamp(floor_us),
    )


def _merge(buffered: pd.DataFrame, requested: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The buffered events and the requests as one event table for `evaluate_arrays`.

    TX_DATETIME is in µs in `buffered` (as stored) and in ns in `requested`
    (the read's own times, kept exact); the result is in ns. Each transaction
    appears once: a request the consumer already applied keeps its buffered row.
    """
    columns = {
        name: np.concatenate([buffered[name].to_numpy(), column])
        for name, column in requested.items()
        if name != "TX_DATETIME"
    }
    columns["TX_DATETIME"] = np.concatenate(
        [buffered["TX_DATETIME"].to_numpy(np.int64) * NS_PER_US, requested["TX_DATETIME"]]
    )
    _, first = np.unique(columns["TRANSACTION_ID"], return_index=True)
    return {name: column[first] for name, column in columns.items()}


def _no_history(group: FeatureGroup, values: dict[str, np.ndarray]) -> np.ndarray:
    """Whether the group's longest count window holds nothing but, when it ends at t, the request itself."""
    longest = max(
        (f for f in group.features if f.aggregation is Aggregation.COUNT), key=lambda f: f.window_days
    )
    own = 1 if group.delay_days == 0 else 0
    return values[longest.name] <= own


class EventBuffers(ABC):
    """Per-entity recent-event buffers and the feature read over them; backends store, this class computes.

    Args:
        grace: how far before the watermark reads must stay exact after a trim.
    """

    def __init__(self, grace: timedelta) -> None:
        if grace < timedelta(0):
            raise ValueError(f"grace must not be negative, got {grace}")
        self._grace_us = int(pd.Timedelta(grace).value) // NS_PER_US

    def add_transactions(self, frame: pd.DataFrame) -> None:
        """Append each transaction to its customer's and its terminal's buffer, atomically and idempotently.

        Args:
            frame: `TRANSACTION_COLUMNS`, TX_DATETIME tz-aware at microsecond resolution.
        """
        _require_columns(frame, TRANSACTION_COLUMNS, "transactions")
        if frame.empty:
            return
        self._write_transactions(
            _ids(frame["TRANSACTION_ID"]),
            _ids(frame["CUSTOMER_ID"]),
            _ids(frame["TERMINAL_ID"]),
            _times_us(frame["TX_DATETIME"], "TX_DATETIME"),
            frame["TX_AMOUNT"].to_numpy(np.float64),
        )

    def add_reports(self, frame: pd.DataFrame) -> None:
        """Record fraud reports by transaction id, before or after their transactions arrive.

        Args:
            frame: `REPORT_COLUMNS`, REPORT_DATETIME tz-aware; stored rounded up to the microsecond.
        """
        _require_columns(frame, REPORT_COLUMNS, "reports")
        if frame.empty:
            return
        self._write_reports(
            _ids(frame["TRANSACTION_ID"]), _report_times_us(frame["REPORT_DATETIME"], "REPORT_DATETIME")
        )

    def _cutoffs(self, watermark_us: int) -> tuple[int, int, int]:
        """The new floor and the inclusive cutoffs of customer and terminal data (events and reports)."""
        floor = watermark_us - self._grace_us
        return (
            floor,
            floor - CUSTOMER_SPENDING.horizon_days * US_PER_DAY,
            floor - TERMINAL_RISK.horizon_days * US_PER_DAY,
        )

    def features(self, requests: pd.DataFrame) -> OnlineFeatures:
        """The model's inputs for each request, exact at the request's own timestamp.

        Args:
            requests: `TRANSACTION_COLUMNS`; TX_DATETIME is the time features are read at.

        Returns:
            The features and the cold-start masks, aligned with `requests`.

        Raises:
            StaleReadError: when a request is before the store's read floor.
        """
        _require_columns(requests, TRANSACTION_COLUMNS, "requests")
        tx = _ids(requests["TRANSACTION_ID"])
        customers = _ids(requests["CUSTOMER_ID"])
        terminals = _ids(requests["TERMINAL_ID"])
        times_ns = to_ns(requests["TX_DATETIME"], "TX_DATETIME")
        if not len(tx):
            empty = np.zeros(0, dtype=bool)
            return OnlineFeatures(
                pd.DataFrame(columns=list(MODEL_FEATURES), index=requests.index), empty, empty
            )
        earliest, latest = int(times_ns.min()), int(times_ns.max())
        snapshot = self._read(
            np.unique(customers),
            np.unique(terminals),
            tx,
            (earliest - CUSTOMER_SPENDING.horizon_days * NS_PER_DAY) // NS_PER_US,
            (earliest - TERMINAL_RISK.horizon_days * NS_PER_DAY) // NS_PER_US,
            latest // NS_PER_US,
        )
        if snapshot.floor_us is not None and earliest < snapshot.floor_us * NS_PER_US:
            stale = int((times_ns < snapshot.floor_us * NS_PER_US).sum())
            raise StaleReadError(
                f"{stale} of {len(tx)} requests are before the online store's floor "
                f"{_optional_timestamp(snapshot.floor_us)} (watermark "
                f"{_optional_timestamp(snapshot.watermark_us)} minus the grace at the last trim): "
                "their windows may reach events already trimmed"
            )
        requested = {"TRANSACTION_ID": tx, "TX_DATETIME": times_ns}
        customer_events = _merge(
            snapshot.customer_events,
            {**requested, "CUSTOMER_ID": customers, "TX_AMOUNT": requests["TX_AMOUNT"].to_numpy(np.float64)},
        )
        spending = evaluate_arrays(
            CUSTOMER_SPENDING,
            customer_events["CUSTOMER_ID"],
            customer_events["TX_DATETIME"],
            customer_events,
            None,
            customers,
            times_ns,
        )

        terminal_events = _merge(
            snapshot.terminal_events,
            {**requested, "TERMINAL_ID": terminals, _REPORT_US: snapshot.request_reports_us},
        )
        # Integer µs first: nanoseconds since the epoch are not exact as float64, µs are.
        delay_us = terminal_events[_REPORT_US] - terminal_events["TX_DATETIME"] // NS_PER_US
        # NaN (no report) compares False: unreported.
        labels = ((delay_us >= 0) & (delay_us <= TERMINAL_RISK.delay_days * US_PER_DAY)).astype(np.int8)
        risk = evaluate_arrays(
            TERMINAL_RISK,
            terminal_events["TERMINAL_ID"],
            terminal_events["TX_DATETIME"],
            terminal_events,
            labels,
            terminals,
            times_ns,
        )
        columns = {
            **{name: requests[name].to_numpy(np.float64) for name in REQUEST_FEATURES},
            **calendar_arrays(times_ns),
            **spending,
            **risk,
        }
        return OnlineFeatures(
            pd.DataFrame({name: columns[name] for name in MODEL_FEATURES}, index=requests.index),
            _no_history(CUSTOMER_SPENDING, spending),
            _no_history(TERMINAL_RISK, risk),
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @abstractmethod
    def _write_transactions(
        self,
        tx: np.ndarray,
        customers: np.ndarray,
        terminals: np.ndarray,
        time_us: np.ndarray,
        amounts: np.ndarray,
    ) -> None:
        """Store a non-empty batch all-or-nothing, idempotently, raising the watermark to its latest time."""

    @abstractmethod
    def _write_reports(self, tx: np.ndarray, report_us: np.ndarray) -> None:
        """Store a non-empty batch of reports all-or-nothing, keeping the earliest report of a transaction."""

    @abstractmethod
    def _read(
        self,
        customers: np.ndarray,
        terminals: np.ndarray,
        request_tx: np.ndarray,
        customer_after_us: int,
        terminal_after_us: int,
        until_us: int,
    ) -> _Snapshot:
        """One consistent snapshot: events in (after, until] of the entities, their reports, the clock."""

    @abstractmethod
    def trim(self) -> int:
        """Raise the read floor to watermark - grace and drop what no read at or after it can need.

        The floor rises before anything is dropped, so that a concurrent reader
        gets the refusal, never the gap. Cutoffs come from `_cutoffs`.

        Returns:
            How many events and reports were dropped.
        """

    @abstractmethod
    def dump(self) -> BufferState:
        """Everything the store holds, for comparing two stores at rest.

        Not a consistent snapshot while another process writes: Redis lists the
        entities first, then reads them.
        """

    @abstractmethod
    def clear(self) -> None:
        """Drop every event, report and the clock of this namespace."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""


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


_CUSTOMER_MEMBER = np.dtype([("time", ">i8"), ("tx", ">i8"), ("amount", ">f8")])
_TX_MEMBER = np.dtype(">i8")
_WATERMARK, _FLOOR = b"watermark", b"floor"
_TRIM_CHUNK = 1_000
"""Entities per trim script call or UNLINK: bounds how long one call blocks the Redis server."""

_TRIM_SCRIPT = """
-- KEYS: the index, then entity keys; ARGV: inclusive cutoff, then the entity ids.
-- Keeps the index invariant: an entity's score is its oldest buffered event.
local dropped = 0
for i = 2, #KEYS do
  dropped = dropped + redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[1])
  local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if #oldest == 0 then
    redis.call('ZREM', KEYS[1], ARGV[i])
  else
    redis.call('ZADD', KEYS[1], oldest[2], ARGV[i])
  end
end
return dropped
"""


def _members(values: np.ndarray) -> list[bytes]:
    """One bytes member per element of a (big-endian, fixed-size) array."""
    buffer, size = values.tobytes(), values.dtype.itemsize
    return [buffer[i : i + size] for i in range(0, len(buffer), size)]


def _customer_records(tx: np.ndarray, time_us: np.ndarray, amounts: np.ndarray) -> np.ndarray:
    records = np.empty(len(tx), dtype=_CUSTOMER_MEMBER)
    records["time"], records["tx"], records["amount"] = time_us, tx, amounts
    return records


def _scores(values: Sequence[bytes]) -> np.ndarray:
    """Scores as Redis replies them, as text (exact for µs), parsed in one go."""
    return np.array(values, dtype=np.bytes_).astype(np.float64) if len(values) else np.zeros(0)


def _tx_ids(members: Sequence[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(members), dtype=_TX_MEMBER).astype(np.int64)


def _customer_frame(customers: np.ndarray, replies: Sequence[Sequence[bytes]]) -> pd.DataFrame:
    """Customer events (times in µs) from one ZRANGE reply of packed members per customer."""
    events = np.frombuffer(b"".join(b"".join(reply) for reply in replies), dtype=_CUSTOMER_MEMBER)
    return pd.DataFrame(
        {
            "CUSTOMER_ID": np.repeat(customers, [len(reply) for reply in replies]),
            "TRANSACTION_ID": events["tx"].astype(np.int64),
            "TX_DATETIME": events["time"].astype(np.int64),
            "TX_AMOUNT": events["amount"].astype(np.float64),
        }
    )


def _terminal_frame(terminals: np.ndarray, replies: Sequence[Sequence[bytes]]) -> pd.DataFrame:
    """Terminal events (times in µs) from one ZRANGE WITHSCORES reply per terminal."""
    flat = [item for reply in replies for item in reply]
    return pd.DataFrame(
        {
            "TERMINAL_ID": np.repeat(terminals, [len(reply) // 2 for reply in replies]),
            "TRANSACTION_ID": _tx_ids(flat[0::2]),
            "TX_DATETIME": _scores(flat[1::2]).astype(np.int64),
        }
    )


def _optional_score(score: float | None) -> int | None:
    return None if score is None else int(float(score))


class RedisEventBuffers(EventBuffers):
    """The prod profile's store: one sorted set per entity, scored by event time in µs.

    Keys (after `prefix`): `c:{customer}`, members packing the event as
    big-endian time µs, tx id (int64) and amount (float64): exact, parsed by one
    `frombuffer`, and no scores to fetch; `t:{terminal}`, members the 8-byte tx
    id; `reported`, members the 8-byte tx id scored by report time, so that a
    terminal's labels are one ZINTER of its set with `reported`, done by the
    server. `customers` and `terminals` index each entity with the time of its
    oldest buffered event, so that `trim` touches only entities with something
    to drop. `meta` holds `watermark` and `floor` as scores, so that ZADD GT
    raises them atomically. Times in µs stay below 2**53, so float scores are
    exact. A batch write and a read are each one MULTI/EXEC round trip.

    Args:
        client: a client (with `decode_responses` off) or a redis:// URL.
        prefix: the namespace of every key.
        grace: see `EventBuffers`.
    """

    def __init__(self, client: redis.Redis | str, prefix: str = "", grace: timedelta = DEFAULT_GRACE) -> None:
        super().__init__(grace)
        self._owns_client = isinstance(client, str)
        self._client = redis.Redis.from_url(client) if isinstance(client, str) else client
        if self._client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisEventBuffers stores binary members: use a client without decode_responses")
        self._prefix = prefix
        self._meta, self._reported = f"{prefix}meta", f"{prefix}reported"
        self._customer_index, self._terminal_index = f"{prefix}customers", f"{prefix}terminals"
        self._trim_script = self._client.register_script(_TRIM_SCRIPT)

    def _customer_key(self, customer: int | bytes) -> str:
        return f"{self._prefix}c:{int(customer)}"

    def _terminal_key(self, terminal: int | bytes) -> str:
        return f"{self._prefix}t:{int(terminal)}"

    def _queue_buffers(
        self,
        pipe: redis.client.Pipeline,
        index: str,
        key: Callable[[int], str],
        entities: np.ndarray,
        members: np.ndarray,
        time_us: np.ndarray,
    ) -> None:
        """ZADD each entity's events in one command, and lower its index score to its oldest event."""
        order = np.argsort(entities, kind="stable")
        ids, starts = np.unique(entities[order], return_index=True)
        sorted_us = time_us[order]
        packed, scores = _members(members[order]), sorted_us.tolist()
        bounds = [*starts.tolist(), len(order)]
        for entity, start, end in zip(ids.tolist(), bounds[:-1], bounds[1:], strict=True):
            pipe.zadd(key(entity), dict(zip(packed[start:end], scores[start:end], strict=True)))
        oldest = np.minimum.reduceat(sorted_us, starts)
        pipe.zadd(index, dict(zip(map(str, ids.tolist()), oldest.tolist(), strict=True)), lt=True)

    def _write_transactions(
        self,
        tx: np.ndarray,
        customers: np.ndarray,
        terminals: np.ndarray,
        time_us: np.ndarray,
        amounts: np.ndarray,
    ) -> None:
        pipe = self._client.pipeline(transaction=True)
        self._queue_buffers(
            pipe,
            self._customer_index,
            self._customer_key,
            customers,
            _customer_records(tx, time_us, amounts),
            time_us,
        )
        self._queue_buffers(
            pipe, self._terminal_index, self._terminal_key, terminals, tx.astype(_TX_MEMBER), time_us
        )
        pipe.zadd(self._meta, {_WATERMARK: int(time_us.max())}, gt=True)
        pipe.execute()

    def _write_reports(self, tx: np.ndarray, report_us: np.ndarray) -> None:
        members = _members(tx.astype(_TX_MEMBER))
        # One command is atomic by itself: no MULTI needed.
        self._client.zadd(self._reported, dict(zip(members, report_us.tolist(), strict=True)), lt=True)

    def _read(
        self,
        customers: np.ndarray,
        terminals: np.ndarray,
        request_tx: np.ndarray,
        customer_after_us: int,
        terminal_after_us: int,
        until_us: int,
    ) -> _Snapshot:
        pipe = self._client.pipeline(transaction=True)
        pipe.zmscore(self._meta, [_WATERMARK, _FLOOR])
        # Raw commands: redis-py's callbacks would turn each score into a Python float, one by one.
        for customer in customers.tolist():
            pipe.execute_command(
                "ZRANGE", self._customer_key(customer), f"({customer_after_us}", until_us, "BYSCORE"
            )
        terminal_keys = [self._terminal_key(terminal) for terminal in terminals.tolist()]
        for key in terminal_keys:
            pipe.execute_command("ZRANGE", key, f"({terminal_after_us}", until_us, "BYSCORE", "WITHSCORES")
        for key in terminal_keys:
            pipe.execute_command("ZINTER", 2, key, self._reported, "WEIGHTS", 0, 1, "WITHSCORES")
        pipe.zmscore(self._reported, _members(request_tx.astype(_TX_MEMBER)))
        clock, *replies, request_reports = pipe.execute()
        customer_replies = replies[: len(customers)]
        terminal_replies = replies[len(customers) : len(customers) + len(terminals)]
        label_replies = replies[len(customers) + len(terminals) :]

        label_flat = [item for reply in label_replies for item in reply]
        reported = pd.Series(_scores(label_flat[1::2]), index=_tx_ids(label_flat[0::2]))
        terminal_events = _terminal_frame(terminals, terminal_replies)
        # Deduplicated for reindex: one tx id in two terminals' sets (two payloads) shows twice.
        report_us = reported[~reported.index.duplicated()].reindex(terminal_events["TRANSACTION_ID"])
        return _Snapshot(
            _optional_score(clock[0]),
            _optional_score(clock[1]),
            _customer_frame(customers, customer_replies),
            terminal_events.assign(**{_REPORT_US: report_us.to_numpy()}),
            np.array([np.nan if score is None else score for score in request_reports], dtype=np.float64),
        )

    def trim(self) -> int:
        watermark = self._client.zscore(self._meta, _WATERMARK)
        if watermark is None:
            return 0
        floor, customer_cutoff, terminal_cutoff = self._cutoffs(int(watermark))
        pipe = self._client.pipeline(transaction=True)
        # The floor rises before anything is dropped: a reader sees the refusal, never the gap.
        pipe.zadd(self._meta, {_FLOOR: floor}, gt=True)
        pipe.zrangebyscore(self._customer_index, "-inf", customer_cutoff)
        pipe.zrangebyscore(self._terminal_index, "-inf", terminal_cutoff)
        pipe.zremrangebyscore(self._reported, "-inf", terminal_cutoff)
        _, stale_customers, stale_terminals, dropped = pipe.execute()
        pipe = self._client.pipeline(transaction=False)
        for index, key, cutoff, stale in (
            (self._customer_index, self._customer_key, customer_cutoff, stale_customers),
            (self._terminal_index, self._terminal_key, terminal_cutoff, stale_terminals),
        ):
            for start in range(0, len(stale), _TRIM_CHUNK):
                chunk = stale[start : start + _TRIM_CHUNK]
                self._trim_script([index, *map(key, chunk)], [cutoff, *chunk], client=pipe)
        return int(dropped) + sum(pipe.execute())

    def _entities(self) -> tuple[list[int], list[int]]:
        pipe = self._client.pipeline(transaction=True)
        pipe.zrange(self._customer_index, 0, -1)
        pipe.zrange(self._terminal_index, 0, -1)
        customers, terminals = pipe.execute()
        return [int(c) for c in customers], [int(t) for t in terminals]

    def dump(self) -> BufferState:
        customers, terminals = self._entities()
        pipe = self._client.pipeline(transaction=True)
        for customer in customers:
            pipe.execute_command("ZRANGE", self._customer_key(customer), 0, -1)
        for terminal in terminals:
            pipe.execute_command("ZRANGE", self._terminal_key(terminal), 0, -1, "WITHSCORES")
        pipe.execute_command("ZRANGE", self._reported, 0, -1, "WITHSCORES")
        pipe.zmscore(self._meta, [_WATERMARK, _FLOOR])
        *buffers, reports, clock = pipe.execute()
        return _state(
            _customer_frame(np.asarray(customers, dtype=np.int64), buffers[: len(customers)]),
            _terminal_frame(np.asarray(terminals, dtype=np.int64), buffers[len(customers) :]),
            pd.DataFrame(
                {
                    "TRANSACTION_ID": _tx_ids(reports[0::2]),
                    "REPORT_DATETIME": _scores(reports[1::2]).astype(np.int64),
                }
            ),
            _optional_score(clock[0]),
            _optional_score(clock[1]),
        )

    def clear(self) -> None:
        customers, terminals = self._entities()
        keys = [
            *map(self._customer_key, customers),
            *map(self._terminal_key, terminals),
            self._customer_index,
            self._terminal_index,
            self._reported,
            self._meta,
        ]
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(keys), _TRIM_CHUNK):
            pipe.unlink(*keys[start : start + _TRIM_CHUNK])
        pipe.execute()

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def open_event_buffers(url: str, prefix: str = "", grace: timedelta = DEFAULT_GRACE) -> EventBuffers:
    """The store a profile names: `sqlite:///relative.db`, `sqlite:////absolute.db` or `redis://...`.

    Args:
        url: where the buffers live.
        prefix: the namespace (a table prefix for SQLite, a key prefix for Redis).
        grace: see `EventBuffers`.

    Raises:
        ValueError: for any other kind of URL.
    """
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return SqliteEventBuffers(url[len("sqlite:///") :], prefix, grace)
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return RedisEventBuffers(url, prefix, grace)
    # Only the scheme is echoed: a URL may carry a password.
    raise ValueError(
        f"unsupported online store URL scheme {scheme!r}: expected sqlite:///path/to.db or redis://host:port/db"
    )
