"""Window sums are exact, rounded once: the value of a window depends on its events alone.

The reference is Python's `fractions.Fraction`, exact for any float; the
property that online per-day state relies on is that no order or split of the
same events changes a single bit.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_repo.engine import NS_PER_DAY, evaluate_arrays
from feature_repo.windows import Aggregation, FeatureGroup, WindowFeature

SUM_ONE_DAY = FeatureGroup(
    name="amounts",
    entity="customer",
    join_key="CUSTOMER_ID",
    delay_days=0,
    features=(
        WindowFeature("N", 1, Aggregation.COUNT),
        WindowFeature("MEAN", 1, Aggregation.MEAN, "AMOUNT"),
    ),
)

finite = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)
amounts = st.one_of(
    st.lists(finite, min_size=1, max_size=60),
    st.lists(st.decimals(0, 10_000, places=2).map(float), min_size=1, max_size=60),
    st.lists(st.floats(-1e20, 1e20), min_size=1, max_size=60),
)


def _mean_of_one_window(values: np.ndarray, order: np.ndarray) -> float:
    """All `values` in one customer's window, fed in `order`, read at the window's end."""
    times = np.arange(len(values), dtype=np.int64)[order]
    out = evaluate_arrays(
        SUM_ONE_DAY,
        np.zeros(len(values), dtype=np.int64),
        times,
        {"AMOUNT": values[order]},
        None,
        np.zeros(1, dtype=np.int64),
        np.array([len(values)], dtype=np.int64),
    )
    assert out["N"][0] == len(values)
    return float(out["MEAN"][0])


@settings(max_examples=300, deadline=None)
@given(amounts, st.randoms(use_true_random=False))
def test_a_window_sum_is_the_exact_sum_rounded_once_in_any_order(values: list[float], rnd) -> None:
    array = np.array(values, dtype=np.float64)
    exact = sum((Fraction(v) for v in values), Fraction(0))
    try:
        expected = float(exact) / len(values)
    except OverflowError:  # the exact sum is beyond float64: nothing to compare
        return
    if 0 < abs(exact) < Fraction(2.0**-1022):  # subnormal sums may round twice (documented)
        return
    order = np.arange(len(values))
    shuffled = np.array(rnd.sample(range(len(values)), len(values)))
    assert _mean_of_one_window(array, order) == expected
    assert _mean_of_one_window(array, shuffled) == expected


def test_windows_of_a_long_history_are_exact() -> None:
    """Running totals over a year of events: a window's sum must not carry the history's rounding."""
    rng = np.random.default_rng(3)
    n = 50_000
    times = np.sort(rng.integers(0, 365 * NS_PER_DAY, n))
    values = np.round(rng.uniform(0.01, 5_000, n), 2)
    values[::997] = 1e15  # huge values early in the history must not blur later windows
    queries = times[::101]
    out = evaluate_arrays(
        SUM_ONE_DAY,
        np.zeros(n, dtype=np.int64),
        times,
        {"AMOUNT": values},
        None,
        np.zeros(len(queries), dtype=np.int64),
        queries,
    )
    for q, count, mean in zip(queries, out["N"], out["MEAN"], strict=True):
        window = values[(times > q - NS_PER_DAY) & (times <= q)]
        assert count == len(window)
        assert mean == float(sum((Fraction(v) for v in window), Fraction(0))) / len(window)
