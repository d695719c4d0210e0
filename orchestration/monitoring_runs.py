"""Monitoring follows ingestion: each landed range of days is monitored, and the days before it
get their outcome metrics again, since the new fraud reports may name their frauds."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from assets.partitions import is_partition, location_partitions
from feature_repo.windows import LABEL_DELAY_DAYS
from orchestration.jobs import RANGE_END, RANGE_START, ingestion_job, monitoring_job


def monitoring_requests(
    run_id: str, first: str, last: str, partitions_def: dg.PartitionsDefinition | None = None
) -> list[dg.RunRequest]:
    """One monitoring run per landed day, and one outcome run per earlier day whose labels may have grown.

    One run per day, not one over the range: each day's metadata is its own point on the UI's plots.
    """
    landed = [d.strftime("%Y-%m-%d") for d in pd.date_range(first, last, freq="D")]
    earlier = pd.date_range(
        pd.Timestamp(first) - pd.Timedelta(days=LABEL_DELAY_DAYS + 1),
        pd.Timestamp(first),
        freq="D",
        inclusive="left",
    )
    requests = [dg.RunRequest(run_key=f"monitor-{run_id}-{day}", partition_key=day) for day in landed]
    requests += [
        dg.RunRequest(
            run_key=f"outcome-{run_id}-{day}",
            partition_key=day,
            asset_selection=[dg.AssetKey("outcome_metrics")],
        )
        for day in (d.strftime("%Y-%m-%d") for d in earlier)
        if is_partition(partitions_def, day)
    ]
    return requests


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingestion_job],
    request_job=monitoring_job,
    name="monitoring_after_ingestion",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After each ingestion run, monitors the days it landed and the label window before them.",
)
def monitoring_after_ingestion(context: dg.RunStatusSensorContext) -> list[dg.RunRequest] | dg.SkipReason:
    run = context.dagster_run
    first = run.tags.get(RANGE_START) or run.tags.get("dagster/partition")
    last = run.tags.get(RANGE_END) or first
    if not first or not last:
        return dg.SkipReason(f"run {run.run_id} landed no partition")
    return monitoring_requests(run.run_id, first, last, location_partitions(context.repository_def))
