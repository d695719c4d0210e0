"""Monitoring: how the live model and its inputs behave, one partition per day of event time.

The inputs are what serving logged (`prediction_log`: the features it used,
the score it gave, the version that gave it) and what ingestion landed (raw
transactions, fraud reports). Each asset writes its numbers as metadata, so
the Dagster UI plots them over partitions, and into one tidy table
(`monitoring.exporter`) that Prometheus scrapes: the same numbers in both.

A day with too little data says "insufficient data" in its metadata instead
of failing: an empty hour of traffic is not an incident, and a crash would
hide the days around it. Outcome metrics of a day are provisional until
every fraud of that day can have been reported (LABEL_DELAY_DAYS later);
`outcome_metrics` depends on the fraud reports of the next days, so it is
re-materialised as they land, and says whether its labels are complete.
"""

import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from assets.ingestion import raw_transactions
from assets.partitions import daily_partitions
from assets.validation import validate_transactions
from feature_repo.windows import LABEL, LABEL_DELAY_DAYS, MODEL_FEATURES
from modeling import registry
from modeling.metrics import fraud_metrics
from modeling.registry import ModelRegistry
from modeling.train import score
from monitoring.drift import DriftResult, score_drift
from monitoring.drift import feature_drift as measure_drift
from monitoring.evidently_report import SensorRule, evidently_drift_report
from monitoring.exporter import OUTCOME_METRICS, write_metrics
from monitoring.reference import ModelReference, load_reference
from orchestration.resources import EventSourceResource, LakeResource
from serving.metrics import REQUEST_SECONDS, ray_metrics_url, series_samples
from settings import MonitoringSettings, Settings

GROUP = "monitoring"
PREDICTIONS = "predictions"
METRICS_TABLE = "monitoring_metrics"
INSUFFICIENT = "insufficient data"

MetadataDict = dict[str, Any]


def _predictions(lake: LakeResource, day: str) -> pd.DataFrame:
    path = lake.partition_path(PREDICTIONS, day)
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def _served_version(predictions: pd.DataFrame) -> str:
    """The champion version that answered most of the day's requests."""
    champion = predictions[predictions["ROUTE"] == "champion"]
    versions = (champion if len(champion) else predictions)["MODEL_VERSION"]
    return str(Counter(versions.astype(str)).most_common(1)[0][0])


def _record(lake: LakeResource, day: str, rows: list[tuple[str, str, float]]) -> None:
    frame = pd.DataFrame(rows, columns=["metric", "subject", "value"]).assign(
        day=day, updated_at=pd.Timestamp.now(tz="UTC")
    )
    write_metrics(lake.table_path(METRICS_TABLE), frame[["day", "metric", "subject", "value", "updated_at"]])


def _insufficient(why: str, **metadata: Any) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={"status": f"{INSUFFICIENT}: {why}", "sufficient": False, **metadata}
    )


def _reference(mlflow: dg.ResourceParam[ModelRegistry], predictions: pd.DataFrame) -> ModelReference:
    mlflow.activate()
    return load_reference(mlflow.client(), mlflow.model_name, _served_version(predictions))


@dg.asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    kinds={"parquet"},
    deps=[raw_transactions, "scoring_service"],
)
def prediction_log(
    context: dg.AssetExecutionContext, source: EventSourceResource, lake: LakeResource
) -> dg.MaterializeResult:
    """Serving's answers of the day, as the stream consumer landed them from the predictions
    topic: the features each score used, the score, the model version and the route."""
    day = context.partition_key
    landing = source.stream()
    if landing is None:
        return _insufficient("file mode: no prediction stream (EventSourceResource.stream_path is empty)")
    frame = landing.read_day(PREDICTIONS, day)
    lake.write_partition(PREDICTIONS, day, frame)
    if frame.empty:
        return _insufficient("no prediction landed for this day", rows=0)
    versions = frame["MODEL_VERSION"].astype(str).value_counts()
    return dg.MaterializeResult(
        metadata={
            "rows": len(frame),
            "sufficient": True,
            "versions": {str(k): int(v) for k, v in versions.items()},
            "routes": {str(k): int(v) for k, v in frame["ROUTE"].value_counts().items()},
            "cached_share": float(frame["CACHED"].mean()),
        }
    )


def drift_columns(monitoring: dg.ResourceParam[MonitoringSettings]) -> list[str]:
    return [f for f in MODEL_FEATURES if f not in monitoring.ignored_features]


def drift_verdict(result: DriftResult, monitoring: MonitoringSettings) -> tuple[list[str], bool]:
    """The drift sensor's verdict on a day: the features that drifted (PSI or KS over its
    threshold, largest PSI first, ignored features left out) and whether enough of them drifted
    together for a drifted day, the `drift_detected` that `drift_sensor` retrains on."""
    columns = drift_columns(monitoring)
    drifted = [f for f in result.drifted(monitoring.psi_threshold, monitoring.ks_threshold) if f in columns]
    return drifted, len(drifted) >= monitoring.min_drifted_features


PER_FEATURE = "per_feature"
"""Prefix of the per-feature metadata (`per_feature/<feature>/psi`, `.../ks`): Dagster's Plots view
sorts labels as plain strings, so they come after the headline numbers, each feature's two side by side."""


@dg.asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    deps=[prediction_log, "registered_model"],
    kinds={"evidently"},
)
def feature_drift(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    mlflow: dg.ResourceParam[ModelRegistry],
    monitoring: dg.ResourceParam[MonitoringSettings],
) -> dg.MaterializeResult:
    """PSI and KS of each served feature against the champion's training rows; the day is
    drifted when enough features pass the thresholds (`drift_verdict`: what `drift_sensor`
    retrains on). Evidently's report beside it, as HTML, judged by the same rule.

    Metadata: the verdict (`drift_detected`, `drifted_features`: the features that triggered,
    `drift_rule`), the headline numbers (`max_ks`, `max_psi`, `n_drifted`, `n_rows`: first in
    the Plots view), then `per_feature/<feature>/ks` and `.../psi`; with Evidently's report, its
    path, its drifted features and whether it agrees with the verdict."""
    day = context.partition_key
    predictions = _predictions(lake, day)
    if predictions.empty:
        return _insufficient("no prediction logged for this day", drift_detected=False)
    reference = _reference(mlflow, predictions)
    columns = drift_columns(monitoring)
    result = measure_drift(reference.features, predictions, min_rows=monitoring.min_rows)
    if result.insufficient:
        return _insufficient(result.reason, drift_detected=False, n_rows=len(predictions))
    drifted, detected = drift_verdict(result, monitoring)
    rule = SensorRule.from_settings(monitoring)
    metadata: MetadataDict = {
        "sufficient": True,
        "drift_detected": detected,
        "drifted_features": dg.MetadataValue.json(drifted),
        "drift_rule": f"{rule.describe()}; drift_sensor retrains on a drifted day",
        "max_psi": float(max(result.features[c].psi for c in columns)),
        "max_ks": float(max(result.features[c].ks for c in columns)),
        "n_drifted": len(drifted),
        "n_rows": len(predictions),
        "reference_version": reference.version,
        **{
            f"{PER_FEATURE}/{name}/{statistic}": float(getattr(d, statistic))
            for name, d in result.features.items()
            for statistic in ("psi", "ks")
        },
    }
    if monitoring.evidently_reports:
        html = lake.artifact_dir(f"evidently/{day}") / "feature_drift.html"
        summary = evidently_drift_report(
            reference.rows, predictions, columns, html, min_rows=monitoring.min_rows, rule=rule
        )
        found = summary.get("drifted_features", [])
        agrees = set(found) == set(drifted) and summary.get("dataset_drift") == detected
        metadata["evidently_report"] = dg.MetadataValue.path(str(html))
        metadata["evidently_drifted_features"] = dg.MetadataValue.json(found)
        metadata["evidently_agrees"] = agrees
        if not agrees:
            context.log.warning(
                f"{day}: Evidently's report ({found}, drifted day {summary.get('dataset_drift')}) "
                f"disagrees with the sensor's verdict ({drifted}, drifted day {detected})"
            )
    _record(
        lake,
        day,
        [
            *((m, name, float(getattr(d, m))) for name, d in result.features.items() for m in ("psi", "ks")),
            ("drifted_features", "", float(len(drifted))),
        ],
    )
    context.log.info(f"{day}: {len(drifted)} drifted feature(s) {drifted}; episode={detected}")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(partitions_def=daily_partitions, group_name=GROUP, deps=[prediction_log, "registered_model"])
def prediction_drift(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    mlflow: dg.ResourceParam[ModelRegistry],
    monitoring: dg.ResourceParam[MonitoringSettings],
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    """The day's score distribution against the champion's scores on its test rows (PSI, KS),
    and the share of transactions flagged at serving's threshold."""
    day = context.partition_key
    predictions = _predictions(lake, day)
    if len(predictions) < monitoring.min_rows:
        return _insufficient(f"{len(predictions)} predictions, fewer than {monitoring.min_rows}")
    reference = _reference(mlflow, predictions)
    scores = predictions["PROBABILITY"].to_numpy(dtype=np.float64)
    drift = score_drift(reference.scores, scores, settings.serving.runtime.threshold, monitoring.min_rows)
    if drift.insufficient:
        return _insufficient(drift.reason)
    flagged, reference_flagged = drift.flagged_share_current, drift.flagged_share_reference
    _record(
        lake,
        day,
        [
            ("prediction_psi", "", float(drift.psi)),
            ("prediction_ks", "", float(drift.ks)),
            ("flagged_share", "", flagged),
            ("score_mean", "", float(scores.mean())),
        ],
    )
    return dg.MaterializeResult(
        metadata={
            "sufficient": True,
            "psi": float(drift.psi),
            "ks": float(drift.ks),
            "flagged_share": flagged,
            "reference_flagged_share": reference_flagged,
            "score_mean": float(scores.mean()),
            "score_p99": float(np.quantile(scores, 0.99)),
            "rows": len(predictions),
            "reference_version": reference.version,
        }
    )


@dg.asset(
    partitions_def=daily_partitions, group_name=GROUP, deps=[raw_transactions], kinds={"great_expectations"}
)
def live_data_quality(
    context: dg.AssetExecutionContext, source: EventSourceResource, lake: LakeResource
) -> dg.MaterializeResult:
    """The raw-transactions Great Expectations suite on each micro-batch the stream consumer
    landed for the day (one file per consumer batch); in file mode, on the day as one batch."""
    day = context.partition_key
    landing = source.stream()
    if landing is not None:
        batches = [pd.read_parquet(f) for f in sorted(landing.day_dir("transactions", day).glob("*.parquet"))]
    else:
        path = lake.partition_path("transactions", day)
        batches = [pd.read_parquet(path)] if path.exists() else []
    batches = [b for b in batches if len(b)]
    if not batches:
        return _insufficient("no transaction landed for this day", batches=0)
    failed: Counter[str] = Counter()
    failed_batches = 0
    for batch in batches:
        report = validate_transactions(batch, lake, [day])
        failed_batches += not report.success
        failed.update(f"{f.column or 'table'} / {f.rule}" for f in report.failures)
    success = 1.0 - failed_batches / len(batches)
    _record(
        lake, day, [("dq_success", "", success), ("dq_failed_expectations", "", float(sum(failed.values())))]
    )
    return dg.MaterializeResult(
        metadata={
            "sufficient": True,
            "batches": len(batches),
            "failed_batches": failed_batches,
            "batch_success_share": success,
            "rows": int(sum(len(b) for b in batches)),
            "failed_expectations": dg.MetadataValue.json(dict(failed)),
        }
    )


def _labelled(lake: LakeResource, predictions: pd.DataFrame, day: str) -> tuple[pd.DataFrame, bool]:
    """The day's predictions with the fraud labels known so far, and whether they are final."""
    start = pd.Timestamp(day, tz="UTC")
    report_days = pd.date_range(start, start + pd.Timedelta(days=LABEL_DELAY_DAYS + 1), freq="D")
    paths = [lake.partition_path("fraud_reports", d.strftime("%Y-%m-%d")) for d in report_days]
    reports = [pd.read_parquet(p, columns=["TRANSACTION_ID", "REPORT_DATETIME"]) for p in paths if p.exists()]
    reported = pd.concat(reports, ignore_index=True) if reports else pd.DataFrame(columns=["TRANSACTION_ID"])
    labelled = predictions.assign(
        **{LABEL: predictions["TRANSACTION_ID"].isin(reported["TRANSACTION_ID"]).astype("int8")}
    )
    landed = lake.days("fraud_reports")
    horizon = (start + pd.Timedelta(days=LABEL_DELAY_DAYS + 1)).strftime("%Y-%m-%d")
    return labelled, bool(landed) and landed[-1] >= horizon


def _metrics_of(labelled: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    return fraud_metrics(labelled[LABEL], scores, labelled[["TX_DATETIME", "CUSTOMER_ID"]])


@dg.asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    deps=[
        prediction_log,
        dg.AssetDep(
            "fraud_reports",
            partition_mapping=dg.TimeWindowPartitionMapping(start_offset=0, end_offset=LABEL_DELAY_DAYS + 1),
        ),
    ],
)
def outcome_metrics(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    mlflow: dg.ResourceParam[ModelRegistry],
    monitoring: dg.ResourceParam[MonitoringSettings],
) -> dg.MaterializeResult:
    """ROC AUC, average precision and card precision@100 of the day, once fraud reports name
    its frauds: for the scores served, and for the current champion and challenger re-scored
    on the same logged features. Provisional until the day's labels are complete."""
    day = context.partition_key
    predictions = _predictions(lake, day)
    if len(predictions) < monitoring.min_rows:
        return _insufficient(f"{len(predictions)} predictions, fewer than {monitoring.min_rows}")
    labelled, complete = _labelled(lake, predictions, day)
    frauds = int(labelled[LABEL].sum())
    if frauds == 0 or frauds == len(labelled):
        return _insufficient(f"{frauds} known fraud(s): metrics need both classes", labels_complete=complete)
    mlflow.activate()
    client = mlflow.client()
    roles: dict[str, tuple[str, np.ndarray]] = {
        "served": (_served_version(predictions), predictions["PROBABILITY"].to_numpy(np.float64))
    }
    for role, alias in (("champion", registry.CHAMPION), ("challenger", registry.CHALLENGER)):
        version = registry.alias_version(client, mlflow.model_name, alias)
        if version is not None:
            roles[role] = (version, score(registry.load_model(mlflow.model_name, version), labelled))
    metadata: MetadataDict = {
        "sufficient": True,
        "labels_complete": complete,
        "frauds_known": frauds,
        "rows": len(labelled),
    }
    rows: list[tuple[str, str, float]] = [("labels_complete", "", float(complete))]
    for role, (version, scores) in roles.items():
        metrics = _metrics_of(labelled, scores)
        metadata[f"{role}_version"] = version
        for name, value in metrics.items():
            metadata[f"{role}_{name}"] = float(value)
            rows.append((name, role, float(value)))
    champion = roles.get("champion")
    if champion is not None:
        reference = load_reference(client, mlflow.model_name, champion[0])
        for name in OUTCOME_METRICS:
            if name in reference.test_metrics:
                metadata[f"champion_test_{name}"] = reference.test_metrics[name]
    _record(lake, day, rows)
    return dg.MaterializeResult(metadata=metadata)


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """A quantile from cumulative histogram buckets (upper bound, count), interpolated as Prometheus does."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def serving_summary(exposition: str) -> dict[str, float]:
    """Latency quantiles of /v1/score, error rates and replicas from a Prometheus exposition of
    serving's metrics: Ray's metrics agent (every replica of a node, summed over the replica tag,
    bucket by bucket) or a single process's registry (the same names, no replica tag)."""
    histogram = REQUEST_SECONDS.exported
    buckets: dict[float, float] = {}
    for labels, value in series_samples(exposition, f"{histogram}_bucket"):
        if labels.get("endpoint") == "/v1/score":
            upper = float(labels["le"])
            buckets[upper] = buckets.get(upper, 0.0) + value
    requests: dict[str, float] = {}
    replicas: set[str] = set()
    for labels, value in series_samples(exposition, f"{histogram}_count"):
        requests[labels["status"]] = requests.get(labels["status"], 0.0) + value
        replicas.add(labels.get("replica", ""))
    total = sum(requests.values())
    ordered = sorted(buckets.items())
    summary = {
        f"p{int(q * 100)}_ms": _quantile(ordered, q) * 1000 if ordered else float("nan")
        for q in (0.5, 0.95, 0.99)
    }
    errors = sum(v for status, v in requests.items() if status.startswith("5"))
    summary.update(
        {
            "requests": total,
            "error_rate": errors / total if total else float("nan"),
            "rejected_503_rate": requests.get("503", 0.0) / total if total else float("nan"),
            "replicas": float(len(replicas)),
        }
    )
    return summary


@dg.asset(group_name=GROUP, kinds={"prometheus"})
def serving_health(settings: dg.ResourceParam[Settings]) -> dg.MaterializeResult:
    """Latency p50/p95/p99 of scoring, its error and 503 rates, summed over every replica of
    this node, read from Ray's metrics agent (since the replicas started). Not running is
    reported, not failed."""
    url = ray_metrics_url(settings.serving.ray_metrics_port)
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            exposition = response.read().decode()
    except (urllib.error.URLError, OSError) as err:
        return _insufficient(f"{url} did not answer ({err})")
    summary = serving_summary(exposition)
    metadata: dict[str, Any] = {"sufficient": True, "source": dg.MetadataValue.url(url)}
    metadata.update({k: float(v) for k, v in summary.items()})
    return dg.MaterializeResult(metadata=metadata)
