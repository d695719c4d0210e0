"""The event stream as Dagster sees it: an outside asset it observes, never materialises.

The stream consumer runs outside Dagster and lands events continuously; this
observation reports what has landed and how far behind the consumers are, so
the UI shows the stream's health beside the partitions built from it.

It is not wired as an upstream of `raw_transactions`: an unpartitioned source
over daily partitions would mark every past partition stale each time a new
event lands, and in file mode it would show a lineage that is not there. The
stream sensor (`orchestration.sensors`) is what decides which days to land.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import dagster as dg

from orchestration.resources import EventSourceResource
from streaming.landing import EVENT_TABLES, ConsumerStatus, StreamLanding

EVENT_STREAM = dg.AssetSpec(
    "event_stream",
    group_name="ingestion",
    description=(
        "Card transactions and fraud reports as the stream consumer has landed them: rows per table, "
        "and per consumer its watermark, lag, dead letters and freshness."
    ),
)


@dg.multi_observable_source_asset(specs=[EVENT_STREAM])
def event_stream(source: EventSourceResource) -> dg.ObserveResult:
    landing = source.stream()
    if landing is None:
        return dg.ObserveResult(
            data_version=dg.DataVersion("no-stream"),
            metadata={"stream": "not configured: EventSourceResource.stream_path is empty (file mode)"},
        )
    return observe_landing(landing, datetime.now(UTC))


def observe_landing(landing: StreamLanding, now: datetime) -> dg.ObserveResult:
    """The landing area's data version and health at `now`.

    The data version digests every landed day's fingerprint, so it changes
    exactly when a file lands, late ones included, and never on a consumer's
    status update alone.
    """
    digest = hashlib.sha256()
    metadata: dict[str, dg.MetadataValue] = {"stream": dg.MetadataValue.path(landing.root)}
    for table in EVENT_TABLES:
        days = landing.days(table)
        for day in days:
            digest.update(f"{table}/{day}/{landing.fingerprint(table, day)}\n".encode())
        metadata[f"{table}_landed"] = dg.MetadataValue.int(landing.count(table))
        metadata[f"{table}_days"] = dg.MetadataValue.int(len(days))
    statuses = landing.read_statuses()
    for status in statuses:
        metadata.update(_consumer_metadata(status, now))
    metadata["consumers"] = dg.MetadataValue.md(_consumer_table(statuses, now))
    return dg.ObserveResult(data_version=dg.DataVersion(digest.hexdigest()[:16]), metadata=metadata)


def _freshness_s(status: ConsumerStatus, now: datetime) -> float | None:
    return None if status.watermark is None else (now - status.watermark).total_seconds()


def _consumer_metadata(status: ConsumerStatus, now: datetime) -> dict[str, dg.MetadataValue]:
    """Numbers per consumer under its own keys, so the UI can plot each one over observations."""
    prefix = status.name
    values: dict[str, dg.MetadataValue] = {
        f"{prefix}.events_landed": dg.MetadataValue.int(status.events_landed),
        f"{prefix}.duplicates_skipped": dg.MetadataValue.int(status.duplicates_skipped),
        f"{prefix}.dead_letters": dg.MetadataValue.int(status.dead_letters),
        f"{prefix}.updated_at": dg.MetadataValue.timestamp(status.updated_at),
    }
    if status.watermark is not None:
        values[f"{prefix}.watermark"] = dg.MetadataValue.timestamp(status.watermark)
        values[f"{prefix}.freshness_s"] = dg.MetadataValue.float((now - status.watermark).total_seconds())
    if status.lag is not None:
        values[f"{prefix}.lag"] = dg.MetadataValue.int(status.lag)
    return values


def _consumer_table(statuses: list[ConsumerStatus], now: datetime) -> str:
    if not statuses:
        return "No consumer has reported a status yet."
    rows = [
        "| consumer | topic | table | landed | duplicates | dead letters | watermark | lag | freshness (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in statuses:
        freshness = _freshness_s(s, now)
        rows.append(
            f"| {s.name} | {s.topic} | {s.table} | {s.events_landed} | {s.duplicates_skipped} "
            f"| {s.dead_letters} | {s.watermark.isoformat() if s.watermark else '-'} "
            f"| {'-' if s.lag is None else s.lag} | {'-' if freshness is None else f'{freshness:.0f}'} |"
        )
    return "\n".join(rows)
