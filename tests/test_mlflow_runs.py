"""An MLflow run says what made it: a name a person reads, and the Dagster run, asset, job and trigger."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from assets.training import fraud_model, registered_model, run_trigger
from feature_repo.windows import MODEL_FEATURES
from modeling.registry import ModelRegistry
from orchestration.jobs import RETRAINING_JOB
from orchestration.resources import LakeResource

TINY_MODEL = {
    "train_start": "2018-07-25",
    "train_days": 2,
    "delay_days": 0,
    "test_days": 1,
    "n_folds": 1,
    "n_estimators": [3],
    "max_depth": [2],
    "learning_rate": [0.3],
}
"""Selection trains on 07-24..07-25 and tests on 07-26; the model trains on 07-25..07-26, tests on 07-27."""

SENSOR_TAGS = {"dagster/sensor_name": "x", "fraudpipe/reason": "y"}


def tiny_training_set(days: list[str], rows_per_day: int = 200, seed: int = 0) -> pd.DataFrame:
    """Random features, a label that follows the amount, one card per row (no card is 'known compromised')."""
    rng = np.random.default_rng(seed)
    n = len(days) * rows_per_day
    start = pd.DatetimeIndex(pd.to_datetime(np.repeat(days, rows_per_day)).tz_localize("UTC"))
    frame = pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(n),
            "TX_DATETIME": start + pd.to_timedelta(rng.integers(0, 86_400, n), unit="s"),
            "CUSTOMER_ID": np.arange(n),
            "TERMINAL_ID": rng.integers(0, 50, n),
        }
    )
    for feature in MODEL_FEATURES:
        frame[feature] = rng.random(n)
    frame["TX_FRAUD"] = (frame["TX_AMOUNT"] + 0.3 * rng.random(n) > 1.1).astype(int)
    return frame


@pytest.fixture
def resources(tmp_path: Path) -> dict[str, object]:
    lake = LakeResource(root=str(tmp_path / "lake"))
    lake.write_table(
        "training_set", tiny_training_set(["2018-07-24", "2018-07-25", "2018-07-26", "2018-07-27"])
    )
    registry = ModelRegistry(
        f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}", tmp_path / "mlflow" / "artifacts", "fraud_model"
    )
    return {"lake": lake, "mlflow": registry}


def test_mlflow_run_is_named_and_tagged_with_the_dagster_run(resources: dict[str, object]) -> None:
    """What a sensor launches: the MLflow run of `registered_model` carries the Dagster run's id,
    asset, job and trigger."""
    defs = dg.Definitions(
        assets=[fraud_model, registered_model],
        jobs=[dg.define_asset_job(RETRAINING_JOB, selection=[fraud_model, registered_model])],
        resources=resources,
    )
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(RETRAINING_JOB).execute_in_process(
            instance=instance,
            tags=SENSOR_TAGS,
            run_config={"ops": {"fraud_model": {"config": TINY_MODEL}}},
        )
    assert result.success
    store = resources["mlflow"]
    assert isinstance(store, ModelRegistry)
    experiment_id = store.activate()
    runs = mlflow.search_runs(experiment_ids=[experiment_id], output_format="list")
    assert len(runs) == 1
    (run,) = runs
    dagster_run_id = result.run_id
    assert run.info.run_name == f"fraud_model 2018-07-25..2018-07-26 {dagster_run_id[:8]}"
    tags = run.data.tags
    assert {k: v for k, v in tags.items() if k.startswith("dagster.")} == {
        "dagster.run_id": dagster_run_id,
        "dagster.asset": "registered_model",
        "dagster.job": RETRAINING_JOB,
        "dagster.trigger": "sensor:x",
        "dagster.trigger_reason": "y",
    }
    found = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`dagster.run_id` = '{dagster_run_id}'",
        output_format="list",
    )
    assert [r.info.run_id for r in found] == [run.info.run_id], "findable by the Dagster run id"
    (registered,) = result.asset_materializations_for_node("registered_model")
    assert registered.metadata["mlflow_run_id"].value == run.info.run_id, "and the other way round"
    assert "dagster.run_id" not in store.client().get_model_version("fraud_model", "1").tags, "run tags only"


@pytest.mark.parametrize(
    ("tags", "trigger"),
    [
        (SENSOR_TAGS, "sensor:x"),
        ({"dagster/schedule_name": "nightly"}, "schedule:nightly"),
        ({"dagster/backfill": "abcdefgh"}, "backfill:abcdefgh"),
        ({"dagster/from_automation_condition": "true"}, "automation"),
        ({"dagster/parent_run_id": "0123"}, "re-execution:0123"),
        ({"dagster/sensor_name": "drift_sensor", "dagster/parent_run_id": "0123"}, "sensor:drift_sensor"),
        ({"fraudpipe/reason": "y"}, "manual"),
        ({}, "manual"),
    ],
)
def test_run_trigger(tags: dict[str, str], trigger: str) -> None:
    assert run_trigger(tags) == trigger
