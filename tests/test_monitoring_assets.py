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


def _entries(
    served: ServedData,
    day: str,
    assets: tuple[dg.AssetsDefinition, ...] = (feature_drift, prediction_drift, outcome_metrics),
    evidently: bool = False,
) -> dict[str, dict[str, dg.MetadataValue]]:
    resources = {**served.resources, "monitoring": MonitoringSettings(evidently_reports=evidently)}
    with dg.instance_for_test() as instance:
        result = dg.materialize(list(assets), partition_key=day, resources=resources, instance=instance)
    assert result.success
    return {
        e.asset_key.to_user_string(): dict(e.materialization.metadata)
        for e in result.get_asset_materialization_events()
    }


def _materialize(served: ServedData, day: str) -> dict[str, dict[str, Any]]:
    return {
        asset: {k: v.value for k, v in entries.items()} for asset, entries in _entries(served, day).items()
    }


def _plotted(entries: dict[str, dg.MetadataValue]) -> list[str]:
    """The labels Dagster's Plots view draws, in its order: numeric entries, sorted as plain strings."""
    return sorted(k for k, v in entries.items() if isinstance(v, dg.IntMetadataValue | dg.FloatMetadataValue))


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


def test_feature_drift_says_its_rule_plots_headlines_first_and_evidently_agrees(
    served_data: ServedData,
) -> None:
    lake = served_data.resources["lake"]
    lake.write_partition("predictions", DAY, _predictions(served_data))

    entries = _entries(served_data, DAY, (feature_drift,), evidently=True)["feature_drift"]

    drift = {k: v.value for k, v in entries.items()}
    assert drift["sufficient"] is True
    assert "PSI (10 reference quantile bins) > 0.2 or KS > 0.15" in drift["drift_rule"]
    assert "drift_sensor" in drift["drift_rule"]
    assert drift["n_drifted"] == len(drift["drifted_features"])
    # One verdict: Evidently's report, judged by the sensor's rule, names the same features.
    assert drift["evidently_agrees"] is True
    assert sorted(drift["evidently_drifted_features"]) == sorted(drift["drifted_features"])
    assert Path(drift["evidently_report"]).stat().st_size > 10_000
    plotted = _plotted(entries)
    assert plotted[:4] == ["max_ks", "max_psi", "n_drifted", "n_rows"]
    assert plotted[4:] == [
        f"per_feature/{name}/{s}" for name in sorted(MODEL_FEATURES) for s in ("ks", "psi")
    ]


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
