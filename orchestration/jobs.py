"""The jobs: which assets run together, named once for the definitions and the sensors."""

import dagster as dg

RETRAINING_JOB = "retraining_job"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
"""Dagster's tags of a partition-range run: where the stream sensor and the headless runner put the days."""
TRAINING = dg.AssetSelection.groups("features", "training") | dg.AssetSelection.assets("deployment")

training_job = dg.define_asset_job(
    "training_job",
    selection=TRAINING,
    description=(
        "Features, point-in-time training set, model, registration, the promotion gate, and, when the "
        "challenger passes it, the new champion and its deployment."
    ),
)

retraining_job = dg.define_asset_job(
    RETRAINING_JOB,
    selection=TRAINING,
    description=(
        "The training job on a recent window, launched by the drift, performance and label-volume "
        "sensors: the promotion gate decides whether a new champion is deployed."
    ),
)

ingestion_job = dg.define_asset_job(
    "ingestion_job",
    selection=dg.AssetSelection.groups("ingestion"),
    description="Land a range of days of raw transactions and fraud reports, with their checks.",
)

monitoring_job = dg.define_asset_job(
    "monitoring_job",
    selection=dg.AssetSelection.groups("monitoring") - dg.AssetSelection.assets("serving_health"),
    description="Prediction log, feature and prediction drift, live data quality and outcomes of days.",
)

deployment_job = dg.define_asset_job(
    "deployment_job",
    selection=dg.AssetSelection.assets("deployment"),
    description="Pin the current champion and challenger into serving (`make rollback` runs it).",
)

serving_health_job = dg.define_asset_job(
    "serving_health_job",
    selection=dg.AssetSelection.assets("serving_health"),
    description="Latency quantiles and error rates of the live scoring service.",
)
