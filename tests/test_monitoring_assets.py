"""Monitoring assets at their edges: no data, unusable data, serving down, and serving's numbers read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from assets.monitoring import (
    INSUFFICIENT,
    feature_drift,
    outcome_metrics,
    prediction_drift,
    serving_health,
    serving_summary,
)
from feature_repo.windows import MODEL_FEATURES
from serving.metrics import ServingMetrics
from settings import MonitoringSettings, ServingSettings
from tests.conftest import ServedData, local_settings

DAY = "2018-08-08"


def _materialize(served: ServedData, day: str) -> dict[str, dict[str, Any]]:
    resources = {**served.resources, "monitoring": MonitoringSettings(evidently_reports=False)}
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [feature_drift, prediction_drift, outcome_metrics],
            partition_key=day,
            resources=resources,
            instance=instance,
        )
    assert result.success
    return {
        e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }


def _predictions(served: ServedData, features: pd.DataFrame | None = None) -> pd.DataFrame:
    rows = served.resources["lake"].read_table("training_set")
    rows = rows[rows["TX_DATETIME"].dt.strftime("%Y-%m-%d") == DAY].reset_index(drop=True)
    frame = rows[["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", *MODEL_FEATURES]].assign(
        PROBABILITY=0.01, MODEL_VERSION="1", ROUTE="champion", CACHED=False
    )
    if features is not None:
        frame[list(MODEL_FEATURES)] = features.to_numpy()
    return frame


def test_a_day_without_predictions_is_insufficient_not_a_failure(served_data: ServedData) -> None:
    metadata = _materialize(served_data, "2018-08-09")
    assert set(metadata) == {"feature_drift", "prediction_drift", "outcome_metrics"}
    for asset, values in metadata.items():
        assert values["sufficient"] is False, asset
        assert str(values["status"]).startswith(INSUFFICIENT), asset


def test_all_nan_features_are_insufficient_and_real_ones_are_measured(served_data: ServedData) -> None:
    lake = served_data.resources["lake"]
    clean = _predictions(served_data)
    assert len(clean) >= 200
    nan = pd.DataFrame(np.nan, index=clean.index, columns=list(MODEL_FEATURES))
    lake.write_partition("predictions", DAY, _predictions(served_data, nan))
    drift = _materialize(served_data, DAY)["feature_drift"]
    assert drift["sufficient"] is False and drift["drift_detected"] is False
    assert "insufficient" in str(drift["status"])

    lake.write_partition("predictions", DAY, clean)
    measured = _materialize(served_data, DAY)
    drift, outcome = measured["feature_drift"], measured["outcome_metrics"]
    assert drift["sufficient"] is True
    assert 0 <= drift["max_psi"] < 10 and 0 <= drift["max_ks"] <= 1
    assert outcome["sufficient"] is True and outcome["champion_version"] == "1"
    # The logged probabilities (all 0.01) rank nothing; the champion re-scored on the same features does.
    assert outcome["served_roc_auc"] == pytest.approx(0.5)
    assert outcome["champion_roc_auc"] > 0.7


def test_serving_summary_reads_quantiles_and_error_rates_from_the_exposition() -> None:
    metrics = ServingMetrics()
    for seconds in [0.004] * 80 + [0.04] * 15 + [0.4] * 5:
        metrics.request_seconds.labels("/v1/score", "200").observe(seconds)
    for status, count in (("503", 3), ("500", 1), ("422", 6)):
        for _ in range(count):
            metrics.request_seconds.labels("/v1/score", status).observe(0.001)
    summary = serving_summary(metrics.exposition().decode())
    assert summary["requests"] == 110
    assert summary["error_rate"] == pytest.approx(4 / 110)
    assert summary["rejected_503_rate"] == pytest.approx(3 / 110)
    assert summary["p50_ms"] <= 5 < summary["p95_ms"] <= 50 < summary["p99_ms"] <= 500


def test_serving_health_reports_a_server_that_does_not_answer(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, serving=ServingSettings(ray_metrics_port=9))
    result = dg.materialize([serving_health], resources={"settings": settings})
    (event,) = result.get_asset_materialization_events()
    status = event.materialization.metadata["status"].value
    assert str(status).startswith(f"{INSUFFICIENT}: http://127.0.0.1:9/metrics did not answer")
