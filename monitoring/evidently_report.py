"""An Evidently data-drift report of live features: the page a person reads when a drift alert fires.

One verdict. `monitoring.drift` computes the numbers the drift sensor acts on
(`assets.monitoring.feature_drift` decides a drifted day, and that decision
drives retraining); this report is for looking at them: per-column
distributions, and a verdict per column. Left to itself, Evidently picks its
own test per column (Wasserstein distance, Jensen-Shannon, chi-squared...,
from the column's size and distinct values) with its own thresholds, and its
verdict then disagrees with the sensor's. So by default the report runs the
sensor's rule (`SensorRule`), registered as an Evidently stat test
(`SENSOR_STATTEST`): each column's PSI over the reference's 10 quantile bins
and its exact KS statistic, computed by `monitoring.drift`'s own functions, a
column drifting when PSI > `psi_threshold` or KS > `ks_threshold`, the
thresholds taken from the same `MonitoringSettings` the sensor reads. The
report's drifted columns are then the sensor's drifted features, by the same
code, and its dataset verdict is the sensor's drifted day (at least
`min_drifted_features` of them: Evidently's `drift_share`).

Evidently's stat test returns one score and one verdict per column, and its
threshold is one number, so the two statistics are folded into one score:
max(PSI / psi_threshold, KS / ks_threshold), "how many times its threshold the
worse statistic is", shown against a threshold of 1. The verdict itself is
`DriftResult.drifted` with the two thresholds, not a comparison of the score,
so no rounding of the quotient can change it. `rule=None` gives Evidently's
own choice of test per column instead (`bench.monitoring` compares against it).

Evidently re-reads and re-bins the raw reference on every run and is much
slower at a million rows (see `bench.monitoring`), so large frames can be
sampled here; a sampled report judges the sample, which can differ from the
sensor's verdict on every row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.legacy.calculations.stattests import StatTest, register_stattest
from evidently.legacy.core import ColumnType
from evidently.presets import DataDriftPreset

from monitoring.drift import DEFAULT_BINS, DEFAULT_MIN_ROWS, ReferenceProfile, feature_drift
from settings import MonitoringSettings

_VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
_DRIFTED_COLUMNS_COUNT = "evidently:metric_v2:DriftedColumnsCount"

SENSOR_STATTEST = "fraudpipe_psi_ks"
"""The stem of the registered stat tests' names; each rule's name adds its thresholds and bins."""

SCORE_THRESHOLD = 1.0
"""The sensor test's threshold: its score is each statistic over its own threshold."""

_COLUMN = "x"


@dataclass(frozen=True)
class SensorRule:
    """The drift sensor's verdict, as `assets.monitoring.feature_drift` applies it.

    Attributes:
        psi_threshold: a feature drifts above this PSI ...
        ks_threshold: ... or above this KS statistic.
        min_drifted_features: features drifting together for a drifted day.
        bins: the reference quantile bins of PSI (the reference profile's).
    """

    psi_threshold: float
    ks_threshold: float
    min_drifted_features: int
    bins: int = DEFAULT_BINS

    def __post_init__(self) -> None:
        if not (self.psi_threshold > 0 and self.ks_threshold > 0):
            raise ValueError(
                f"thresholds must be positive, got PSI {self.psi_threshold}, KS {self.ks_threshold}"
            )
        if self.min_drifted_features < 1 or self.bins < 2:
            raise ValueError(
                f"min_drifted_features >= 1 and bins >= 2, got {self.min_drifted_features}, {self.bins}"
            )

    @classmethod
    def from_settings(cls, monitoring: MonitoringSettings) -> SensorRule:
        """The rule of these settings: the sensor's, when they are the ones it reads."""
        return cls(monitoring.psi_threshold, monitoring.ks_threshold, monitoring.min_drifted_features)

    @property
    def stattest_name(self) -> str:
        """The Evidently stat test of this rule (registered on first use)."""
        return f"{SENSOR_STATTEST}(psi>{self.psi_threshold!r},ks>{self.ks_threshold!r},bins={self.bins})"

    def describe(self) -> str:
        return (
            f"the drift sensor's rule: a feature drifts when PSI ({self.bins} reference quantile bins) "
            f"> {self.psi_threshold:g} or KS > {self.ks_threshold:g}; "
            f"a day drifts with at least {self.min_drifted_features} drifted features"
        )

    def column_drift(self, reference: pd.Series, current: pd.Series) -> tuple[float, bool]:
        """One column's score, max(PSI / psi_threshold, KS / ks_threshold), and the sensor's verdict.

        Both statistics and the verdict come from `monitoring.drift`: a profile of the
        reference, `feature_drift` of the current values against it, `DriftResult.drifted`.
        """
        profile = ReferenceProfile.from_frame(pd.DataFrame({_COLUMN: reference}), [_COLUMN], self.bins)
        result = feature_drift(profile, pd.DataFrame({_COLUMN: current}), min_rows=1)
        drift = result.features[_COLUMN]
        score = max(drift.psi / self.psi_threshold, drift.ks / self.ks_threshold)
        return float(score), bool(result.drifted(self.psi_threshold, self.ks_threshold))


DEFAULT_RULE = SensorRule.from_settings(MonitoringSettings())
"""The rule at the settings' defaults; the monitoring assets pass the settings they read."""

_register_lock = threading.Lock()
_registered: set[str] = set()


def _stattest(rule: SensorRule) -> str:
    """Register `rule`'s column test as an Evidently stat test once per process; its name.

    The name holds all the test depends on (thresholds, bins), so one name is one test
    and registering it again, which would reset it under a running report, is never needed.
    """
    name = rule.stattest_name
    with _register_lock:
        if name not in _registered:

            def sensor_test(
                reference: pd.Series, current: pd.Series, feature_type: ColumnType, threshold: float
            ) -> tuple[float, bool]:
                if threshold != SCORE_THRESHOLD:
                    raise ValueError(
                        f"{rule.stattest_name}: the threshold is {SCORE_THRESHOLD} (the score is each "
                        f"statistic over its own threshold), got {threshold}"
                    )
                return rule.column_drift(reference, current)

            register_stattest(
                StatTest(
                    name=rule.stattest_name,
                    display_name=(
                        f"sensor: PSI > {rule.psi_threshold:g} or KS > {rule.ks_threshold:g} "
                        f"(score: max(PSI/{rule.psi_threshold:g}, KS/{rule.ks_threshold:g}))"
                    ),
                    allowed_feature_types=[ColumnType.Numerical],
                    default_threshold=SCORE_THRESHOLD,
                ),
                sensor_test,
            )
            _registered.add(name)
    return name


def _prepare(
    frame: pd.DataFrame, columns: Sequence[str], max_rows: int | None, rng: np.random.Generator
) -> pd.DataFrame:
    """The columns, sampled down to `max_rows`, as float64 with infinities as NaN.

    Evidently drops NaN but would bin an infinity; `monitoring.drift` drops both.
    """
    frame = frame[list(columns)]
    if max_rows is not None and len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=rng)
    values = frame.astype(np.float64)
    return values.where(np.isfinite(values.to_numpy()))


def _summary(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Evidently's numbers out of its snapshot: per-column score, method and verdict, the count,
    the drifted columns and the dataset verdict.

    The verdict of a column is its ValueDrift test (FAIL means drift), so
    whether a method's score is a p-value (drift below the threshold) or a
    distance (drift above) stays Evidently's business; the dataset's is the
    DriftedColumnsCount test (FAIL: a share of drifted columns at least `drift_share`).
    """
    columns: dict[str, dict[str, Any]] = {}
    count: dict[str, Any] = {}
    dataset_drift = False
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if config["type"] == _VALUE_DRIFT:
            columns[config["column"]] = {
                "drift_score": float(metric["value"]),
                "method": config["method"],
                "threshold": float(config["threshold"]),
            }
        elif config["type"] == _DRIFTED_COLUMNS_COUNT:
            count = metric["value"]
    for test in snapshot["tests"]:
        params = test["metric_config"]["params"]
        if params["type"] == _VALUE_DRIFT:
            columns[params["column"]]["drifted"] = test["status"] == "FAIL"
        elif params["type"] == _DRIFTED_COLUMNS_COUNT:
            dataset_drift = dataset_drift or test["status"] == "FAIL"
    drifted = sorted(
        (name for name, c in columns.items() if c["drifted"]), key=lambda n: -columns[n]["drift_score"]
    )
    return {
        "drifted_columns": int(count["count"]),
        "share_drifted": float(count["share"]),
        "drifted_features": drifted,
        "dataset_drift": dataset_drift,
        "columns": columns,
    }


def evidently_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    html_path: Path,
    max_rows: int | None = None,
    seed: int = 0,
    min_rows: int = DEFAULT_MIN_ROWS,
    rule: SensorRule | None = DEFAULT_RULE,
) -> dict[str, Any]:
    """Run Evidently's DataDriftPreset on `columns` with the sensor's rule, save its HTML page,
    return its numbers.

    All columns are declared numerical, as the model reads them. Each column is
    judged by `rule` (the sensor's: see the module docstring), the dataset as
    drifted when at least `rule.min_drifted_features` columns drift; with
    `rule=None` Evidently picks each column's test from its size and number of
    distinct values, and calls the dataset drifted from half the columns.

    Args:
        reference: the training reference.
        current: the live batch.
        columns: the features to compare.
        html_path: where the HTML report is written (parent folders created).
        max_rows: a frame with more rows is sampled down to this many (seeded).
        seed: the sampling seed.
        min_rows: a column with fewer finite values in either frame (after
            sampling) is left out of the report, as `monitoring.drift` leaves
            it unmeasured; Evidently fails on an all-NaN column.
        rule: the verdict's rule, `SensorRule.from_settings` of the settings
            the sensor reads; None for Evidently's own test per column.

    Returns:
        Always `insufficient` (some column was left out), `reason` ("" when
        none was), `rows` (per frame) and `test` (the rule's description, or
        Evidently's own choice). When Evidently ran (some column had enough
        data) also: `skipped_columns`, `drifted_columns` and `share_drifted`
        (of the columns compared), `drifted_features` (the drifted columns'
        names, largest score first: what triggered), `dataset_drift` (the
        report's verdict on the batch), `columns` (per column: `drift_score`,
        `method`, `threshold`, `drifted`), `sampled`, `rows_used` (per frame),
        `html_path` and `seconds` (Evidently's `run` and `save_html`: the
        report's cost is worth watching at scale).

    Raises:
        ValueError: `columns` is empty, or a frame lacks one of them.
    """
    if len(columns) == 0:
        raise ValueError("columns: at least one column is required")
    frames = {"reference": reference, "current": current}
    for which, frame in frames.items():
        missing = [name for name in columns if name not in frame.columns]
        if missing:
            raise ValueError(f"{which} frame has no column {', '.join(map(repr, missing))}")
    rows = {which: len(frame) for which, frame in frames.items()}
    test = rule.describe() if rule is not None else "Evidently's own test per column"
    rng = np.random.default_rng(seed)
    used = {which: _prepare(frame, columns, max_rows, rng) for which, frame in frames.items()}
    finite = {which: frame.notna().sum() for which, frame in used.items()}
    short = [name for name in columns if min(finite["reference"][name], finite["current"][name]) < min_rows]
    reason = (
        f"insufficient data: fewer than {min_rows} finite values of "
        + ", ".join(
            f"{name} ({finite['reference'][name]} reference, {finite['current'][name]} current)"
            for name in short
        )
        if short
        else ""
    )
    measured = [name for name in columns if name not in short]
    if not measured:
        return {"insufficient": True, "reason": reason, "rows": rows, "test": test}
    definition = DataDefinition(numerical_columns=measured)
    preset = (
        DataDriftPreset(columns=measured)
        if rule is None
        else DataDriftPreset(
            columns=measured,
            method=_stattest(rule),
            threshold=SCORE_THRESHOLD,
            # Evidently's dataset verdict is share >= drift_share: at least min_drifted_features columns.
            drift_share=rule.min_drifted_features / len(measured),
        )
    )
    report = Report([preset], include_tests=True)
    start = time.perf_counter()
    snapshot = report.run(
        Dataset.from_pandas(used["current"][measured], data_definition=definition),
        Dataset.from_pandas(used["reference"][measured], data_definition=definition),
    )
    ran = time.perf_counter()
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    seconds = {"run": ran - start, "save_html": time.perf_counter() - ran}
    rows_used = {which: len(frame) for which, frame in used.items()}
    return {
        "insufficient": bool(short),
        "reason": reason,
        "rows": rows,
        "test": test,
        "skipped_columns": short,
        **_summary(snapshot.dict()),
        "sampled": rows_used != rows,
        "rows_used": rows_used,
        "html_path": str(html_path),
        "seconds": seconds,
    }
