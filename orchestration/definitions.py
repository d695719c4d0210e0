"""The Dagster code location: assets, checks, jobs, sensors and the active profile's resources."""

from __future__ import annotations

import dagster as dg

from assets import features, ingestion, monitoring, serving, stream, training, training_set, validation
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
from orchestration.retraining import RETRAINING_SENSORS
from orchestration.sensors import stream_landing_sensor
from settings import load_settings

ASSET_MODULES = (ingestion, stream, features, training_set, training, serving, monitoring)


def build_definitions(resources: dict[str, object]) -> dg.Definitions:
    """The code location over the given resources (tests pass their own)."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules(list(ASSET_MODULES)),
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
                default_status=dg.DefaultScheduleStatus.RUNNING,
            )
        ],
        sensors=[stream_landing_sensor, monitoring_after_ingestion, *RETRAINING_SENSORS],
        resources=resources,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(build_resources(load_settings()))
