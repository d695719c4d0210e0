"""What starts a retraining without a person: drift, a drop in outcomes, a volume of new labels.

Each sensor reads what the monitoring assets recorded (their materialisation
metadata) or what ingestion landed, and asks for one `retraining_job` run:

* `drift_sensor`: a day of served features drifted from the champion's
  training rows (`feature_drift` says `drift_detected`).
* `performance_sensor`: the champion's mean daily outcome metric over the
  last days with complete labels fell below a floor, or below its own test
  value by a margin.
* `label_volume_sensor`: enough fraud reports landed after the label horizon
  of the last training set.

Exactly once per trigger. The daemon saves a tick's run requests before it
creates their runs and resumes an interrupted tick, which covers most crash
points; what is left is a daemon killed after saving a tick but before saving
the sensor's cursor: the next tick asks again. Every run key is a pure
function of the trigger (`drift-<day>`, `performance-v<version>-<day>`,
`labels-<horizon>`) and the daemon launches a key once per sensor, so asking
again launches nothing; and `drift_sensor` moves its cursor only past the days
it has decided on, so the days after a launch are judged on a later tick, not
skipped (`tests/test_sensor_exactly_once.py` kills the daemon in that window).
Cooldowns are read from the runs already launched (their
`fraudpipe/trigger_day` tag), not from the cursor, so a lost cursor cannot
shorten them. No sensor launches while a retraining run is unfinished: the
instance's run monitoring (`orchestration/instance/*/dagster.yaml`) fails a
run that never started, so a crash cannot block retraining for good. A key is
spent by its run even when the run fails: a failed retraining needs a person
(or the next trigger), not a loop of retries. Only a run that failed outside
its steps (its database restarting, say) is launched again, once, by the prod
instance's `run_retries`; the retry is unfinished retraining like its parent.

Days are days of event time, so a replay and live traffic follow one policy.
The retraining window ends at the latest settled day (every fraud in it
reported): the challenger trains on `retrain_train_days`, and the promotion
gate judges it and the champion on the `retrain_test_days` after them.
Drift alone is a reason to try, not to swap: the gate only promotes a
challenger that beats the champion on the same recent days.
"""

from __future__ import annotations

import json
from typing import Any

import dagster as dg
import pandas as pd

from feature_repo.windows import LABEL_DELAY_DAYS
from orchestration.jobs import RETRAINING_JOB
from orchestration.resources import LakeResource
from orchestration.sensors import UNFINISHED
from settings import MonitoringSettings

TRIGGER_TAG = "fraudpipe/trigger"
TRIGGER_DAY_TAG = "fraudpipe/trigger_day"
REASON_TAG = "fraudpipe/reason"


def _day(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%d")


def _report_times(lake: LakeResource, day: str) -> pd.Series:
    path = lake.partition_path("fraud_reports", day)
    return pd.read_parquet(path, columns=["REPORT_DATETIME"])["REPORT_DATETIME"]


def latest_report_time(lake: LakeResource) -> pd.Timestamp | None:
    """The latest fraud report landed in the lake (the last partition's maximum)."""
    for day in reversed(lake.days("fraud_reports")):
        times = _report_times(lake, day)
        if len(times):
            return pd.Timestamp(times.max()).tz_convert("UTC")
    return None


def retrain_run_config(lake: LakeResource, monitoring: MonitoringSettings) -> dict[str, Any]:
    """The model window of a retraining: train, then test, ending at the latest settled day."""
    latest = latest_report_time(lake)
    if latest is None:
        raise ValueError("no fraud report landed: nothing is settled to retrain on")
    end = (latest - pd.Timedelta(days=LABEL_DELAY_DAYS)).normalize()
    train_start = end - pd.Timedelta(days=monitoring.retrain_test_days + monitoring.retrain_train_days)
    window = {
        "train_start": _day(train_start),
        "train_days": monitoring.retrain_train_days,
        "delay_days": 0,
        "test_days": monitoring.retrain_test_days,
    }
    return {"ops": {"fraud_model": {"config": window}}}


def _request(
    trigger: str, day: str, reason: str, run_key: str, lake: LakeResource, monitoring: MonitoringSettings
) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key,
        run_config=retrain_run_config(lake, monitoring),
        tags={TRIGGER_TAG: trigger, TRIGGER_DAY_TAG: day, REASON_TAG: reason[:200]},
    )


def _blocked(context: dg.SensorEvaluationContext) -> str:
    unfinished = context.instance.get_runs(
        dg.RunsFilter(job_name=RETRAINING_JOB, statuses=UNFINISHED), limit=1
    )
    return f"retraining run {unfinished[0].run_id} has not finished" if unfinished else ""


def _last_trigger_day(context: dg.SensorEvaluationContext, trigger: str) -> str | None:
    runs = context.instance.get_runs(
        dg.RunsFilter(job_name=RETRAINING_JOB, tags={TRIGGER_TAG: trigger}), limit=1
    )
    return runs[0].tags.get(TRIGGER_DAY_TAG) if runs else None


def _days_between(first: str, last: str) -> int:
    return (pd.Timestamp(last) - pd.Timestamp(first)).days


def _materializations(
    instance: dg.DagsterInstance, asset: str, cursor: str | None, limit: int = 10_000
) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """(partition, metadata values) of the asset's materialisations after `cursor`, oldest first,
    and the cursor after them."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)), limit=limit, cursor=cursor, ascending=True
    )
    found = []
    for record in result.records:
        event = record.asset_materialization
        if event is None or event.partition is None:
            continue
        found.append((event.partition, {k: v.value for k, v in event.metadata.items()}))
    return found, result.cursor if result.records else cursor


@dg.sensor(
    name="drift_sensor",
    job_name=RETRAINING_JOB,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Retrains when a day's served features drift from the champion's training rows.",
)
def drift_sensor(
    context: dg.SensorEvaluationContext, lake: LakeResource, monitoring: dg.ResourceParam[MonitoringSettings]
) -> dg.SensorResult | dg.SkipReason:
    """Walks the new `feature_drift` materialisations one at a time, in storage order, and stops at
    the first that launches: the cursor never passes a drifted day it has not decided on, so a day
    read in the same tick as a launch (a replay, days piling up behind a long run, a daemon killed
    between saving the tick and the cursor) is judged on a later tick, not lost."""
    cursor = context.cursor
    while True:
        found, after = _materializations(context.instance, "feature_drift", cursor, limit=1)
        if after == cursor:
            return dg.SensorResult(skip_reason="no new drifted day", cursor=cursor)
        if not found or found[0][1].get("drift_detected") is not True:
            cursor = after
            continue
        day, meta = found[0]
        blocked = _blocked(context)
        if blocked:
            return dg.SensorResult(skip_reason=f"{blocked}; {day} waits", cursor=cursor)
        last = _last_trigger_day(context, "drift")
        if last is not None and _days_between(last, day) < monitoring.cooldown_days:
            # Within the cooldown, or older than the episode already retrained for (a replay, a backfill).
            context.log.info(f"drift on {day}: not {monitoring.cooldown_days} days after the one on {last}")
            cursor = after
            continue
        features = json.dumps(meta.get("drifted_features", []))
        reason = f"feature drift on {day}: {features} (max PSI {float(meta.get('max_psi', 0)):.3f})"
        context.log.info(reason)
        return dg.SensorResult(
            run_requests=[_request("drift", day, reason, f"drift-{day}", lake, monitoring)], cursor=after
        )


def _champion_series(
    found: list[tuple[str, dict[str, Any]]], metric: str
) -> dict[str, tuple[str, float, float | None]]:
    """Per day with complete labels: (champion version, its metric, its test value)."""
    series: dict[str, tuple[str, float, float | None]] = {}
    for day, meta in found:
        value = meta.get(f"champion_{metric}")
        if meta.get("labels_complete") is True and value is not None:
            series[day] = (str(meta["champion_version"]), float(value), meta.get(f"champion_test_{metric}"))
    return series


@dg.sensor(
    name="performance_sensor",
    job_name=RETRAINING_JOB,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Retrains when the champion's outcome metric over the last labelled days falls below a floor "
        "or below its own test value by a margin."
    ),
)
def performance_sensor(
    context: dg.SensorEvaluationContext, lake: LakeResource, monitoring: dg.ResourceParam[MonitoringSettings]
) -> dg.SensorResult | dg.SkipReason:
    metric = monitoring.performance_metric
    # The whole history is re-read each tick (one record per labelled day): the window spans
    # several ticks' materialisations, and a cursor-kept window could be lost with the cursor.
    found, _ = _materializations(context.instance, "outcome_metrics", None)
    series = _champion_series(found, metric)
    if not series:
        return dg.SkipReason("no day with complete labels yet")
    latest = max(series)
    version = series[latest][0]
    window = sorted(d for d, (v, _, _) in series.items() if v == version)[
        -monitoring.performance_window_days :
    ]
    if len(window) < monitoring.performance_window_days:
        return dg.SkipReason(f"v{version} has {len(window)} labelled day(s), the window needs more")
    mean = sum(series[d][1] for d in window) / len(window)
    test_value = series[latest][2]
    floor = monitoring.performance_floor
    limit = max(floor, (test_value - monitoring.performance_max_drop) if test_value is not None else floor)
    if mean >= limit:
        return dg.SkipReason(f"v{version} {metric} {mean:.3f} over {window[0]}..{latest} >= {limit:.3f}")
    blocked = _blocked(context)
    if blocked:
        return dg.SkipReason(blocked)
    last = _last_trigger_day(context, "performance")
    if last is not None and _days_between(last, latest) < monitoring.cooldown_days:
        return dg.SkipReason(f"within the cooldown of the performance retraining of {last}")
    reason = (
        f"champion v{version} {metric} {mean:.3f} over {window[0]}..{latest} < {limit:.3f} "
        f"(test value {test_value if test_value is None else round(test_value, 3)})"
    )
    context.log.info(reason)
    return dg.SensorResult(
        run_requests=[
            _request("performance", latest, reason, f"performance-v{version}-{latest}", lake, monitoring)
        ]
    )


def _label_horizon(context: dg.SensorEvaluationContext) -> str | None:
    event = context.instance.get_latest_materialization_event(dg.AssetKey("training_set"))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("label_horizon")
    return str(value.value) if value is not None and value.value else None


@dg.sensor(
    name="label_volume_sensor",
    job_name=RETRAINING_JOB,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Retrains when enough fraud reports have landed since the last training set's labels.",
)
def label_volume_sensor(
    context: dg.SensorEvaluationContext, lake: LakeResource, monitoring: dg.ResourceParam[MonitoringSettings]
) -> dg.SensorResult | dg.SkipReason:
    horizon = _label_horizon(context)
    if horizon is None:
        return dg.SkipReason("no training set yet: nothing to count new labels from")
    since = pd.Timestamp(horizon)
    times = [_report_times(lake, day) for day in lake.days("fraud_reports") if day >= _day(since)]
    new = int(sum((t > since).sum() for t in times))
    if new < monitoring.label_volume_min_reports:
        return dg.SkipReason(
            f"{new} fraud reports since {horizon}, fewer than {monitoring.label_volume_min_reports}"
        )
    blocked = _blocked(context)
    if blocked:
        return dg.SkipReason(blocked)
    latest = latest_report_time(lake)
    day = _day(latest) if latest is not None else _day(since)
    reason = f"{new} fraud reports landed since the last training set's horizon {horizon}"
    context.log.info(reason)
    return dg.SensorResult(
        run_requests=[_request("label_volume", day, reason, f"labels-{horizon}", lake, monitoring)]
    )


RETRAINING_SENSORS = [
    drift_sensor,
    performance_sensor,
    label_volume_sensor,
]
