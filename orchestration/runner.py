"""Run the pipeline headless: the same jobs `dagster dev` shows, executed in-process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
import pandas as pd

from assets.partitions import HISTORY_START
from expectations.timestamps import lenient_utc
from orchestration.definitions import build_definitions
from orchestration.jobs import RANGE_END, RANGE_START


def source_days(resources: Mapping[str, Any]) -> tuple[str, str]:
    """First and last UTC day of the source data (transactions and reports together)."""
    source = resources["source"]
    times = pd.concat(
        [
            lenient_utc(source.read("transactions")["TX_DATETIME"]),
            lenient_utc(source.read("fraud_reports")["REPORT_DATETIME"]),
        ]
    )
    # Only days that are partitions: from the history's start to yesterday.
    first = max(times.min(), pd.Timestamp(HISTORY_START, tz="UTC"))
    last = times[times < pd.Timestamp.now(tz="UTC").normalize()].max()
    return first.strftime("%Y-%m-%d"), last.strftime("%Y-%m-%d")


def run_pipeline(
    resources: Mapping[str, Any],
    instance: dg.DagsterInstance,
    run_config: Mapping[str, Any] | None = None,
    log_level: str = "DEBUG",
) -> dict[str, dg.ExecuteInProcessResult]:
    """Land every source day in one run, then build features and train.

    Args:
        resources: the profile's resources.
        instance: where runs and events are recorded (the UI's instance, or a test's).
        run_config: run config of the training job (e.g. model hyperparameters).
        log_level: of the console log; the runs' event logs keep everything.

    Raises:
        dg.DagsterExecutionStepExecutionError and friends: a failed step or a
        failed blocking check stops the pipeline with Dagster's own error.
    """
    defs = build_definitions(dict(resources))
    first, last = source_days(resources)
    loggers = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    results = {
        "ingestion_job": defs.resolve_job_def("ingestion_job").execute_in_process(
            instance=instance, tags={RANGE_START: first, RANGE_END: last}, run_config=loggers
        )
    }
    results["training_job"] = defs.resolve_job_def("training_job").execute_in_process(
        instance=instance, run_config={**loggers, **(run_config or {})}
    )
    return results
