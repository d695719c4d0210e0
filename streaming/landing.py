"""The stream's landing area: micro-batches made durable, once per event id, before offsets are committed.

The bus delivers at least once, so the same event can come back after a crash
or a rebalance; landing is what turns that into an exactly-once *effect*. The
consumer calls :meth:`StreamLanding.land` with a validated batch and commits its
offsets only after the call returns, because only then are the rows on disk.

Layout under ``root``::

    <table>/date=YYYY-MM-DD/<time_ns>-<uuid>.parquet   one file per land() call and day
    <table>/date=YYYY-MM-DD/.<name>.tmp                a write in progress, or a killed one's leftover
    _status/<consumer>.json                            each consumer's last ConsumerStatus

Files are only ever added, never rewritten: a reader sees a day as the set of
its ``*.parquet`` files, each complete (written to a temporary name, fsynced,
renamed, directory fsynced), so a crash at any instant leaves a whole file or
none. Several processes may land into one root (a consumer that takes over a
Kafka partition, say): each re-reads the files it has not seen before writing
to a day. Two processes landing the same id into the same day at the same
instant can still both write it, since nothing locks a day across machines;
:meth:`StreamLanding.read_day` drops such doubles, so readers never see them.

An id lands once. A second copy with the same content is a redelivery
(``duplicates``); one with other content (another amount, another time, so
perhaps another day) is a *conflict*: it is not landed, and :meth:`land`
returns its position so the consumer dead-letters it and keeps it from the
online store too. Conflicts are recognised across the days within
:data:`DEDUP_DAYS` of each other; keeping every id ever landed would grow
without bound.

One :class:`StreamLanding` object is meant for one thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from streaming.events import reports_to_frame, transactions_to_frame
from streaming.predictions import predictions_to_frame


class TableKeys(NamedTuple):
    """What landing needs to know of a table: the event id, the time that picks the day, its empty shape."""

    id_column: str
    time_column: str
    empty: Callable[[], pd.DataFrame]


TABLES: dict[str, TableKeys] = {
    "transactions": TableKeys("TRANSACTION_ID", "TX_DATETIME", lambda: transactions_to_frame([])),
    "fraud_reports": TableKeys("TRANSACTION_ID", "REPORT_DATETIME", lambda: reports_to_frame([])),
    "predictions": TableKeys("REQUEST_ID", "TX_DATETIME", lambda: predictions_to_frame([])),
}
EVENT_TABLES = ("transactions", "fraud_reports")
"""The tables of the events that features, labels and training sets are made of: what ingestion lands.
``predictions`` is serving's output, landed for monitoring only."""

DEDUP_DAYS = 40
"""How far apart two copies of one id are still recognised as one: past the features' longest look-back
(30 days, after the labels' 7-day delay), so no feature value or training row can count both."""
STATUS_DIR = "_status"
STALE_TMP = timedelta(hours=1)
"""A temporary file this old is a killed writer's leftover: no live write of one batch takes that long."""
DEFAULT_CACHED_DAYS = 2 * DEDUP_DAYS + 8
"""Every day a batch compares with stays in memory, with room for a replay's moving window."""

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class LandResult:
    """What one :meth:`StreamLanding.land` call did.

    Attributes:
        landed: rows newly written.
        duplicates: rows already landed with the same content, or repeated so in the batch.
        conflicts: positions (in the frame given) of rows refused because their id is landed,
            or earlier in the batch, with other content; not counted in ``duplicates``.
        files: the new files, one per day that got new rows.
        max_event_time: the latest event time of the batch, landed or already there (``None`` for an
            empty batch): every row up to it is durable once the call returns, so it may advance
            the consumer's watermark.
    """

    landed: int
    duplicates: int
    files: tuple[Path, ...]
    max_event_time: datetime | None
    conflicts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class ConsumerStatus:
    """One consumer's progress, as the orchestrator reads it.

    Attributes:
        name: the consumer's stable name (its status file's name): one per consumer slot, e.g.
            per Kafka partition, so a restarted consumer overwrites its own status.
        topic: the topic or stream it reads.
        table: the landing table it writes (a key of :data:`TABLES`).
        events_landed: rows it has landed.
        duplicates_skipped: redelivered or repeated events it did not land again.
        dead_letters: events it refused.
        watermark: the latest event time it has landed (UTC), ``None`` before its first event.
        lag: messages behind the head of its topic, ``None`` when the bus does not say.
        updated_at: when it wrote this status (UTC).
    """

    name: str
    topic: str
    table: str
    events_landed: int
    duplicates_skipped: int
    dead_letters: int
    watermark: datetime | None
    lag: int | None
    updated_at: datetime


class _Day:
    """The ids landed in one day with a digest of each one's content, and the files they were read from."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.ids: np.ndarray = np.array([], dtype="int64")  # sorted, unique
        self.digests: np.ndarray = np.array([], dtype="uint64")  # the first landed copy's, by id

    def add(self, name: str, ids: np.ndarray, digests: np.ndarray) -> None:
        """Merge a file's rows; an id already known keeps its digest (the earliest file's row wins)."""
        self.files.add(name)
        merged, first = np.unique(np.concatenate([self.ids, ids]), return_index=True)
        self.ids, self.digests = merged, np.concatenate([self.digests, digests])[first]

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each id: whether it is landed here, and its landed digest (0 where not)."""
        at = np.searchsorted(self.ids, ids).clip(max=max(len(self.ids) - 1, 0))
        found = self.ids[at] == ids if len(self.ids) else np.zeros(len(ids), dtype=bool)
        return found, np.where(found, self.digests[at] if len(self.ids) else 0, 0).astype("uint64")


class StreamLanding:
    """The landing area under ``root``; see the module docstring for the layout and guarantees.

    Args:
        root: directory of the landing area, created on first write.
        cached_days: how many days' landed ids to keep in memory. A batch for a day not cached
            reads that day's ids back from disk, so the bound costs time on old late events,
            never correctness.
    """

    def __init__(self, root: Path, cached_days: int = DEFAULT_CACHED_DAYS) -> None:
        if cached_days < 1:
            raise ValueError(f"cached_days must be at least 1, got {cached_days}")
        self.root = Path(root)
        self.cached_days = cached_days
        self._cache: OrderedDict[tuple[str, str], _Day] = OrderedDict()

    def day_dir(self, table: str, day: str) -> Path:
        _keys(table)
        return self.root / table / f"date={day}"

    def land(self, table: str, frame: pd.DataFrame) -> LandResult:
        """Write the rows of ``frame`` not yet landed, one new file per UTC day; durable on return.

        A row is skipped when its id is already landed, by this object or by any other process
        writing to the same root, or appears earlier in the batch: as a duplicate when the
        content is the same, as a conflict (see the module docstring) when it is not. A crash
        during the call lands some days' files whole and others not at all, so the caller must
        not commit its offsets unless the call returned; delivering the batch again is then safe.

        Args:
            table: a key of :data:`TABLES`.
            frame: validated events with the table's id and time columns; times timezone-aware.

        Raises:
            ValueError: unknown table, a missing id or time column, a naive time column, or a
                missing id or time value. Nothing is written then.
        """
        frame, days = _prepared(table, frame)
        if frame.empty:
            return LandResult(0, 0, (), None)
        new, conflicts, digests = self._classify(table, frame, days)
        id_column, landed, files = TABLES[table].id_column, 0, []
        for day, rows in frame[new].groupby(days[new], sort=True):
            path = self._write(table, str(day), rows.reset_index(drop=True))
            if (cached := self._cache.get((table, str(day)))) is not None:  # else read back when next needed
                # The index is the batch position (`_prepared` renumbers): the digest computed to classify.
                cached.add(path.name, rows[id_column].to_numpy(), digests[rows.index.to_numpy()])
            landed += len(rows)
            files.append(path)
        latest = frame[TABLES[table].time_column].max().floor("us").to_pydatetime()
        return LandResult(landed, len(frame) - landed - len(conflicts), tuple(files), latest, conflicts)

    def conflicts(self, table: str, frame: pd.DataFrame) -> np.ndarray:
        """Positions of the rows of ``frame`` that :meth:`land` would refuse as conflicts; writes nothing.

        For rows a consumer applies online without landing them (a replay's look-back): the
        online store must get the landed copy of an id, never another.
        """
        frame, days = _prepared(table, frame)
        if frame.empty:
            return np.zeros(0, dtype=np.int64)
        return self._classify(table, frame, days)[1]

    def _classify(
        self, table: str, frame: pd.DataFrame, days: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which rows are new (a mask) and which conflict (positions), by the batch and landed ids;
        with each row's content digest."""
        ids = frame[TABLES[table].id_column].to_numpy()
        digests = _digests(frame)
        first = ~pd.Series(ids).duplicated().to_numpy()
        # A later copy in the batch is judged against the batch's first copy of its id.
        first_digest = pd.Series(digests[first], index=ids[first]).reindex(ids).to_numpy()
        conflict = ~first & (digests != first_digest)
        new = first.copy()
        for day in self._window(table, np.unique(days)):
            found, landed = day.lookup(ids)
            conflict |= first & found & (landed != digests)
            new &= ~found
        new &= ~conflict
        return new, np.flatnonzero(conflict), digests

    def _window(self, table: str, days: np.ndarray) -> list[_Day]:
        """The landed ids of the batch's days (refreshed) and of the landed days within DEDUP_DAYS of them."""
        span = timedelta(days=DEDUP_DAYS)
        low = (date.fromisoformat(str(days[0])) - span).isoformat()
        high = (date.fromisoformat(str(days[-1])) + span).isoformat()
        own = [str(day) for day in days]
        base = self.root / table
        landed_days = (
            name.removeprefix("date=")
            for name in (os.listdir(base) if base.is_dir() else [])
            if name.startswith("date=")
        )
        near = sorted(day for day in landed_days if low <= day <= high and day not in own)
        # The batch's own days last, so they are the most recently used when the cache evicts.
        return [*(self._cached(table, day) for day in near), *(self._refreshed(table, day) for day in own)]

    def days(self, table: str) -> list[str]:
        """The days with at least one landed file, in order."""
        _keys(table)
        base = self.root / table
        if not base.is_dir():
            return []
        return sorted(
            d.name.removeprefix("date=") for d in base.glob("date=*") if d.is_dir() and _has_parquet(d)
        )

    def read_day(self, table: str, day: str) -> pd.DataFrame:
        """Every row landed in ``day``, once per id (the earliest file's row wins), in time order."""
        keys = _keys(table)
        parts = [pd.read_parquet(p) for p in self._files(table, day)]
        if not parts:
            return keys.empty()
        frame = pd.concat(parts, ignore_index=True).drop_duplicates(subset=keys.id_column)
        return frame.sort_values([keys.time_column, keys.id_column], kind="stable", ignore_index=True)

    def count(self, table: str) -> int:
        """Rows landed in ``table``, counted as :meth:`read_day` returns them (once per id and day)."""
        keys = _keys(table)
        total = 0
        for day in self.days(table):
            ids = [
                pd.read_parquet(p, columns=[keys.id_column])[keys.id_column] for p in self._files(table, day)
            ]
            total += pd.concat(ids, ignore_index=True).nunique()
        return total

    def fingerprint(self, table: str, day: str) -> str:
        """A stable digest of the day's landed files (names and sizes): it changes iff a file lands."""
        digest = hashlib.sha256()
        for path in self._files(table, day):
            digest.update(f"{path.name}:{path.stat().st_size}\n".encode())
        return digest.hexdigest()[:16]

    def write_status(self, status: ConsumerStatus) -> Path:
        """Publish ``status`` atomically under ``_status/<name>.json``, replacing the consumer's last one."""
        if not _SAFE_NAME.fullmatch(status.name):
            raise ValueError(f"consumer name {status.name!r} must match {_SAFE_NAME.pattern}")
        _keys(status.table)
        record = {
            **asdict(status),
            "watermark": _iso(status.watermark),
            "updated_at": _iso(status.updated_at),
        }
        payload = json.dumps(record, sort_keys=True).encode()
        return _durable_write(self.root / STATUS_DIR / f"{status.name}.json", lambda f: f.write(payload))

    def read_statuses(self) -> list[ConsumerStatus]:
        """Every consumer's last status, by name.

        Raises:
            ValueError: a status file that is not a status, naming the file.
        """
        statuses = []
        for path in sorted((self.root / STATUS_DIR).glob("*.json")):
            try:
                record: dict[str, Any] = json.loads(path.read_bytes())
                statuses.append(
                    ConsumerStatus(
                        **{
                            **record,
                            "watermark": None
                            if record["watermark"] is None
                            else _parse_iso(record["watermark"]),
                            "updated_at": _parse_iso(record["updated_at"]),
                        }
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}: not a consumer status ({exc})") from exc
        return statuses

    def _files(self, table: str, day: str) -> list[Path]:
        """The day's complete files, in the order they were written (names start with the write time)."""
        return sorted(self.day_dir(table, day).glob("*.parquet"))

    def _cached(self, table: str, day: str) -> _Day:
        """The day's landed ids as last seen, read from disk if not in memory; marked recently used."""
        cached = self._cache.get((table, day))
        if cached is None:
            return self._refreshed(table, day)
        self._cache.move_to_end((table, day))
        return cached

    def _refreshed(self, table: str, day: str) -> _Day:
        """The day's landed ids, including files another process wrote since this one last looked."""
        key = (table, day)
        cached = self._cache.pop(key, None) or _Day()
        self._cache[key] = cached
        while len(self._cache) > self.cached_days:
            self._cache.popitem(last=False)
        id_column = TABLES[table].id_column
        for path in self._files(table, day):
            if path.name not in cached.files:
                rows = pd.read_parquet(path)
                cached.add(path.name, rows[id_column].to_numpy(), _digests(rows))
        _remove_stale_tmp(self.day_dir(table, day))
        return cached

    def _write(self, table: str, day: str, rows: pd.DataFrame) -> Path:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.parquet"
        return _durable_write(self.day_dir(table, day) / name, lambda f: rows.to_parquet(f, index=False))


def _prepared(table: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """`frame` validated, renumbered and with UTC times, and each row's UTC day (YYYY-MM-DD)."""
    keys = _keys(table)
    frame = frame.reset_index(drop=True)
    times = _utc_times(frame, keys)
    return frame.assign(**{keys.time_column: times}), times.dt.strftime("%Y-%m-%d").to_numpy()


def _keys(table: str) -> TableKeys:
    try:
        return TABLES[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}: one of {', '.join(TABLES)}") from None


def _digests(frame: pd.DataFrame) -> np.ndarray:
    """One 64-bit digest per row of its content, the same for a batch's row and the row read back from disk.

    Times are taken as UTC microseconds, since a parquet round trip may change their unit.
    """
    canonical = {
        name: frame[name].dt.tz_convert(None).dt.as_unit("us").astype("int64")
        if isinstance(frame[name].dtype, pd.DatetimeTZDtype)
        else frame[name]
        for name in sorted(frame.columns)
    }
    return pd.util.hash_pandas_object(pd.DataFrame(canonical), index=False).to_numpy()


def _has_parquet(directory: Path) -> bool:
    """Whether a day has a landed file, reading its listing only as far as the first one."""
    with os.scandir(directory) as entries:
        return any(entry.name.endswith(".parquet") for entry in entries)


def _utc_times(frame: pd.DataFrame, keys: TableKeys) -> pd.Series:
    """The batch's event times in UTC, after checking what landing relies on: ids and aware times."""
    missing = [c for c in (keys.id_column, keys.time_column) if c not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s): {', '.join(missing)}")
    if frame[keys.id_column].isna().any():
        raise ValueError(f"{keys.id_column} must not be missing")
    times = frame[keys.time_column]
    if not isinstance(times.dtype, pd.DatetimeTZDtype):
        raise ValueError(f"{keys.time_column} must be timezone-aware datetimes, not {times.dtype}")
    if times.isna().any():
        raise ValueError(f"{keys.time_column} must not be missing")
    return times.dt.tz_convert(UTC)


def _durable_write(path: Path, write: Callable[[Any], object]) -> Path:
    """Write ``path`` so that it exists whole or not at all, and stays after a power cut, on return.

    The data is fsynced before the rename (or the rename could outlive the data), and the
    directory after it (or the rename itself could be lost).
    """
    _ensure_dir(path.parent)
    tmp = path.parent / f".{path.name}.tmp"
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def _ensure_dir(path: Path) -> None:
    """Create ``path`` and any missing parents, each made durable in its own parent."""
    if path.is_dir():
        return
    _ensure_dir(path.parent)
    path.mkdir(exist_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_tmp(directory: Path) -> None:
    """Delete killed writers' leftovers; a young temporary file may be another process's write in flight."""
    cutoff = time.time() - STALE_TMP.total_seconds()
    for tmp in directory.glob(".*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except FileNotFoundError:
            continue


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: statuses keep times in UTC")
    return moment.astimezone(UTC).isoformat()


def _parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.utcoffset() is None:
        raise ValueError(f"naive timestamp {text!r}")
    return moment.astimezone(UTC)
