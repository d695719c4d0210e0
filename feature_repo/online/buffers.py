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

Backends: `SqliteEventBuffers` (`sqlite_store`) for the local profile,
`RedisEventBuffers` (`redis_store`) for prod, chosen from a URL by
`feature_repo.online.open_event_buffers`. SQLite also keeps each entity's
events packed in one value, so a read decodes one value per entity; Redis
still returns one member per event (its packed form is not built yet).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Self

import numpy as np
import pandas as pd

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


class OnlineStoreUnavailableError(RuntimeError):
    """The store's server did not answer; a later try may succeed.

    Raised instead of answering from what is at hand: an empty read would give a
    known customer cold-start features, a silently wrong score.
    """


class StaleReadError(RuntimeError):
    """A read before the store's floor: the events it needs may have been trimmed.

    Attributes:
        positions: which requests (0-based, in request order) are before the floor.
        floor: the floor they are before.
    """

    def __init__(self, message: str, positions: np.ndarray, floor: pd.Timestamp | None) -> None:
        super().__init__(message)
        self.positions = positions
        self.floor = floor


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


Columns = dict[str, np.ndarray]
"""Named columns of equal length: a read's events stay numpy arrays (a DataFrame per read cost 10 %)."""


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
    customer_events: Columns
    terminal_events: Columns
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


def _merge(buffered: Columns, requested: Columns) -> Columns:
    """The buffered events and the requests as one event table for `evaluate_arrays`.

    TX_DATETIME is in µs in `buffered` (as stored) and in ns in `requested`
    (the read's own times, kept exact); the result is in ns. Each transaction
    appears once: a request the consumer already applied keeps its buffered row.
    The buffered rows keep their order (a store's (entity, time) order makes the
    engine's sort a single pass) and the requests follow.
    """
    buffered_tx = buffered["TRANSACTION_ID"]
    buffered_ns = buffered["TX_DATETIME"].astype(np.int64) * NS_PER_US
    request_tx, request_ns = requested["TRANSACTION_ID"], requested["TX_DATETIME"]
    # A transaction id names one payload, so an applied request is buffered at its own time:
    # only the buffered rows from the earliest request on can be one.
    applied = np.isin(request_tx, buffered_tx[buffered_ns >= request_ns.min()])
    _, first = np.unique(request_tx, return_index=True)  # a transaction asked for twice counts once
    new = np.zeros(len(request_tx), dtype=bool)
    new[first] = True
    new &= ~applied
    columns = {
        name: np.concatenate([buffered[name], column[new]])
        for name, column in requested.items()
        if name != "TX_DATETIME"
    }
    columns["TX_DATETIME"] = np.concatenate([buffered_ns, request_ns[new]])
    return columns


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

    UNAVAILABLE: tuple[type[Exception], ...] = ()
    """The backend's errors that mean its server did not answer: `OnlineStoreUnavailableError` to callers."""

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
        columns = (
            _ids(frame["TRANSACTION_ID"]),
            _ids(frame["CUSTOMER_ID"]),
            _ids(frame["TERMINAL_ID"]),
            _times_us(frame["TX_DATETIME"], "TX_DATETIME"),
            frame["TX_AMOUNT"].to_numpy(np.float64),
        )
        with self._answering("write"):
            self._write_transactions(*columns)

    def add_reports(self, frame: pd.DataFrame) -> None:
        """Record fraud reports by transaction id, before or after their transactions arrive.

        Args:
            frame: `REPORT_COLUMNS`, REPORT_DATETIME tz-aware; stored rounded up to the microsecond.
        """
        _require_columns(frame, REPORT_COLUMNS, "reports")
        if frame.empty:
            return
        tx, report_us = (
            _ids(frame["TRANSACTION_ID"]),
            _report_times_us(frame["REPORT_DATETIME"], "REPORT_DATETIME"),
        )
        with self._answering("write"):
            self._write_reports(tx, report_us)

    def trim(self) -> int:
        """Raise the read floor to watermark - grace and drop what no read at or after it can need.

        The floor rises before anything is dropped, so that a concurrent reader
        gets the refusal, never the gap. Cutoffs come from `_cutoffs`.

        Returns:
            How many events and reports were dropped.
        """
        with self._answering("trim"):
            return self._trim()

    @contextmanager
    def _answering(self, what: str) -> Iterator[None]:
        try:
            yield
        except self.UNAVAILABLE as exc:
            raise OnlineStoreUnavailableError(f"the online store did not answer a {what}") from exc

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
        with self._answering("read"):
            snapshot = self._read(
                np.unique(customers),
                np.unique(terminals),
                tx,
                (earliest - CUSTOMER_SPENDING.horizon_days * NS_PER_DAY) // NS_PER_US,
                (earliest - TERMINAL_RISK.horizon_days * NS_PER_DAY) // NS_PER_US,
                latest // NS_PER_US,
            )
        if snapshot.floor_us is not None and earliest < snapshot.floor_us * NS_PER_US:
            stale = np.flatnonzero(times_ns < snapshot.floor_us * NS_PER_US)
            raise StaleReadError(
                f"{len(stale)} of {len(tx)} requests are before the online store's floor "
                f"{_optional_timestamp(snapshot.floor_us)} (watermark "
                f"{_optional_timestamp(snapshot.watermark_us)} minus the grace at the last trim): "
                "their windows may reach events already trimmed",
                stale,
                _optional_timestamp(snapshot.floor_us),
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
    def _trim(self) -> int:
        """`trim`, in the backend: the floor first, then the drops; returns how many were dropped."""

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
