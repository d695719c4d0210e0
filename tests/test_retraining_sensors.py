"""The retraining sensors' decisions, tick by tick, on materialisations recorded in a real instance.

The whole loop runs them in `test_monitoring_scenarios.py` and the daemon under kills in
`test_sensor_exactly_once.py`; here each rule is pinned on its own.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from orchestration.monitoring_runs import monitoring_requests
from orchestration.resources import LakeResource
from orchestration.retraining import (
    REASON_TAG,
    TRIGGER_DAY_TAG,
    TRIGGER_TAG,
    drift_sensor,
    label_volume_sensor,
    performance_sensor,
    retrain_run_config,
)
from settings import MonitoringSettings


@pytest.fixture
def lake(tmp_path: Path) -> LakeResource:
    """A lake whose last fraud report is 2018-06-20 12:00, so the last settled day ends 06-13."""
    lake = LakeResource(root=str(tmp_path / "lake"))
    for day, hour in (("2018-06-19", 8), ("2018-06-20", 12)):
        times = pd.date_range(f"{day} {hour:02d}:00", periods=3, freq="-1h", tz="UTC")
        lake.write_partition(
            "fraud_reports", day, pd.DataFrame({"TRANSACTION_ID": [1, 2, 3], "REPORT_DATETIME": times})
        )
    return lake


def _tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, lake: LakeResource, **policy: object):
    context = dg.build_sensor_context(
        instance=instance, resources={"lake": lake, "monitoring": MonitoringSettings(**policy)}
    )
    return sensor.evaluate_tick(context)


def _report(instance: dg.DagsterInstance, asset: str, day: str | None, **metadata: object) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=day, metadata=metadata))


def test_retraining_window_ends_at_the_last_settled_day(lake: LakeResource) -> None:
    config = retrain_run_config(lake, MonitoringSettings(retrain_train_days=14, retrain_test_days=3))
    assert config["ops"]["fraud_model"]["config"] == {
        "train_start": "2018-05-27",
        "train_days": 14,
        "delay_days": 0,
        "test_days": 3,
    }


def test_drift_sensor_fires_once_for_the_first_drifted_day(lake: LakeResource) -> None:
    with dg.instance_for_test() as instance:
        _report(instance, "feature_drift", "2018-06-14", drift_detected=False, max_psi=0.05)
        assert not _tick(drift_sensor, instance, lake).run_requests
        for day in ("2018-06-15", "2018-06-16"):
            _report(
                instance, "feature_drift", day, drift_detected=True, max_psi=0.4, drifted_features=["A", "B"]
            )
        data = _tick(drift_sensor, instance, lake)
        (request,) = data.run_requests
        assert request.run_key == "drift-2018-06-15"
        assert request.tags[TRIGGER_TAG] == "drift"
        assert request.tags[TRIGGER_DAY_TAG] == "2018-06-15"
        assert "A" in request.tags[REASON_TAG] and "0.400" in request.tags[REASON_TAG]
        assert request.run_config == retrain_run_config(lake, MonitoringSettings())


def test_drift_sensor_respects_the_cooldown_of_launched_runs(lake: LakeResource) -> None:
    with dg.instance_for_test() as instance:
        _retrained_for_drift_on(instance, "2018-06-15")
        _report(instance, "feature_drift", "2018-06-18", drift_detected=True, max_psi=0.4)
        assert not _tick(drift_sensor, instance, lake, cooldown_days=6).run_requests
        assert _tick(drift_sensor, instance, lake, cooldown_days=3).run_requests


def test_drift_older_than_the_last_retrained_episode_is_not_a_trigger(lake: LakeResource) -> None:
    """A replay or backfill of old days must not retrain for drift already retrained for."""
    with dg.instance_for_test() as instance:
        _retrained_for_drift_on(instance, "2018-06-15")
        _report(instance, "feature_drift", "2018-06-10", drift_detected=True, max_psi=0.4)
        assert not _tick(drift_sensor, instance, lake, cooldown_days=0).run_requests
        _report(instance, "feature_drift", "2018-06-16", drift_detected=True, max_psi=0.4)
        assert _tick(drift_sensor, instance, lake, cooldown_days=0).run_requests


def _retrained_for_drift_on(instance: dg.DagsterInstance, day: str) -> None:
    """A finished retraining run that the drift of `day` launched."""
    instance.add_run(
        dg.DagsterRun(
            job_name="retraining_job",
            run_id="r1",
            tags={TRIGGER_TAG: "drift", TRIGGER_DAY_TAG: day},
            status=dg.DagsterRunStatus.SUCCESS,
        )
    )


def _outcome(instance: dg.DagsterInstance, day: str, value: float, complete: bool = True) -> None:
    _report(
        instance,
        "outcome_metrics",
        day,
        labels_complete=complete,
        champion_version="3",
        champion_average_precision=value,
        champion_test_average_precision=0.8,
    )


def test_performance_sensor_judges_the_champion_over_complete_days(lake: LakeResource) -> None:
    with dg.instance_for_test() as instance:
        _outcome(instance, "2018-06-10", 0.75)
        _outcome(instance, "2018-06-11", 0.45)
        assert not _tick(performance_sensor, instance, lake).run_requests  # 2 days: window incomplete
        _outcome(instance, "2018-06-12", 0.45)
        assert not _tick(performance_sensor, instance, lake).run_requests  # mean 0.55 >= 0.8 - 0.3
        _outcome(instance, "2018-06-13", 0.1, complete=False)  # provisional labels do not count
        assert not _tick(performance_sensor, instance, lake).run_requests
        _outcome(instance, "2018-06-13", 0.3)
        (request,) = _tick(performance_sensor, instance, lake).run_requests
        assert request.run_key == "performance-v3-2018-06-13"
        assert "0.400 over 2018-06-11..2018-06-13" in request.tags[REASON_TAG]


def test_label_volume_sensor_counts_reports_after_the_training_horizon(lake: LakeResource) -> None:
    with dg.instance_for_test() as instance:
        assert not _tick(label_volume_sensor, instance, lake, label_volume_min_reports=4).run_requests
        _report(instance, "training_set", None, label_horizon="2018-06-19 07:00:00+00:00")
        # After the horizon: 08:00 on the 19th, and 10:00, 11:00, 12:00 on the 20th.
        assert not _tick(label_volume_sensor, instance, lake, label_volume_min_reports=5).run_requests
        (request,) = _tick(label_volume_sensor, instance, lake, label_volume_min_reports=4).run_requests
        assert request.run_key == "labels-2018-06-19 07:00:00+00:00"
        assert request.tags[TRIGGER_DAY_TAG] == "2018-06-20"


def test_monitoring_follows_each_landed_day_and_refreshes_the_label_window() -> None:
    requests = monitoring_requests("abc", "2018-06-20", "2018-06-21")
    full = [(r.partition_key, r.asset_selection) for r in requests if r.asset_selection is None]
    outcome = [r.partition_key for r in requests if r.asset_selection == [dg.AssetKey("outcome_metrics")]]
    assert full == [("2018-06-20", None), ("2018-06-21", None)]
    assert outcome == [d.strftime("%Y-%m-%d") for d in pd.date_range("2018-06-12", "2018-06-19")]
    assert len({r.run_key for r in requests}) == len(requests)


def test_drift_sensor_decides_each_drifted_day_before_moving_past_it(lake: LakeResource) -> None:
    """Days that arrive together (a replay, a backlog, a daemon killed after a launch) each get their
    turn: the cursor stops after the day launched, not after everything read."""
    with dg.instance_for_test() as instance:
        for day in ("2018-06-15", "2018-06-15", "2018-06-16", "2018-06-17"):  # one day twice: no crash
            _report(instance, "feature_drift", day, drift_detected=True, max_psi=0.4)
        cursor, launched = None, []
        for _ in range(5):
            context = dg.build_sensor_context(
                instance=instance,
                cursor=cursor,
                resources={"lake": lake, "monitoring": MonitoringSettings(cooldown_days=0)},
            )
            data = drift_sensor.evaluate_tick(context)
            cursor = data.cursor
            launched += [r.run_key for r in data.run_requests]
        # The day reported twice asks twice for one run key: the daemon launches it once.
        assert launched == ["drift-2018-06-15", "drift-2018-06-15", "drift-2018-06-16", "drift-2018-06-17"]
