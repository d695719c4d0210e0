"""The monitoring results as Prometheus gauges, read from one tidy parquet table on each scrape.

The Dagster monitoring assets and the exporter share nothing but that table:
the assets write it with `write_metrics`, `python -m monitoring export` serves
it with `MonitoringCollector`. So the exporter needs neither Dagster nor the
lake resource, and an asset can run while no Prometheus is there.

The table (`METRICS_SCHEMA`, one row per day, metric and subject):

* `day` (string, `YYYY-MM-DD`): the UTC day of event time the value describes.
* `metric` (string): one of `ALL_METRICS`.
* `subject` (string): the feature for `FEATURE_METRICS`, the model role
  (`MODEL_ROLES`) for `OUTCOME_METRICS`, `""` for every other metric.
* `value` (float64): NaN where the metric is undefined that day (ROC AUC of a
  day without fraud); infinities are refused.
* `updated_at` (timestamp, UTC): when the value was written.

Prometheus sees, for each metric, the values of the latest day that has it:
a day's drift is known the next morning, its outcome metrics only once its
fraud reports have arrived, so "latest" differs by metric and each metric's
day is exposed as `fraudpipe_monitor_latest_day_timestamp_seconds{metric}`.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client.core import GaugeMetricFamily, Metric

"""Next to the stream consumer's 9464, so one Prometheus config scrapes all three on one machine."""

FEATURE_METRICS = ("psi", "ks")
PREDICTION_METRICS = ("prediction_psi", "prediction_ks", "flagged_share", "score_mean")
OUTCOME_METRICS = ("roc_auc", "average_precision", "card_precision_at_100")
DATA_QUALITY_METRICS = ("labels_complete", "dq_success", "dq_failed_expectations")
DRIFTED_FEATURES = "drifted_features"
ALL_METRICS = (
    *FEATURE_METRICS,
    *PREDICTION_METRICS,
    *OUTCOME_METRICS,
    *DATA_QUALITY_METRICS,
    DRIFTED_FEATURES,
)
MODEL_ROLES = ("champion", "challenger", "served")

METRICS_SCHEMA = pa.schema(
    [
        ("day", pa.string()),
        ("metric", pa.string()),
        ("subject", pa.string()),
        ("value", pa.float64()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
"""The table's contract; the module docstring says what each column means."""
KEY = ["day", "metric", "subject"]
"""A row per key: writing a key again replaces its value."""

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def write_metrics(path: Path, rows: pd.DataFrame) -> None:
    """Upsert `rows` into the table at `path` by (day, metric, subject).

    Re-materialising a day replaces that day's values for the metrics it
    writes and keeps everything else. The file is replaced atomically (a scrape
    reads the old or the new table, never half of one), and writers are
    serialised by a lock file beside it, because Dagster may run several
    monitoring assets at once and each would otherwise drop the others' rows.

    Args:
        path: the table, e.g. `<lake root>/monitoring_metrics.parquet`; created
            with its folder if missing.
        rows: columns `day`, `metric`, `subject`, `value` and optionally
            `updated_at` (tz-aware; now by default), as `METRICS_SCHEMA` describes.

    Raises:
        ValueError: a column is missing or unknown, or a field breaks the
            contract (the message names the field and shows the values).
    """
    new = _validated(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path):
        if path.exists():
            old = pd.read_parquet(path)
            replaced = old.set_index(KEY).index.isin(new.set_index(KEY).index)
            new = pd.concat([old[~replaced], new], ignore_index=True)
        table = pa.Table.from_pandas(
            new.sort_values(KEY, ignore_index=True), schema=METRICS_SCHEMA, preserve_index=False
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` (released when the file closes, also if the process dies)."""
    with path.with_name(f"{path.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _validated(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` as the contract's columns and types, or a ValueError naming the field that breaks it."""
    required = [name for name in METRICS_SCHEMA.names if name != "updated_at"]
    missing = [name for name in required if name not in rows.columns]
    unknown = [str(name) for name in rows.columns if name not in METRICS_SCHEMA.names]
    if missing or unknown:
        raise ValueError(
            f"rows: missing columns {missing}, unknown columns {unknown}; expected {METRICS_SCHEMA.names}"
        )
    frame = rows.reset_index(drop=True)
    _check("day", frame["day"], frame["day"].map(_is_day), "a string YYYY-MM-DD")
    _check("metric", frame["metric"], frame["metric"].isin(ALL_METRICS), f"one of {ALL_METRICS}")
    subject = frame["subject"]
    is_text = subject.map(lambda value: isinstance(value, str))
    _check("subject", subject, is_text, "a string")
    metric = frame["metric"]
    by_feature, by_model = metric.isin(FEATURE_METRICS), metric.isin(OUTCOME_METRICS)
    _check("subject", subject[by_feature], subject[by_feature] != "", f"a feature name for {FEATURE_METRICS}")
    _check("subject", subject[by_model], subject[by_model].isin(MODEL_ROLES), f"one of {MODEL_ROLES}")
    other = ~(by_feature | by_model)
    _check("subject", subject[other], subject[other] == "", "'' for metrics without a subject")
    value = frame["value"]
    if pd.api.types.is_bool_dtype(value) or not pd.api.types.is_numeric_dtype(value):
        raise ValueError(f"value: expected numbers, got dtype {value.dtype}")
    value = value.astype("float64")
    _check("value", value, ~value.map(math.isinf), "finite or NaN")
    duplicated = frame.duplicated(KEY, keep=False)
    if duplicated.any():
        raise ValueError(
            f"day/metric/subject: repeated in rows: {frame.loc[duplicated, KEY].head(3).values.tolist()}"
        )
    if "updated_at" in frame.columns:
        updated_at = frame["updated_at"]
        if not isinstance(updated_at.dtype, pd.DatetimeTZDtype):
            raise ValueError(f"updated_at: expected tz-aware timestamps, got dtype {updated_at.dtype}")
        updated_at = updated_at.dt.tz_convert("UTC")
    else:
        updated_at = pd.Series(pd.Timestamp.now(tz="UTC"), index=frame.index)
    return pd.DataFrame(
        {"day": frame["day"], "metric": metric, "subject": subject, "value": value, "updated_at": updated_at}
    )


def _is_day(value: object) -> bool:
    if not isinstance(value, str) or not _DAY.fullmatch(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _check(field: str, values: pd.Series, ok: pd.Series, expected: str) -> None:
    if not ok.all():
        raise ValueError(
            f"{field}: expected {expected}, got {values[~ok].drop_duplicates().head(3).tolist()}"
        )


def _latest_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Each metric's rows of the latest day that has that metric."""
    latest_day = table.groupby("metric")["day"].transform("max")  # YYYY-MM-DD sorts as it dates
    return table[table["day"] == latest_day].reset_index(drop=True)


@dataclass(frozen=True)
class _Family:
    name: str
    documentation: str
    metrics: tuple[str, ...]
    metric_label: bool
    subject_label: str | None

    @property
    def labels(self) -> list[str]:
        return (["metric"] if self.metric_label else []) + (
            [self.subject_label] if self.subject_label else []
        )


_FAMILIES = (
    _Family(
        "fraudpipe_monitor_feature_psi",
        "Population stability index of a feature's distribution against the reference (> 0.2: drifted).",
        ("psi",),
        metric_label=False,
        subject_label="feature",
    ),
    _Family(
        "fraudpipe_monitor_feature_ks",
        "Kolmogorov-Smirnov statistic of a feature's distribution against the reference.",
        ("ks",),
        metric_label=False,
        subject_label="feature",
    ),
    _Family(
        "fraudpipe_monitor_prediction",
        "Served scores: drift against the reference (prediction_psi, prediction_ks), share flagged "
        "at the threshold, mean score.",
        PREDICTION_METRICS,
        metric_label=True,
        subject_label=None,
    ),
    _Family(
        "fraudpipe_monitor_outcome",
        "ROC AUC, average precision and card precision@100 against the fraud reports, by model role.",
        OUTCOME_METRICS,
        metric_label=True,
        subject_label="model",
    ),
    _Family(
        "fraudpipe_monitor_data_quality",
        "Labels complete (0/1), data-quality suite passed (0/1), failed expectations.",
        DATA_QUALITY_METRICS,
        metric_label=True,
        subject_label=None,
    ),
    _Family(
        "fraudpipe_monitor_drifted_features",
        "Features found drifted on the latest monitored day.",
        (DRIFTED_FEATURES,),
        metric_label=False,
        subject_label=None,
    ),
)


def _families(latest: pd.DataFrame) -> Iterator[Metric]:
    """The gauges of `latest` (see `_latest_rows`); a family without rows is left out."""
    for spec in _FAMILIES:
        rows = latest[latest["metric"].isin(spec.metrics)]
        if rows.empty:
            continue
        family = GaugeMetricFamily(spec.name, spec.documentation, labels=spec.labels)
        for metric, subject, value in rows[["metric", "subject", "value"]].itertuples(index=False):
            labels = ([metric] if spec.metric_label else []) + ([subject] if spec.subject_label else [])
            family.add_metric(labels, value)
        yield family
    days = latest[["metric", "day"]].drop_duplicates()
    if not days.empty:
        family = GaugeMetricFamily(
            "fraudpipe_monitor_latest_day_timestamp_seconds",
            "Start (00:00 UTC) of the latest day each metric was computed for: alert when it stops moving.",
            labels=["metric"],
        )
        for metric, day in days.itertuples(index=False):
            family.add_metric([metric], pd.Timestamp(day, tz="UTC").timestamp())
        yield family


class MonitoringCollector:
    """A prometheus_client collector over the table at `path`: a missing table exposes nothing.

    The table is read again only when its file changes (inode, mtime, size),
    so frequent scrapes cost a `stat`; `write_metrics` replaces the file, which
    changes all three. Scrapes may come from several server threads at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._version: tuple[int, int, int] | None = None
        self._latest = pd.DataFrame(columns=METRICS_SCHEMA.names)

    def collect(self) -> Iterator[Metric]:
        yield from _families(self._read())

    def _read(self) -> pd.DataFrame:
        with self._lock:
            try:
                stat = self.path.stat()
                version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
                if version != self._version:
                    self._latest = _latest_rows(pd.read_parquet(self.path))
                    self._version = version
            except FileNotFoundError:
                self._latest = pd.DataFrame(columns=METRICS_SCHEMA.names)
                self._version = None
            return self._latest
