"""The Dagster code location: assets, checks, jobs, sensors and the active profile's resources."""

from __future__ import annotations

import dagster as dg

from assets import features, ingestion, stream, training, training_set, validation
from orchestration.profiles import active_profile, build_resources
from orchestration.sensors import stream_landing_sensor

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.groups("features", "training"),
    description="Features, point-in-time training set, model, registration and promotion gate.",
)

ingestion_job = dg.define_asset_job(
    "ingestion_job",
    selection=dg.AssetSelection.groups("ingestion"),
    description="Land a range of days of raw transactions and fraud reports, with their checks.",
)

ASSET_MODULES = (ingestion, stream, features, training_set, training)


def build_definitions(resources: dict[str, object]) -> dg.Definitions:
    """The code location over the given resources (tests pass their own)."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules(list(ASSET_MODULES)),
        asset_checks=[
            *dg.load_asset_checks_from_modules([training]),
            *validation.checks,
        ],
        jobs=[ingestion_job, training_job],
        sensors=[stream_landing_sensor],
        resources=resources,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(build_resources(active_profile()))
