"""One drift verdict: Evidently's report and the drift sensor agree, feature by feature, on the demo's days.

The frames are built as `make demo` builds them, without the loop around them:
the demo's dataset (`demo.cli.DEMO_DATASET`: card testing from its 4th live
day), the first champion's training rows as the reference (`demo.scenario`'s
model config, `assets.training`'s split), and each live day's transactions
with their features at their own time, as serving computes them (the one
feature engine, every report known by then). The sensor's verdict is the
`feature_drift` asset's (`drift_verdict` over `monitoring.drift`); Evidently's
is its report as that asset runs it, with the same settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from assets.monitoring import drift_columns, drift_verdict
from assets.training import ModelConfig, split_window
from demo.cli import DEMO_DATASET, LIVE_START_DAY, ONSET_DAY
from demo.scenario import initial_model_config
from feature_repo.engine import evaluate, reported_labels, to_ns
from feature_repo.on_demand import calendar_features
from feature_repo.windows import FEATURE_GROUPS, MODEL_FEATURES
from monitoring.drift import ReferenceProfile, feature_drift
from monitoring.evidently_report import SCORE_THRESHOLD, SensorRule, evidently_drift_report
from settings import MonitoringSettings
from simulator import simulate

MONITORING = MonitoringSettings()
"""The defaults `make demo` runs with."""


def _day(offset: int) -> str:
    return (pd.Timestamp(DEMO_DATASET.start_date) + pd.Timedelta(days=offset)).strftime("%Y-%m-%d")


LIVE_START, ONSET = _day(LIVE_START_DAY), _day(ONSET_DAY)
UNDRIFTED_DAYS = (LIVE_START, _day(ONSET_DAY - 1))
DRIFTED_DAYS = (ONSET, _day(ONSET_DAY + 2))


@pytest.fixture(scope="module")
def demo_features() -> pd.DataFrame:
    """Every transaction of the demo's dataset with the model's features as of its own time, and its day."""
    data = simulate(DEMO_DATASET)
    events, transactions = data.events(), data.transactions
    times = to_ns(transactions["TX_DATETIME"], "TX_DATETIME")
    columns: dict[str, np.ndarray] = {"TX_AMOUNT": transactions["TX_AMOUNT"].to_numpy(np.float64)}
    for name, values in calendar_features(transactions["TX_DATETIME"]).items():
        columns[name] = values.to_numpy()
    for group in FEATURE_GROUPS:
        labels = reported_labels(events, data.fraud_reports, group.delay_days) if group.uses_labels else None
        keys = transactions[group.join_key].to_numpy(np.int64)
        for name, values in evaluate(group, events, labels, keys, times).items():
            columns[name] = values.to_numpy()
    frame = pd.DataFrame(columns)[list(MODEL_FEATURES)]
    return frame.assign(day=transactions["TX_DATETIME"].dt.strftime("%Y-%m-%d").to_numpy())


@pytest.fixture(scope="module")
def reference(demo_features: pd.DataFrame) -> pd.DataFrame:
    """The first champion's training rows: what drift is measured against until a retraining."""
    config = initial_model_config(LIVE_START)["ops"]["fraud_model"]["config"]
    window = split_window(ModelConfig(**config).window_spec())
    days = pd.to_datetime(demo_features["day"]).dt.tz_localize("UTC")
    rows = demo_features[(days >= window.train_start) & (days < window.train_end)]
    return rows[list(MODEL_FEATURES)].reset_index(drop=True)


@pytest.mark.parametrize(
    ("day", "drifted_day"),
    [*((day, False) for day in UNDRIFTED_DAYS), *((day, True) for day in DRIFTED_DAYS)],
)
def test_evidently_and_the_sensor_agree_per_feature_on_the_demo_days(
    demo_features: pd.DataFrame, reference: pd.DataFrame, day: str, drifted_day: bool, tmp_path: Path
) -> None:
    current = demo_features.loc[demo_features["day"] == day, list(MODEL_FEATURES)].reset_index(drop=True)
    assert len(current) >= MONITORING.min_rows
    columns = drift_columns(MONITORING)
    sensor = feature_drift(
        ReferenceProfile.from_frame(reference, list(MODEL_FEATURES)), current, MONITORING.min_rows
    )
    drifted, detected = drift_verdict(sensor, MONITORING)
    # The premise: the sensor calls the days before the attack undrifted and the attack's days drifted.
    assert detected is drifted_day, f"{day}: the sensor found {drifted}"

    rule = SensorRule.from_settings(MONITORING)
    summary = evidently_drift_report(
        reference, current, columns, tmp_path / "drift.html", min_rows=MONITORING.min_rows, rule=rule
    )

    verdicts = {name: (name in drifted, summary["columns"][name]["drifted"]) for name in columns}
    disagreements = {name: f"sensor {s}, Evidently {e}" for name, (s, e) in verdicts.items() if s != e}
    assert not disagreements, f"{day}: per-feature verdicts differ: {disagreements}"
    assert sorted(summary["drifted_features"]) == sorted(drifted)
    assert summary["drifted_columns"] == len(drifted) and summary["dataset_drift"] is detected
    for name in columns:
        measured, column = sensor.features[name], summary["columns"][name]
        # Evidently saw the sensor's values and scored them with its statistics, bit for bit.
        score = max(measured.psi / MONITORING.psi_threshold, measured.ks / MONITORING.ks_threshold)
        assert column["drift_score"] == score, name
        assert column["method"] == rule.stattest_name and column["threshold"] == SCORE_THRESHOLD
    assert summary["test"] == rule.describe() and not summary["sampled"]
