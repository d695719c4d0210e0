"""The Dagster code location: assets, checks, jobs, sensors and the active profile's resources."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg

from assets import features, ingestion, monitoring, serving, stream, training, training_set, validation
from assets.partitions import data_partitions
from orchestration.jobs import (
    deployment_job,
    ingestion_job,
    monitoring_job,
    retraining_job,
    serving_health_job,
    training_job,
)
from orchestration.monitoring_runs import monitoring_after_ingestion
from orchestration.profiles import build_resources
from orchestration.resources import EVENT_TIME_COLUMNS, EventSourceResource, LakeResource
from orchestration.retraining import RETRAINING_SENSORS
from orchestration.sensors import stream_landing_sensor
from settings import Settings, load_settings

ASSET_MODULES = (ingestion, stream, features, training_set, training, serving, monitoring)


def _on_data_days(assets: Sequence[Any], partitions_def: dg.PartitionsDefinition) -> Sequence[Any]:
    """The assets with their declared daily partitions replaced by the data's."""
    return dg.map_asset_specs(
        lambda spec: (
            spec if spec.partitions_def is None else spec.replace_attributes(partitions_def=partitions_def)
        ),
        assets,
    )


def data_days(resources: dict[str, object]) -> tuple[str, str] | None:
    """First and last day of the events: the source's, and those already landed in the lake."""
    source, lake = resources["source"], resources["lake"]
    days = list(source.data_days() or ()) if isinstance(source, EventSourceResource) else []
    if isinstance(lake, LakeResource):
        days += [d for table in EVENT_TIME_COLUMNS for d in lake.days(table)]
    return (min(days), max(days)) if days else None


def build_definitions(resources: dict[str, object]) -> dg.Definitions:
    """The code location over the given resources (tests pass their own).

    The daily partitions cover the days of the events (`data_days`,
    `assets.partitions.data_partitions`). The serving-health schedule runs
    a job every 5 minutes: on by default where a service runs unattended,
    off in the local profile (start it from the UI's Automation page).
    """
    partitions_def = data_partitions(data_days(resources))
    settings = resources.get("settings")
    unattended = isinstance(settings, Settings) and settings.profile != "local"
    schedule_status = dg.DefaultScheduleStatus.RUNNING if unattended else dg.DefaultScheduleStatus.STOPPED
    return dg.Definitions(
        assets=_on_data_days(dg.load_assets_from_modules(list(ASSET_MODULES)), partitions_def),
        asset_checks=[
            *dg.load_asset_checks_from_modules([training]),
            *validation.checks,
        ],
        jobs=[
            ingestion_job,
            training_job,
            retraining_job,
            deployment_job,
            monitoring_job,
            serving_health_job,
        ],
        schedules=[
            dg.ScheduleDefinition(
                job=serving_health_job,
                cron_schedule="*/5 * * * *",
                default_status=schedule_status,
            )
        ],
        sensors=[stream_landing_sensor, monitoring_after_ingestion, *RETRAINING_SENSORS],
        resources=resources,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(build_resources(load_settings()))
