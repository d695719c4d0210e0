"""Run the pipeline headless: the same jobs `dagster dev` shows, executed in-process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
import pandas as pd

from assets.training import ModelConfig
from feature_repo.windows import LABEL_DELAY_DAYS
from orchestration.definitions import build_definitions
from orchestration.jobs import RANGE_END, RANGE_START


def source_days(resources: Mapping[str, Any]) -> tuple[str, str]:
    """First and last complete UTC day of the source data (transactions and reports together).

    Raises:
        FileNotFoundError: the source has no events.
    """
    days = resources["source"].data_days()
    if days is None:
        raise FileNotFoundError(
            f"no events under {resources['source'].path}: generate them (make simulate) "
            "or point FRAUDPIPE_DATA_DIR at your own (docs/own_data.md)"
        )
    return days


def latest_window(first: str, last: str) -> dict[str, str]:
    """The training config of the latest split whose test week's labels are settled by `last`.

    Train a week, wait a week, test a week, and `LABEL_DELAY_DAYS` more until
    the test week's fraud reports are in; the model selection's folds come
    before that (`modeling.split.prequential_folds`), and the oldest one's
    training week must be in the data too.

    Raises:
        ValueError: the data spans fewer days than that.
    """
    model = ModelConfig()
    span = model.train_days + model.delay_days + model.test_days + LABEL_DELAY_DAYS
    start = pd.Timestamp(last) - pd.Timedelta(days=span - 1)
    folds = model.delay_days + model.test_days + model.test_days * (model.n_folds - 1)
    needed = span + folds
    have = (pd.Timestamp(last) - pd.Timestamp(first)).days + 1
    if have < needed:
        raise ValueError(f"the data spans {have} days ({first} to {last}); training needs at least {needed}")
    return {"train_start": start.strftime("%Y-%m-%d")}


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
