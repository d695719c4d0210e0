"""Point-in-time correctness of the Feast training set, checked by brute force.

The brute force is deliberately naive: plain Python over each entity's event
list, reading only what was known at the row's timestamp (events at or before
it, fraud reports filed at or before it), with the window rules of docs/use_case.md.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from assets.training_set import build_training_set, settled_transactions
from feature_repo.definitions import feast_objects
from feature_repo.engine import feature_table
from feature_repo.store import FeastStore
from feature_repo.windows import FEATURE_GROUPS, LABEL_DELAY_DAYS, MODEL_FEATURES, WINDOWS_DAYS
from orchestration.resources import LakeResource
from tests.conftest import PipelineRun, local_settings

DAY = pd.Timedelta(days=1)


def brute_force_features(row: pd.Series, by_customer: dict, by_terminal: dict, reports: dict) -> dict:
    t = row["TX_DATETIME"]
    out = {
        "TX_AMOUNT": row["TX_AMOUNT"],
        "TX_DURING_WEEKEND": int(t.weekday() >= 5),
        "TX_DURING_NIGHT": int(t.hour <= 6),
    }
    times, amounts = by_customer[row["CUSTOMER_ID"]]
    for n in WINDOWS_DAYS:
        window = [a for ts, a in zip(times, amounts, strict=True) if t - n * DAY < ts <= t]
        out[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = len(window)
        out[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = sum(window) / len(window) if window else 0.0
    times, ids = by_terminal[row["TERMINAL_ID"]]
    end = t - LABEL_DELAY_DAYS * DAY
    for n in WINDOWS_DAYS:
        window = [i for ts, i in zip(times, ids, strict=True) if end - n * DAY < ts <= end]
        known_frauds = sum(1 for i in window if i in reports and reports[i] <= t)
        out[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = len(window)
        out[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = known_frauds / len(window) if window else 0.0
    return out


def _index(events: pd.DataFrame, key: str, value: str) -> dict:
    grouped: dict = defaultdict(lambda: ([], []))
    for k, ts, v in zip(events[key], events["TX_DATETIME"], events[value], strict=True):
        grouped[k][0].append(ts)
        grouped[k][1].append(v)
    return grouped


def test_training_set_matches_brute_force(pipeline_run: PipelineRun) -> None:
    lake: LakeResource = pipeline_run.resources["lake"]
    training = lake.read_table("training_set")
    events = pipeline_run.data.events()
    reports = dict(
        zip(
            pipeline_run.data.fraud_reports["TRANSACTION_ID"],
            pipeline_run.data.fraud_reports["REPORT_DATETIME"],
            strict=True,
        )
    )
    by_customer = _index(events, "CUSTOMER_ID", "TX_AMOUNT")
    by_terminal = _index(events, "TERMINAL_ID", "TRANSACTION_ID")
    sample = training.sample(1200, random_state=3).merge(
        events[["TRANSACTION_ID", "TX_AMOUNT"]], on="TRANSACTION_ID", suffixes=("", "_raw")
    )
    assert len(sample) == 1200
    mismatches = []
    for _, row in sample.iterrows():
        expected = brute_force_features(row, by_customer, by_terminal, reports)
        for name in MODEL_FEATURES:
            got, want = row[name], expected[name]
            if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12) or ("NB_TX" in name and got != want):
                mismatches.append((row["TRANSACTION_ID"], name, got, want))
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:5]}"
    # The sample must exercise the windows, not only empty ones.
    assert (sample["TERMINAL_ID_RISK_30DAY_WINDOW"] > 0).sum() > 50
    assert (sample["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] > 1).sum() > 50


def _training_set_from(events: pd.DataFrame, reports: pd.DataFrame, data_dir: Path) -> pd.DataFrame:
    """The same feature path as the assets (engine tables, Feast registry, ASOF join) on given data."""
    lake = LakeResource(root=str(data_dir / "lake"))
    for group in FEATURE_GROUPS:
        lake.write_table(group.name, feature_table(group, events, reports if group.uses_labels else None))
    feast = FeastStore.from_settings(local_settings(data_dir, feast_project="pit"))
    objects, _ = feast_objects({g.name: lake.table_path(g.name) for g in FEATURE_GROUPS})
    feast.store().apply(objects)
    return build_training_set(feast, settled_transactions(events, reports)).set_index("TRANSACTION_ID")


def test_appending_future_events_changes_no_earlier_row(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    data = pipeline_run.data
    events, reports = data.events(), data.fraud_reports
    cutoff = pd.Timestamp("2018-07-01", tz="UTC")
    before = _training_set_from(
        events[events["TX_DATETIME"] <= cutoff], reports[reports["REPORT_DATETIME"] <= cutoff], tmp_path / "a"
    )
    after = _training_set_from(events, reports, tmp_path / "b")
    assert len(before) > 10_000
    common = after.loc[before.index, list(MODEL_FEATURES)]
    pd.testing.assert_frame_equal(before[list(MODEL_FEATURES)], common, check_exact=False, rtol=1e-12)
    assert (after.index.difference(before.index).size) > 0


def test_a_label_later_than_the_window_delay_is_refused(small_data) -> None:
    events = small_data.events()
    first = small_data.fraud_reports.head(1)
    tx_time = events.set_index("TRANSACTION_ID").loc[first["TRANSACTION_ID"], "TX_DATETIME"].to_numpy()
    late = first.assign(REPORT_DATETIME=tx_time + pd.Timedelta(days=7.5))
    terminal_group = next(g for g in FEATURE_GROUPS if g.uses_labels)
    with pytest.raises(ValueError, match="more than 7 days after"):
        feature_table(terminal_group, events, late)
