"""Partitioning shared by the assets: one partition per UTC day of event time, over the data's days.

The assets declare `daily_partitions`; `orchestration.definitions` rebinds
them to `data_partitions(...)` of the data it finds when the code location
loads, so the UI lists the days that exist instead of every day since a
constant start (3,172 partitions, 3,146 "missing", for the demo's 96 days).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg

LIVE_DAYS = 2
"""Data whose last day is at most this many days before today is live: its partitions follow the clock."""


def data_partitions(days: tuple[str, str] | None, today: date | None = None) -> dg.DailyPartitionsDefinition:
    """Daily UTC partitions from the data's first day through its last.

    Live data (last day within `LIVE_DAYS` of today), and no data at all,
    get partitions that follow the clock instead, so a deployment left
    running has tomorrow's partition without reloading the code location.

    Args:
        days: first and last UTC day of the data (`YYYY-MM-DD`), or None without data.
        today: the clock's day (tests pass one).
    """
    today = today or datetime.now(UTC).date()
    if days is None:
        return dg.DailyPartitionsDefinition(start_date=str(today - timedelta(days=1)), timezone="UTC")
    first, last = (date.fromisoformat(day) for day in days)
    if last >= today - timedelta(days=LIVE_DAYS):
        return dg.DailyPartitionsDefinition(start_date=str(first), timezone="UTC")
    return dg.DailyPartitionsDefinition(
        start_date=str(first), end_date=str(last + timedelta(days=1)), timezone="UTC"
    )


daily_partitions = dg.DailyPartitionsDefinition(start_date="1970-01-01", timezone="UTC")
"""What the assets declare: any UTC day. The code location narrows it to the data's days; a test that
materialises an asset directly keeps the declaration."""


def first_day(partitions_def: dg.PartitionsDefinition | None) -> str:
    """The first partition's day: rows before it have no partition of their own."""
    if not isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        raise TypeError(f"daily partitions expected, got {partitions_def!r}")
    return partitions_def.start.strftime("%Y-%m-%d")


def location_partitions(repository_def: dg.RepositoryDefinition | None) -> dg.PartitionsDefinition | None:
    """The daily partitions the loaded code location uses (a sensor's view), or None outside one."""
    if repository_def is None:
        return None
    return repository_def.assets_defs_by_key[dg.AssetKey("raw_transactions")].partitions_def


def is_partition(partitions_def: dg.PartitionsDefinition | None, day: str) -> bool:
    """Whether `day` is one of the partitions (any day when there are none to ask)."""
    return partitions_def is None or partitions_def.has_partition_key(day)
