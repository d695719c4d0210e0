"""Drift statistics: PSI binning and value, KS against scipy, missing data, Evidently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from monitoring.drift import (
    PSI_EPSILON,
    ReferenceProfile,
    feature_drift,
    score_drift,
)
from monitoring.evidently_report import DEFAULT_RULE, SCORE_THRESHOLD, SensorRule, evidently_drift_report


def _one_column(reference: np.ndarray, current: np.ndarray, bins: int = 10, min_rows: int = 1) -> tuple:
    profile = ReferenceProfile.from_frame(pd.DataFrame({"x": reference}), ["x"], bins)
    return profile, feature_drift(profile, pd.DataFrame({"x": current}), min_rows).features["x"]


def _samples(kind: str, rng: np.random.Generator, n1: int, n2: int) -> tuple[np.ndarray, np.ndarray]:
    if kind == "continuous":
        return rng.normal(size=n1), rng.normal(0.2, 1.1, n2)
    if kind == "ties":
        return np.round(rng.normal(size=n1), 1), np.round(rng.normal(0.1, 1.0, n2), 1)
    if kind == "counts":
        return rng.poisson(3.0, n1).astype(float), rng.poisson(3.3, n2).astype(float)
    if kind == "flags":
        return (rng.random(n1) < 0.3).astype(float), (rng.random(n2) < 0.35).astype(float)
    if kind == "mostly zero":
        return (
            np.where(rng.random(n1) < 0.9, 0.0, rng.random(n1)),
            np.where(rng.random(n2) < 0.8, 0.0, rng.random(n2)),
        )
    raise AssertionError(kind)


def test_psi_and_ks_of_the_reference_itself_are_zero() -> None:
    values = np.random.default_rng(0).lognormal(3.5, 1.0, 20_000).round(2)

    _, drift = _one_column(values, values)

    assert drift.psi == pytest.approx(0.0, abs=1e-12) and drift.ks == 0.0
    assert drift.ks_pvalue == 1.0 and drift.n_current == 20_000 and drift.n_dropped == 0


def test_psi_separates_a_resample_from_a_shifted_distribution() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=50_000)
    frame = pd.DataFrame({"same": rng.normal(size=50_000), "shifted": rng.normal(1.0, 1.0, 50_000)})
    profile = ReferenceProfile.from_frame(
        pd.DataFrame({"same": reference, "shifted": reference}), ["same", "shifted"]
    )

    result = feature_drift(profile, frame)

    same, shifted = result.features["same"], result.features["shifted"]
    assert same.psi < 0.01 and same.ks < 0.02
    assert shifted.psi > 0.2 and shifted.ks > 0.3
    assert result.drifted(psi_threshold=0.2, ks_threshold=0.1) == ["shifted"]
    assert result.max_psi == shifted.psi and not result.insufficient and result.reason == ""


def test_drifted_orders_by_psi_and_takes_either_threshold() -> None:
    rng = np.random.default_rng(2)
    reference = pd.DataFrame({name: rng.normal(size=20_000) for name in "abc"})
    current = pd.DataFrame(
        {"a": rng.normal(0.5, 1.0, 20_000), "b": rng.normal(1.5, 1.0, 20_000), "c": rng.normal(size=20_000)}
    )
    result = feature_drift(ReferenceProfile.from_frame(reference, ["a", "b", "c"]), current)

    assert result.features["b"].psi > result.features["a"].psi > 0.2 > result.features["c"].psi
    assert result.drifted(psi_threshold=0.2, ks_threshold=1.0) == ["b", "a"]
    # KS alone: a's KS (about 0.2) is over 0.1 even though its PSI is under 100.
    assert result.drifted(psi_threshold=100.0, ks_threshold=0.1) == ["b", "a"]
    assert result.drifted(psi_threshold=100.0, ks_threshold=1.0) == []


@pytest.mark.parametrize("kind", ["continuous", "ties", "counts", "flags", "mostly zero"])
@pytest.mark.parametrize(("n1", "n2"), [(2, 1), (7, 3), (500, 1_300), (20_000, 20_000)])
def test_ks_equals_scipy(kind: str, n1: int, n2: int) -> None:
    reference, current = _samples(kind, np.random.default_rng(n1 * 7 + n2), n1, n2)

    _, drift = _one_column(reference, current)

    asymptotic = ks_2samp(reference, current, method="asymp")
    assert drift.ks == asymptotic.statistic  # the same counts over the same sizes: bit for bit
    assert drift.ks == pytest.approx(ks_2samp(reference, current).statistic, abs=1e-12)
    assert drift.ks_pvalue == pytest.approx(asymptotic.pvalue, abs=1e-12)


def test_ks_pvalue_of_large_samples_is_the_limit_of_scipys() -> None:
    rng = np.random.default_rng(12)
    reference, current = rng.normal(size=100_000), rng.normal(0.012, 1.0, 100_000)

    _, drift = _one_column(reference, current)

    asymptotic = ks_2samp(reference, current, method="asymp")
    assert drift.ks == asymptotic.statistic and 1e-6 < asymptotic.pvalue < 0.5
    assert drift.ks_pvalue == pytest.approx(asymptotic.pvalue, abs=0.002)


def test_a_value_held_by_most_rows_gets_its_own_bin_and_the_rest_is_still_split() -> None:
    rng = np.random.default_rng(3)
    risk = np.where(rng.random(100_000) < 0.9, 0.0, rng.beta(1.0, 10.0, 100_000))

    profile, _ = _one_column(risk, risk)

    column = profile.columns["x"]
    assert column.proportions[0] == pytest.approx(0.9, abs=0.01)
    assert 0.0 < column.edges[0] < risk[risk > 0].min()
    assert len(column.proportions) == 10  # the remaining 10% split into the 9 other bins
    assert column.proportions[1:] == pytest.approx(np.full(9, 0.1 / 9), abs=0.002)


def test_few_distinct_values_get_one_bin_each_with_edges_between_them() -> None:
    rng = np.random.default_rng(4)
    flags = (rng.random(10_000) < 0.3).astype(float)
    counts = rng.choice([1.0, 2.0, 3.0, 4.0], p=[0.4, 0.3, 0.2, 0.1], size=10_000)

    flag_profile, _ = _one_column(flags, flags)
    count_profile, _ = _one_column(counts, counts)

    flag_column, count_column = flag_profile.columns["x"], count_profile.columns["x"]
    assert flag_column.edges.tolist() == [0.5]
    assert flag_column.proportions.tolist() == [np.mean(flags == 0), np.mean(flags == 1)]
    assert count_column.edges.tolist() == [1.5, 2.5, 3.5]
    assert count_column.proportions == pytest.approx([np.mean(counts == v) for v in (1, 2, 3, 4)], abs=1e-12)


@pytest.mark.parametrize("kind", ["continuous", "ties", "counts", "flags", "mostly zero"])
def test_bins_are_ordered_hold_all_the_reference_and_no_value_sits_on_an_edge(kind: str) -> None:
    reference, _ = _samples(kind, np.random.default_rng(5), 30_000, 1)

    profile, _ = _one_column(reference, reference)

    column = profile.columns["x"]
    assert np.all(np.diff(column.edges) > 0) and len(column.proportions) == len(column.edges) + 1 <= 10
    assert column.proportions.sum() == pytest.approx(1.0, abs=1e-12) and np.all(column.proportions > 0)
    assert not np.isin(column.edges, reference).any()
    assert column.n == 30_000 and np.repeat(
        column.values, np.diff(column.cumulative_counts, prepend=0)
    ).tolist() == (np.sort(reference).tolist())


def test_an_empty_current_bin_costs_a_bounded_amount() -> None:
    reference = np.repeat([0.0, 1.0], [9_000, 1_000])

    _, drift = _one_column(reference, np.zeros(5_000))

    # The empty bin's share is floored at PSI_EPSILON rather than making PSI infinite.
    expected = (1.0 - 0.9) * np.log(1.0 / 0.9) + (PSI_EPSILON - 0.1) * np.log(PSI_EPSILON / 0.1)
    assert drift.psi == pytest.approx(expected, rel=1e-12)


def test_nan_and_infinite_values_are_dropped_and_counted() -> None:
    rng = np.random.default_rng(6)
    reference = rng.normal(size=5_000)
    current = rng.normal(0.3, 1.0, 3_000)
    reference_with_gaps = np.concatenate([reference, [np.nan, np.inf, -np.inf]])
    current_with_gaps = np.concatenate([current[:1_000], [np.nan] * 40, current[1_000:], [np.inf]])

    profile, drift = _one_column(reference_with_gaps, current_with_gaps)

    assert profile.columns["x"].n_dropped == 3 and profile.columns["x"].n == 5_000
    assert drift.n_current == 3_000 and drift.n_dropped == 41
    assert drift.ks == ks_2samp(reference, current, method="asymp").statistic
    assert drift.psi == _one_column(reference, current)[1].psi


def test_nullable_integer_columns_read_their_missing_values_as_nan() -> None:
    reference = pd.DataFrame({"n": pd.array([1, 2, 3, None] * 100, dtype="Int64")})
    current = pd.DataFrame({"n": pd.array([1, 2, None, None] * 100, dtype="Int64")})
    profile = ReferenceProfile.from_frame(reference, ["n"])

    drift = feature_drift(profile, current, min_rows=1).features["n"]

    assert profile.columns["n"].n_dropped == 100 and drift.n_current == 200 and drift.n_dropped == 200
    assert drift.ks == pytest.approx(1 / 3)  # ECDFs at 2: 2/3 reference, 1 current


@pytest.mark.parametrize(
    "current",
    [
        pd.DataFrame({"a": pd.Series([], dtype=float), "b": pd.Series([], dtype=float)}),
        pd.DataFrame({"a": [np.nan] * 500, "b": [np.nan] * 500}),
        pd.DataFrame({"a": [1.0] * 199, "b": [2.0] * 199}),
    ],
    ids=["empty", "all NaN", "under min_rows"],
)
def test_too_little_data_is_insufficient_not_an_error(current: pd.DataFrame) -> None:
    rng = np.random.default_rng(7)
    profile = ReferenceProfile.from_frame(
        pd.DataFrame({"a": rng.normal(size=1_000), "b": rng.random(1_000)}), ["a", "b"]
    )

    result = feature_drift(profile, current, min_rows=200)

    assert result.insufficient and result.reason.startswith("insufficient data")
    assert "a (" in result.reason and "b (" in result.reason
    assert result.n_rows == len(current) and result.max_psi is None and result.drifted(0.0, 0.0) == []
    assert all(not f.measured and np.isnan(f.ks) for f in result.features.values())


def test_one_unmeasurable_feature_does_not_hide_the_others() -> None:
    rng = np.random.default_rng(8)
    profile = ReferenceProfile.from_frame(
        pd.DataFrame({"a": rng.normal(size=2_000), "b": rng.random(2_000)}), ["a", "b"]
    )
    current = pd.DataFrame({"a": rng.normal(2.0, 1.0, 1_000), "b": np.nan})

    result = feature_drift(profile, current)

    assert result.insufficient and "b (0)" in result.reason and "a (" not in result.reason
    assert result.features["a"].measured and result.drifted(0.2, 0.1) == ["a"]
    assert result.max_psi == result.features["a"].psi
    assert result.features["b"].n_dropped == 1_000


def test_bad_input_is_a_value_error_naming_the_column() -> None:
    frame = pd.DataFrame({"a": np.arange(300.0), "text": ["x"] * 300, "empty": np.nan})
    profile = ReferenceProfile.from_frame(frame, ["a"])

    with pytest.raises(ValueError, match="current frame has no column 'a'"):
        feature_drift(profile, frame.rename(columns={"a": "b"}))
    with pytest.raises(ValueError, match="'missing'"):
        ReferenceProfile.from_frame(frame, ["a", "missing"])
    with pytest.raises(ValueError, match="'text' is not numeric"):
        ReferenceProfile.from_frame(frame, ["text"])
    with pytest.raises(ValueError, match="'empty' has no finite value"):
        ReferenceProfile.from_frame(frame, ["empty"])
    with pytest.raises(ValueError, match="bins"):
        ReferenceProfile.from_frame(frame, ["a"], bins=1)


def test_score_drift_reports_the_shift_and_the_flagged_shares() -> None:
    rng = np.random.default_rng(10)
    reference = rng.beta(1.0, 8.0, 20_000)
    current = np.append(rng.beta(1.0, 4.0, 10_000), [np.nan, 0.5])  # 0.5: exactly on the threshold
    finite = current[np.isfinite(current)]

    drift = score_drift(reference, current, threshold=0.5)

    assert drift.flagged_share_reference == np.mean(reference >= 0.5)
    assert drift.flagged_share_current == np.mean(finite >= 0.5)
    assert drift.flagged_share_current > 2 * drift.flagged_share_reference
    assert drift.ks == ks_2samp(reference, finite, method="asymp").statistic and drift.psi > 0.2
    assert drift.drift.n_dropped == 1 and not drift.insufficient

    empty = score_drift(reference, np.array([]), threshold=0.5)
    assert empty.insufficient and np.isnan(empty.psi) and np.isnan(empty.flagged_share_current)
    assert empty.flagged_share_reference == drift.flagged_share_reference


def _evidently_frames(rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(11)

    def frame(shift: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "amount": rng.lognormal(3.5 + shift, 0.7, rows),
                "count": rng.poisson(3.0, rows),
                "flag": (rng.random(rows) < 0.3).astype(int),
            }
        )

    return frame(0.0), frame(0.5)


def test_evidently_report_finds_the_shifted_column_and_writes_html(tmp_path: Path) -> None:
    reference, current = _evidently_frames(3_000)
    html = tmp_path / "reports" / "drift.html"

    summary = evidently_drift_report(reference, current, ["amount", "count", "flag"], html)

    assert not summary["insufficient"] and summary["skipped_columns"] == []
    assert {name: column["drifted"] for name, column in summary["columns"].items()} == {
        "amount": True,
        "count": False,
        "flag": False,
    }
    assert summary["drifted_columns"] == 1 and summary["share_drifted"] == pytest.approx(1 / 3)
    assert summary["drifted_features"] == ["amount"] and summary["dataset_drift"] is False
    assert summary["test"] == DEFAULT_RULE.describe()
    assert all(
        column["method"] == DEFAULT_RULE.stattest_name and column["threshold"] == SCORE_THRESHOLD
        for column in summary["columns"].values()
    )
    assert not summary["sampled"] and summary["rows_used"] == {"reference": 3_000, "current": 3_000}
    assert html.stat().st_size > 10_000 and "<html" in html.read_text()[:1_000].lower()


def test_evidently_report_samples_large_frames_and_skips_empty_columns(tmp_path: Path) -> None:
    reference, current = _evidently_frames(3_000)
    current["flag"] = np.nan

    summary = evidently_drift_report(
        reference, current, ["amount", "flag"], tmp_path / "drift.html", max_rows=1_000, seed=3
    )

    assert summary["sampled"] and summary["rows_used"] == {"reference": 1_000, "current": 1_000}
    assert summary["rows"] == {"reference": 3_000, "current": 3_000}
    assert summary["insufficient"] and summary["skipped_columns"] == ["flag"] and "flag" in summary["reason"]
    assert list(summary["columns"]) == ["amount"] and summary["columns"]["amount"]["drifted"]


def test_evidently_is_not_run_without_data(tmp_path: Path) -> None:
    reference, current = _evidently_frames(500)
    html = tmp_path / "drift.html"

    summary = evidently_drift_report(reference, current.iloc[:0], ["amount"], html)

    assert summary["insufficient"] and summary["reason"].startswith("insufficient data")
    assert summary["rows"] == {"reference": 500, "current": 0} and not html.exists()
    with pytest.raises(ValueError, match="'nope'"):
        evidently_drift_report(reference, current, ["amount", "nope"], html)


def test_evidently_judges_each_column_by_the_sensors_rule(tmp_path: Path) -> None:
    """PSI or KS, each over its own threshold, as `DriftResult.drifted`; the score is the larger ratio."""
    reference, current = _evidently_frames(3_000)
    columns = ["amount", "count", "flag"]
    sensor = feature_drift(ReferenceProfile.from_frame(reference, columns), current).features
    rules = {
        "KS alone": SensorRule(psi_threshold=100.0, ks_threshold=0.1, min_drifted_features=1),
        "PSI alone": SensorRule(psi_threshold=0.2, ks_threshold=1.0, min_drifted_features=1),
        "neither": SensorRule(psi_threshold=100.0, ks_threshold=1.0, min_drifted_features=1),
    }

    summaries = {
        case: evidently_drift_report(reference, current, columns, tmp_path / "drift.html", rule=rule)
        for case, rule in rules.items()
    }

    for case, rule in rules.items():
        summary = summaries[case]
        drifted = [
            n for n in columns if sensor[n].psi > rule.psi_threshold or sensor[n].ks > rule.ks_threshold
        ]
        assert summary["drifted_features"] == drifted == ([] if case == "neither" else ["amount"]), case
        assert summary["dataset_drift"] is bool(drifted), case
        for name, column in summary["columns"].items():
            score = max(sensor[name].psi / rule.psi_threshold, sensor[name].ks / rule.ks_threshold)
            assert column["drift_score"] == score and column["method"] == rule.stattest_name, (case, name)
    assert len({rule.stattest_name for rule in rules.values()}) == len(rules)


def test_evidently_picks_its_own_tests_without_a_rule(tmp_path: Path) -> None:
    reference, current = _evidently_frames(3_000)

    summary = evidently_drift_report(
        reference, current, ["amount", "flag"], tmp_path / "drift.html", rule=None
    )

    assert summary["test"] == "Evidently's own test per column"
    methods = {column["method"] for column in summary["columns"].values()}
    assert methods and not any(method.startswith("fraudpipe") for method in methods)
    assert summary["drifted_features"] == ["amount"]
