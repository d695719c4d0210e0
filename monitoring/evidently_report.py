"""An Evidently data-drift report of live features: the page a person reads when a drift alert fires.

`monitoring.drift` computes the numbers the sensors act on; this report is
for looking at them: per-column distributions, Evidently's own choice of
test per column, and its verdict. Evidently re-reads and re-bins the raw
reference on every run and is much slower at a million rows (see
`bench.monitoring`), so large frames can be sampled here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

from monitoring.drift import DEFAULT_MIN_ROWS

_VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
_DRIFTED_COLUMNS_COUNT = "evidently:metric_v2:DriftedColumnsCount"


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
    """Evidently's numbers out of its snapshot: per-column score, method and verdict, and the count.

    The verdict of a column is its ValueDrift test (FAIL means drift), so
    whether a method's score is a p-value (drift below the threshold) or a
    distance (drift above) stays Evidently's business.
    """
    columns: dict[str, dict[str, Any]] = {}
    count: dict[str, Any] = {}
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
    return {
        "drifted_columns": int(count["count"]),
        "share_drifted": float(count["share"]),
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
) -> dict[str, Any]:
    """Run Evidently's DataDriftPreset on `columns`, save its HTML page, return its numbers.

    All columns are declared numerical, as the model reads them; Evidently
    then picks each column's test from its size and number of distinct values.

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

    Returns:
        Always `insufficient` (some column was left out), `reason` ("" when
        none was) and `rows` (per frame). When Evidently ran (some column had
        enough data) also: `skipped_columns`, `drifted_columns` and
        `share_drifted` (of the columns compared), `columns` (per column:
        `drift_score`, `method`, `threshold`, `drifted`), `sampled`,
        `rows_used` (per frame), `html_path` and `seconds` (Evidently's `run`
        and `save_html`: the report's cost is worth watching at scale).

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
        return {"insufficient": True, "reason": reason, "rows": rows}
    definition = DataDefinition(numerical_columns=measured)
    report = Report([DataDriftPreset(columns=measured)], include_tests=True)
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
        "skipped_columns": short,
        **_summary(snapshot.dict()),
        "sampled": rows_used != rows,
        "rows_used": rows_used,
        "html_path": str(html_path),
        "seconds": seconds,
    }
