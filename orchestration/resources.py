"""Dagster resources over the lake and the raw sources; the rest are the machinery's own objects.

`orchestration.profiles.build_resources` builds every resource from the
settings: these two `ConfigurableResource`s for the lake and the sources,
and, as plain resources, the settings themselves, the stream configuration
(`streaming.config.StreamConfig`), the Feast store (`feature_repo.store`)
and the model registry (`modeling.registry.ModelRegistry`). Assets never know
which backend they talk to, and tests swap a directory or a URL in the
settings instead of patching code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq

from expectations.timestamps import lenient_utc
from streaming.landing import EVENT_TABLES, StreamLanding
from streaming.landing import TABLES as LANDING_TABLES


class LakeResource(dg.ConfigurableResource):
    """The parquet lake: daily-partitioned raw tables and whole derived tables.

    Writes go to a temporary file renamed into place, so a crashed run never
    leaves half a partition, and re-running a partition replaces it: landing is
    idempotent.
    """

    root: str

    def table_path(self, table: str) -> Path:
        return Path(self.root) / f"{table}.parquet"

    def partition_path(self, table: str, day: str) -> Path:
        return Path(self.root) / table / f"date={day}" / "part-0.parquet"

    def artifact_dir(self, name: str) -> Path:
        path = Path(self.root) / "artifacts" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write_partition(self, table: str, day: str, frame: pd.DataFrame) -> Path:
        return _atomic_parquet(self.partition_path(table, day), frame)

    def write_table(self, table: str, frame: pd.DataFrame) -> Path:
        return _atomic_parquet(self.table_path(table), frame)

    def _landed(self, table: str, exclude_days: Iterable[str] = ()) -> list[Path]:
        """Landed partition files of `table` in day order, but those of `exclude_days`."""
        skip = {f"date={day}" for day in exclude_days}
        files = sorted((Path(self.root) / table).glob("date=*/part-0.parquet"))
        return [p for p in files if p.parent.name not in skip]

    def days(self, table: str) -> list[str]:
        """The days of `table` with a landed partition, in order."""
        return [p.parent.name.removeprefix("date=") for p in self._landed(table)]

    def read_partitions(self, table: str) -> pd.DataFrame:
        """Every landed partition, concatenated in day order."""
        paths = self._landed(table)
        if not paths:
            raise FileNotFoundError(f"{table}: no partition landed under {Path(self.root) / table}")
        return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)

    def read_column(self, table: str, column: str, exclude_days: Iterable[str] = ()) -> pd.Series:
        """One column of every landed partition but `exclude_days` (empty if none)."""
        paths = self._landed(table, exclude_days)
        if not paths:
            return pd.Series([], dtype="float64", name=column)
        return pd.concat([pd.read_parquet(p, columns=[column])[column] for p in paths], ignore_index=True)

    def quarantine(self, table: str, day: str, frame: pd.DataFrame) -> Path:
        """Keep a rejected batch out of the lake proper, but not lost: it can be fixed and re-landed."""
        return _atomic_parquet(self.partition_path(f"quarantine/{table}", day), frame)

    def read_table(self, table: str) -> pd.DataFrame:
        path = self.table_path(table)
        if not path.exists():
            raise FileNotFoundError(f"{table}: {path} does not exist; materialise it first")
        return pd.read_parquet(path)


def _atomic_parquet(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


EVENT_TIME_COLUMNS = {"transactions": "TX_DATETIME", "fraud_reports": "REPORT_DATETIME"}
"""The event tables of the source files and the time that picks each row's day."""


def _time_bounds(file: Path, column: str) -> pd.Series:
    """Earliest and latest parseable time of `column` (UTC), from the file's statistics when it has them."""
    metadata = pq.ParquetFile(file).metadata
    index = metadata.schema.names.index(column) if column in metadata.schema.names else None
    if index is not None and metadata.num_rows:
        stats = [metadata.row_group(i).column(index).statistics for i in range(metadata.num_row_groups)]
        if all(s is not None and s.has_min_max for s in stats):
            bounds = pd.Series([b for s in stats for b in (s.min, s.max)])
            if pd.api.types.is_datetime64_any_dtype(bounds) or isinstance(bounds.iloc[0], datetime):
                times = lenient_utc(bounds)
                return pd.Series([times.min(), times.max()]).dropna()
    if index is None:
        return pd.Series([], dtype="datetime64[ns, UTC]")
    times = lenient_utc(pd.read_parquet(file, columns=[column])[column])
    return pd.Series([times.min(), times.max()]).dropna()


class EventSourceResource(dg.ConfigurableResource):
    """Where raw events come from before they are landed.

    In file mode (`stream_path` empty) that is a directory of parquet files,
    locally the simulator's output (`python -m simulator generate`). In stream
    mode transactions and fraud reports come instead from the stream
    consumer's landing area (`streaming.landing`), while reference data
    (customers, terminals) still comes from `path`.

    `stream_grace_minutes` is how long after a day ends its events may still
    be on their way (producer buffering, consumer lag between partitions): the
    stream sensor treats a day as complete only once every transactions
    consumer's watermark is that far past the day's end. Events later still
    are not lost: they change the day's files, and the sensor lands it again.
    """

    path: str
    stream_path: str
    stream_grace_minutes: int

    def stream(self) -> StreamLanding | None:
        """The stream landing area, or None in file mode."""
        return StreamLanding(Path(self.stream_path)) if self.stream_path else None

    def _file(self, name: str) -> Path:
        file = Path(self.path) / f"{name}.parquet"
        if not file.exists():
            raise FileNotFoundError(
                f"{file} is missing: generate the source data first "
                f"(python -m simulator generate --out {self.path})"
            )
        return file

    def read(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self._file(name))

    def data_days(self) -> tuple[str, str] | None:
        """First and last complete UTC day of the events (files and landed days), or None without any.

        Files are read through their Parquet statistics when they have them
        (a million rows' bounds in milliseconds, at each code location load).
        """
        today = pd.Timestamp.now(tz="UTC").normalize()
        days: list[str] = []
        for name, column in EVENT_TIME_COLUMNS.items():
            file = Path(self.path) / f"{name}.parquet"
            if file.exists():
                times = _time_bounds(file, column)
                days += [t.strftime("%Y-%m-%d") for t in times[times < today]]
        landing = self.stream()
        if landing is not None:
            days += [d for table in EVENT_TABLES for d in landing.days(table) if d < f"{today:%Y-%m-%d}"]
        return (min(days), max(days)) if days else None

    def read_days(
        self, name: str, time_column: str, days: list[str], first_day: str
    ) -> dict[str, pd.DataFrame]:
        """Rows of `name` by UTC day of `time_column`, for the days asked.

        Times are parsed leniently for routing only (naive ones read as UTC);
        rows keep their raw values for the checks. A row that belongs to no
        partition (time missing or unparseable, before `first_day`, or today or
        later: no complete day yet) goes with the last day asked, where the
        checks flag it, instead of vanishing.

        In stream mode the landing area has already placed each row in its UTC
        day, so a day is read as landed. Landed days before `first_day` go with
        the last day asked, as in file mode; days from today on are not
        complete yet, so they wait for their own partition instead.
        """
        landing = self.stream()
        if landing is not None and name in LANDING_TABLES:
            return self._landed_days(landing, name, time_column, days, first_day)
        frame = self.read(name)
        if time_column in frame.columns:
            times = lenient_utc(frame[time_column])
        else:
            times = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
        today = pd.Timestamp.now(tz="UTC").normalize()
        unroutable = times.isna() | (times < pd.Timestamp(first_day, tz="UTC")) | (times >= today)
        day = times.dt.strftime("%Y-%m-%d").where(~unroutable, max(days))
        return {d: frame[day == d].reset_index(drop=True) for d in days}

    @staticmethod
    def _landed_days(
        landing: StreamLanding, name: str, time_column: str, days: list[str], first_day: str
    ) -> dict[str, pd.DataFrame]:
        if LANDING_TABLES[name].time_column != time_column:
            raise ValueError(
                f"{name} is landed by {LANDING_TABLES[name].time_column}, not {time_column}: "
                "the stream and the asset disagree on which time picks the partition"
            )
        by_day = {d: landing.read_day(name, d) for d in days}
        early = [landing.read_day(name, d) for d in landing.days(name) if d < first_day]
        if early:
            by_day[max(days)] = pd.concat([by_day[max(days)], *early], ignore_index=True)
        return by_day
