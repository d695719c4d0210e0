"""Thresholds of the monitors and the retraining policy: one place to tune the loop."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MonitoringSettings(BaseModel):
    """`FRAUDPIPE_MONITORING__<FIELD>`.

    Days are simulated (event-time) days, so replays and live traffic follow
    the same policy. The defaults are calibrated on the simulator's scenarios
    (`tests/test_monitoring_scenarios.py`): no retraining over 30 days without
    drift, a card-testing attack detected within 3 days of its onset.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    psi_threshold: float = Field(0.2, gt=0, description="a feature drifts above this PSI")
    ks_threshold: float = Field(0.15, gt=0, le=1, description="... or above this KS statistic")
    min_drifted_features: int = Field(2, ge=1, description="features drifting together for a drifted day")
    ignored_features: tuple[str, ...] = Field(
        ("TX_DURING_WEEKEND",), description="never judged: a Saturday is a calendar fact, not drift"
    )
    min_rows: int = Field(200, ge=1, description="rows below which a day is 'insufficient data'")
    cooldown_days: int = Field(
        6, ge=0, description="days after a retraining in which the same signal is one episode"
    )
    performance_metric: Literal["roc_auc", "average_precision", "card_precision_at_100"] = "average_precision"
    performance_window_days: int = Field(
        3, ge=1, description="labelled days the champion's metric is averaged over"
    )
    performance_floor: float = Field(0.4, ge=0, le=1, description="retrain below this mean metric")
    performance_max_drop: float = Field(
        0.3, ge=0, le=1, description="... or this far below its own test value"
    )
    label_volume_min_reports: int = Field(
        1_500, ge=1, description="new fraud reports that warrant retraining"
    )
    retrain_train_days: int = Field(14, ge=1, description="days a retraining trains on")
    retrain_test_days: int = Field(3, ge=1, description="days after them the promotion gate judges on")
    evidently_reports: bool = Field(True, description="also save Evidently's HTML drift report per day")
    exporter_port: int = Field(9465, ge=1, le=65535, description="Prometheus exporter of monitoring results")
