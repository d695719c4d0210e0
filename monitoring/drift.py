"""Drift statistics of live features and scores against a model's training reference.

The reference side is summarised once per model (`ReferenceProfile`), stored
beside the model, and every live batch is then compared against it: PSI over
the reference's quantile bins and the exact two-sample Kolmogorov-Smirnov
statistic. Both are computed with sorting and `searchsorted` only, so a batch
of a million rows costs a sort per feature and nothing per row in Python.

Why both statistics: PSI is the industry's alerting number for binned
population shifts (0.1 "watch", 0.2 "act" by convention), and it does not
grow with the batch size; KS is exact, needs no binning, and catches shifts
that fall inside one PSI bin. Neither uses a p-value for alerting: with a
million rows any difference is "significant", so thresholds are on the
statistics themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

from settings import MonitoringSettings

DEFAULT_BINS = 10
DEFAULT_MIN_ROWS: int = MonitoringSettings.model_fields["min_rows"].default

PSI_EPSILON = 1e-4
"""Floor on each bin's proportion (both sides) before PSI's logarithm.

An empty bin would make PSI infinite; flooring it at 0.01% keeps the term
finite and bounded: a bin that held 10% of the reference and is empty now
adds (0.1 - 1e-4) * ln(0.1 / 1e-4) = 0.69, clearly over any alert threshold.
"""

KS_FINITE_N_LIMIT = 10_000
"""Largest effective sample size whose KS p-value uses the finite-n distribution (see `_ks_pvalue`)."""

SCORE_COLUMN = "score"


@dataclass(frozen=True)
class ColumnProfile:
    """One feature's reference summary.

    Attributes:
        edges: the PSI cut points, strictly increasing; bin i holds
            `edges[i-1] <= x < edges[i]` (the first and last bins are open).
            Each edge lies strictly between two distinct reference values, so
            no reference value sits on a boundary.
        proportions: the reference share of each of the `len(edges) + 1` bins.
        values: the distinct finite reference values, sorted.
        cumulative_counts: how many reference values are `<= values[j]`: with
            `values`, the sorted reference sample run-length encoded, which is
            all an exact KS needs (its ECDF) and is far smaller for counts and flags.
        n_dropped: NaN and infinite reference values left out.
    """

    edges: np.ndarray
    proportions: np.ndarray
    values: np.ndarray
    cumulative_counts: np.ndarray
    n_dropped: int

    @property
    def n(self) -> int:
        """Finite reference values summarised."""
        return int(self.cumulative_counts[-1])

    def count_at_most(self, points: np.ndarray | float) -> np.ndarray:
        """How many reference values are <= each point (the reference ECDF times n)."""
        counts = np.concatenate(([0], self.cumulative_counts))
        return counts[np.searchsorted(self.values, points, side="right")]


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift in one batch.

    `psi`, `ks` and `ks_pvalue` are NaN when the batch had fewer than
    `min_rows` finite values of the feature: too few to measure.

    Attributes:
        psi: population stability index over the reference bins.
        ks: exact two-sample KS statistic, max |ECDF_reference - ECDF_current|.
        ks_pvalue: Smirnov's asymptotic p-value (as scipy's `ks_2samp(method="asymp")`,
            its limit for large samples); informative for small batches only, see the
            module docstring.
        n_current: finite values of the feature in the batch.
        n_dropped: NaN and infinite values of the feature in the batch.
    """

    psi: float
    ks: float
    ks_pvalue: float
    n_current: int
    n_dropped: int

    @property
    def measured(self) -> bool:
        return not np.isnan(self.psi)


@dataclass(frozen=True)
class DriftResult:
    """A batch's drift, feature by feature.

    Attributes:
        features: every profiled feature, in the profile's order.
        n_rows: rows in the batch, finite or not.
        insufficient: some feature had fewer than `min_rows` finite values
            (those are not measured; the others are).
        reason: why the result is insufficient, naming the features; "" otherwise.
    """

    features: dict[str, FeatureDrift]
    n_rows: int
    insufficient: bool
    reason: str

    @property
    def max_psi(self) -> float | None:
        """The largest PSI of a measured feature; None when none was measured."""
        measured = [f.psi for f in self.features.values() if f.measured]
        return max(measured) if measured else None

    def drifted(self, psi_threshold: float, ks_threshold: float) -> list[str]:
        """Measured features with PSI or KS over its threshold, largest PSI first.

        The thresholds are the monitoring settings' (`settings.MonitoringSettings`). KS is a
        distance here, not a p-value: a p-value flags everything at a million rows.
        """
        over = [
            (name, f.psi)
            for name, f in self.features.items()
            if f.measured and (f.psi > psi_threshold or f.ks > ks_threshold)
        ]
        return [name for name, _ in sorted(over, key=lambda item: -item[1])]


@dataclass(frozen=True)
class ScoreDrift:
    """Prediction drift: the score distribution and the share of flagged transactions.

    Attributes:
        drift: PSI and KS of the scores, as for a feature.
        threshold: the decision threshold the shares use (flagged: score >= threshold).
        flagged_share_reference: share of reference scores flagged.
        flagged_share_current: share of current scores flagged; NaN when insufficient.
    """

    drift: FeatureDrift
    threshold: float
    flagged_share_reference: float
    flagged_share_current: float
    insufficient: bool
    reason: str

    @property
    def psi(self) -> float:
        return self.drift.psi

    @property
    def ks(self) -> float:
        return self.drift.ks


def _column_values(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A column as float64, missing values (nullable dtypes' NA included) as NaN."""
    try:
        return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as error:
        raise ValueError(f"column {name!r} is not numeric: {error}") from error


def _finite_sorted(values: np.ndarray) -> tuple[np.ndarray, int]:
    """The finite values as float64, sorted, and how many were not finite."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    kept = values[finite] if not finite.all() else values
    return np.sort(kept), len(values) - len(kept)


def _run_length(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how many values are <= each."""
    if len(sorted_values) == 0:
        return sorted_values, np.zeros(0, dtype=np.int64)
    last = np.flatnonzero(np.append(sorted_values[1:] != sorted_values[:-1], True))
    return sorted_values[last], (last + 1).astype(np.int64)


def _cut_indices(cumulative_counts: np.ndarray, bins: int) -> np.ndarray:
    """Where to cut the distinct values into at most `bins` bins of about equal reference mass.

    Greedy equal-frequency: each bin closes after the first distinct value
    that brings it to its share of what is left, and the share is recomputed
    over the bins left. A value held by most rows (a risk of 0, a flag) thus
    fills one bin alone and the rest of the mass is still split into the
    remaining bins, where quantile edges would collapse into one. With at most
    `bins` well-populated distinct values, each gets its own bin.
    Returns j such that a cut falls between distinct values j and j+1.
    """
    n = int(cumulative_counts[-1])
    last = len(cumulative_counts) - 1
    cuts: list[int] = []
    taken = 0
    for left in range(bins, 1, -1):
        target = taken + (n - taken) / left
        j = int(np.searchsorted(cumulative_counts, target, side="left"))
        if j >= last:
            break
        cuts.append(j)
        taken = int(cumulative_counts[j])
    return np.asarray(cuts, dtype=np.int64)


def _profile_column(raw: np.ndarray, bins: int) -> ColumnProfile:
    """The summary of one non-empty column (at least one finite value)."""
    sorted_values, n_dropped = _finite_sorted(raw)
    values, cumulative = _run_length(sorted_values)
    cuts = _cut_indices(cumulative, bins)
    low, high = values[cuts], values[cuts + 1]
    middle = low / 2 + high / 2  # halves first: no overflow near the float maximum
    # Between adjacent floats the midpoint rounds onto one of them; the upper one keeps `low` below the edge.
    edges = np.where(middle > low, middle, high)
    counts = np.diff(np.concatenate(([0], cumulative[cuts], [cumulative[-1]])))
    return ColumnProfile(edges, counts / cumulative[-1], values, cumulative, n_dropped)


@dataclass(frozen=True)
class ReferenceProfile:
    """What drift is measured against: each model feature's reference summary.

    Built once from the training set and stored as a model artifact
    (`save`/`load`: a plain npz, no pickle), so a batch's drift needs neither
    the training set nor a pass over it.
    """

    columns: dict[str, ColumnProfile]
    bins: int

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, columns: Sequence[str], bins: int = DEFAULT_BINS
    ) -> ReferenceProfile:
        """Profile `columns` of `frame`; NaN and infinite values are dropped and counted.

        Raises:
            ValueError: a column is missing or has no finite value, `columns` is empty, or `bins` < 2.
        """
        if bins < 2:
            raise ValueError(f"bins must be at least 2, got {bins}")
        _check_columns(frame, columns, "reference")
        profiles = {}
        for name in columns:
            raw = _column_values(frame, name)
            if not np.isfinite(raw).any():
                raise ValueError(f"reference column {name!r} has no finite value to profile")
            profiles[name] = _profile_column(raw, bins)
        return cls(profiles, bins)


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], which: str) -> None:
    if len(columns) == 0:
        raise ValueError("columns: at least one column is required")
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"{which} frame has no column {', '.join(map(repr, missing))}")


def _ks(reference: ColumnProfile, current_sorted: np.ndarray) -> float:
    """Exact two-sample KS statistic from the reference's ECDF and the sorted current sample.

    Both ECDFs are right-continuous steps, so the supremum of their difference
    is reached at one of the two samples' points; each side's ECDF is a count
    over its size, evaluated with `searchsorted` as scipy's `ks_2samp` does,
    which makes the result equal to its "asymp" method's bit for bit (its
    "exact" method rounds the statistic to a fraction, some 1e-17 away).
    """
    n_ref, n_cur = reference.n, len(current_sorted)
    current_values, current_cumulative = _run_length(current_sorted)
    # At the current sample's points.
    below = reference.count_at_most(current_values)
    at_current = np.abs(below / n_ref - current_cumulative / n_cur)
    # At the reference sample's points.
    below = np.searchsorted(current_sorted, reference.values, side="right")
    at_reference = np.abs(reference.cumulative_counts / n_ref - below / n_cur)
    return float(max(at_current.max(), at_reference.max()))


def _psi(reference: ColumnProfile, current_sorted: np.ndarray) -> float:
    below_edge = np.searchsorted(current_sorted, reference.edges, side="left")
    counts = np.diff(np.concatenate(([0], below_edge, [len(current_sorted)])))
    expected = np.maximum(reference.proportions, PSI_EPSILON)
    actual = np.maximum(counts / len(current_sorted), PSI_EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _ks_pvalue(statistic: float, n_ref: int, n_cur: int) -> float:
    """Smirnov's asymptotic two-sided p-value.

    Up to an effective size of `KS_FINITE_N_LIMIT` as scipy's
    `ks_2samp(method="asymp")` computes it (the one-sample KS distribution
    at n = n_ref * n_cur / (n_ref + n_cur)); beyond it, that distribution's
    limit, Kolmogorov's: within 0.002 of it there, where scipy's finite-n
    computation can take half a second per feature.
    """
    m, n = sorted((float(n_ref), float(n_cur)), reverse=True)
    effective_n = np.round(m * n / (m + n))
    if effective_n <= KS_FINITE_N_LIMIT:
        pvalue = stats.kstwo.sf(statistic, effective_n)
    else:
        pvalue = special.kolmogorov(np.sqrt(effective_n) * statistic)
    return float(np.clip(pvalue, 0.0, 1.0))


def _column_drift(
    reference: ColumnProfile, current_sorted: np.ndarray, n_dropped: int, min_rows: int
) -> FeatureDrift:
    n_current = len(current_sorted)
    if n_current < max(min_rows, 1):
        return FeatureDrift(np.nan, np.nan, np.nan, n_current, n_dropped)
    ks = _ks(reference, current_sorted)
    return FeatureDrift(
        psi=_psi(reference, current_sorted),
        ks=ks,
        ks_pvalue=_ks_pvalue(ks, reference.n, n_current),
        n_current=n_current,
        n_dropped=n_dropped,
    )


def _insufficient_reason(features: Mapping[str, FeatureDrift], min_rows: int) -> str:
    short = [f"{name} ({f.n_current})" for name, f in features.items() if not f.measured]
    if not short:
        return ""
    return f"insufficient data: fewer than {min_rows} finite values of {', '.join(short)}"


def feature_drift(
    reference: ReferenceProfile, current: pd.DataFrame, min_rows: int = DEFAULT_MIN_ROWS
) -> DriftResult:
    """PSI and exact KS of each profiled feature of `current` against the reference.

    A feature with fewer than `min_rows` finite values in `current` (an empty
    or all-NaN batch included) is not measured and makes the result
    `insufficient`; the other features are still measured.

    Raises:
        ValueError: `current` lacks a profiled column.
    """
    _check_columns(current, list(reference.columns), "current")
    features = {
        name: _column_drift(profile, *_finite_sorted(_column_values(current, name)), min_rows)
        for name, profile in reference.columns.items()
    }
    reason = _insufficient_reason(features, min_rows)
    return DriftResult(features, len(current), insufficient=bool(reason), reason=reason)


def score_drift(
    reference_scores: np.ndarray,
    current_scores: np.ndarray,
    threshold: float,
    min_rows: int = DEFAULT_MIN_ROWS,
    bins: int = DEFAULT_BINS,
) -> ScoreDrift:
    """Drift of the model's scores: PSI and KS as for a feature, and the flagged shares.

    The flagged share is the business view of the same shift: a model that
    suddenly flags twice as many transactions floods the analysts even when
    the rest of the score distribution looks stable.

    Raises:
        ValueError: `reference_scores` has no finite value.
    """
    reference = ReferenceProfile.from_frame(
        pd.DataFrame({SCORE_COLUMN: reference_scores}), [SCORE_COLUMN], bins
    ).columns[SCORE_COLUMN]
    current_sorted, n_dropped = _finite_sorted(current_scores)
    drift = _column_drift(reference, current_sorted, n_dropped, min_rows)
    reason = _insufficient_reason({SCORE_COLUMN: drift}, min_rows)
    n_current = len(current_sorted)
    flagged_current = (
        (n_current - np.searchsorted(current_sorted, threshold, side="left")) / n_current
        if drift.measured
        else float("nan")
    )
    below_threshold = reference.count_at_most(np.nextafter(threshold, -np.inf))
    return ScoreDrift(
        drift=drift,
        threshold=threshold,
        flagged_share_reference=float((reference.n - below_threshold) / reference.n),
        flagged_share_current=float(flagged_current),
        insufficient=bool(reason),
        reason=reason,
    )
