"""Sensors: what starts runs without a person, from what the stream consumer has landed.

`stream_landing_sensor` runs `ingestion_job` over the days of the stream's
landing area (`streaming.landing`) that are complete:

* A day D is complete once every transactions consumer's watermark (the
  latest event time it has landed) is at least the end of D (midnight UTC
  after it) plus `EventSourceResource.stream_grace_minutes` (default 60): the
  time events of D may still be on their way after D ends. The minimum over
  consumers counts, since each consumer (one per Kafka partition, say) sees
  only its own share of the events. Fraud reports are sparse, so their
  consumers' watermarks say little about completeness and are not waited for.
* Each run's key is `stream-{D}-{fingerprint}` (`stream-{first}..{last}-{digest}`
  when several days are due at once), the fingerprint covering D's landed
  files of both tables: a day is landed once, and again only when files
  arrived after it was launched (events later than the grace period).
* Days land in order, one run at a time: the fraud-report check of day D
  looks up the transactions of earlier days in the lake, so D must not run
  before them. When several days are due together (catching up after a
  pause, a fast replay) one run lands the range from the first to the last
  (days between them land again, unchanged), and no run starts while this
  sensor's previous run is unfinished.
* The cursor keeps, per day launched, its fingerprint and the change times
  of its directories. Landing only ever adds files, so a day whose
  directories have not changed is skipped without listing its files: a tick
  costs a few system calls per day, not one per landed file.
* A failed run is not launched again for the same files: a batch that a
  blocking check quarantined needs a person, not a rerun. (A run lost to
  the infrastructure is what the instance's run retries are for.)

It is RUNNING by default: with no stream configured it only skips, saying
so; with one it is the link from the consumer to the lake, and its runs are
idempotent (one partition file per day, replaced whole).
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta

import dagster as dg

from assets.partitions import is_partition, location_partitions
from orchestration.jobs import RANGE_END, RANGE_START
from orchestration.resources import EventSourceResource
from streaming.landing import EVENT_TABLES, StreamLanding

SENSOR_NAME = "stream_landing_sensor"
LAUNCHED_BY = "fraudpipe/launched_by"
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
    dg.DagsterRunStatus.SUSPENDED,
]
SETTLE_NS = 2_000_000_000
"""A directory changed less than this long ago may change again within the same timestamp tick."""


def first_incomplete_day(landing: StreamLanding, grace: timedelta, now: datetime) -> str | None:
    """The first day that is not complete (every earlier day is), or None before any watermark."""
    watermarks = [s.watermark for s in landing.read_statuses() if s.table == "transactions"]
    if not watermarks or any(w is None for w in watermarks):
        return None
    horizon = min(min(w for w in watermarks if w is not None) - grace, now)
    return horizon.astimezone(UTC).date().isoformat()


def day_fingerprint(landing: StreamLanding, day: str) -> str:
    """The day's landed files of both event tables, as one digest: it changes when any of them gets a file.

    Predictions are left out: a day's answers landing does not change what ingestion lands for it."""
    parts = "".join(f"{table}:{landing.fingerprint(table, day)}\n" for table in EVENT_TABLES)
    return hashlib.sha256(parts.encode()).hexdigest()[:16]


def _stamp(landing: StreamLanding, day: str) -> str | None:
    """The day's directories' change times, or None while they are too recent to trust.

    A file added within the same timestamp tick as the last look would leave
    the time unchanged, so only a time older than that tick proves nothing
    was added since.
    """
    times = []
    for table in EVENT_TABLES:
        try:
            times.append(landing.day_dir(table, day).stat().st_mtime_ns)
        except FileNotFoundError:
            times.append(0)
    if time.time_ns() - max(times) < SETTLE_NS:
        return None
    return ":".join(map(str, times))


def _run_request(due: dict[str, str]) -> dg.RunRequest:
    first, last = min(due), max(due)
    tags = {LAUNCHED_BY: SENSOR_NAME}
    if first == last:
        return dg.RunRequest(run_key=f"stream-{first}-{due[first]}", partition_key=first, tags=tags)
    digest = hashlib.sha256("".join(f"{d}:{fp}\n" for d, fp in sorted(due.items())).encode())
    return dg.RunRequest(
        run_key=f"stream-{first}..{last}-{digest.hexdigest()[:16]}",
        tags={**tags, RANGE_START: first, RANGE_END: last},
    )


@dg.sensor(
    name=SENSOR_NAME,
    job_name="ingestion_job",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Lands each day of the event stream once every transactions consumer's watermark has passed "
        "the day's end plus the grace period; again if late events change its files."
    ),
)
def stream_landing_sensor(
    context: dg.SensorEvaluationContext, source: EventSourceResource
) -> dg.SensorResult | dg.SkipReason:
    landing = source.stream()
    if landing is None:
        return dg.SkipReason("file mode: EventSourceResource.stream_path is empty")
    grace = timedelta(minutes=source.stream_grace_minutes)
    first_incomplete = first_incomplete_day(landing, grace, datetime.now(UTC))
    if first_incomplete is None:
        return dg.SkipReason("waiting for every transactions consumer to report a watermark")
    unfinished = context.instance.get_runs(
        dg.RunsFilter(tags={LAUNCHED_BY: SENSOR_NAME}, statuses=UNFINISHED), limit=1
    )
    if unfinished:
        return dg.SkipReason(f"run {unfinished[0].run_id} has not finished, and days land in order")
    seen: dict[str, list[str | None]] = json.loads(context.cursor) if context.cursor else {}
    due: dict[str, str] = {}
    days = sorted({day for table in EVENT_TABLES for day in landing.days(table)})
    partitions_def = location_partitions(context.repository_def)
    for day in days:
        if day >= first_incomplete:
            break
        if not is_partition(partitions_def, day):
            context.log.warning(f"landed day {day} is not a partition of the loaded code location: reload it")
            continue
        stamp = _stamp(landing, day)
        fingerprint, known_stamp = seen.get(day, (None, None))
        if stamp is not None and stamp == known_stamp:
            continue
        current = day_fingerprint(landing, day)
        if current != fingerprint:
            due[day] = current
        seen[day] = [current, stamp]
    cursor = json.dumps(seen, sort_keys=True)
    if not due:
        return dg.SensorResult(
            skip_reason=f"no complete day (before {first_incomplete}) changed", cursor=cursor
        )
    return dg.SensorResult(run_requests=[_run_request(due)], cursor=cursor)
