"""The feature engine's cost is linear in events + queries, whatever the data's shape or the queries' order.

No timing: the engine's summing primitives are wrapped to count the elements
they touch, a deterministic measure. A window sum that walks its window (or
the gaps between windows) shows as super-linear growth when the data doubles;
the small test datasets alone never would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from feature_repo import engine
from feature_repo.engine import NS_PER_DAY, evaluate_arrays, feature_table
from feature_repo.windows import CUSTOMER_SPENDING, TERMINAL_RISK

SIZES = (4_000, 8_000, 16_000)
PER_EVENT_AND_QUERY = 16
"""Elements allowed per event + query: a few fixed-point digits of a value, for each of three windows."""

Measure = Callable[[Callable[[], object]], int]
"""Runs a piece of work and returns the elements the engine's sums touched in it."""


class _CountingUfunc:
    def __init__(self, ufunc: np.ufunc, counter: _CountingNumpy) -> None:
        self._ufunc, self._counter = ufunc, counter

    def reduceat(self, array: np.ndarray, indices: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        # Segment i runs from indices[i] to indices[i + 1] (or the end); a non-increasing pair reads one.
        ends = np.append(indices[1:], len(array))
        self._counter.touched += int(np.maximum(ends - indices, 1).sum())
        return self._ufunc.reduceat(array, indices, *args, **kwargs)

    def accumulate(self, array: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        self._counter.touched += int(np.size(array))
        return self._ufunc.accumulate(array, *args, **kwargs)

    def reduce(self, array: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        self._counter.touched += int(np.size(array))
        return self._ufunc.reduce(array, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ufunc(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ufunc, name)


class _CountingNumpy:
    """numpy as the engine sees it, counting the elements every sum, running sum or reduction reads."""

    def __init__(self) -> None:
        self.touched = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(np, name)
        if name in ("cumsum", "sum"):

            def counted(array: Any, *args: Any, **kwargs: Any) -> Any:
                self.touched += int(np.size(array))
                return attr(array, *args, **kwargs)

            return counted
        if isinstance(attr, np.ufunc):
            return _CountingUfunc(attr, self)
        return attr


@pytest.fixture
def count_touched(monkeypatch: pytest.MonkeyPatch) -> Iterator[Measure]:
    counter = _CountingNumpy()
    monkeypatch.setattr(engine, "np", counter)

    def measure(work: Callable[[], object]) -> int:
        counter.touched = 0
        work()
        return counter.touched

    yield measure


def _interleaved_events(n: int, seed: int = 0) -> pd.DataFrame:
    """n payments of n/10 customers at random times over 60 days: every entity's events interleave."""
    rng = np.random.default_rng(seed)
    times = pd.Timestamp("2018-04-01", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 60 * NS_PER_DAY, n), unit="ns"
    )
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(n),
            "TX_DATETIME": times,
            "CUSTOMER_ID": rng.integers(0, n // 10, n),
            "TERMINAL_ID": rng.integers(0, n // 10, n),
            "TX_AMOUNT": np.round(rng.uniform(1, 200, n), 2),
        }
    ).sort_values("TX_DATETIME", ignore_index=True)


def _assert_linear(touched: list[int], sizes: list[int]) -> None:
    for (small, n_small), (large, n_large) in zip(
        zip(touched, sizes, strict=True), zip(touched[1:], sizes[1:], strict=True), strict=False
    ):
        growth = (large / small) / (n_large / n_small)
        assert growth <= 1.1, f"touched {small:,} -> {large:,} for {n_small:,} -> {n_large:,} events+queries"
    for count, size in zip(touched, sizes, strict=True):
        assert count <= PER_EVENT_AND_QUERY * size, f"{count:,} elements for {size:,} events + queries"


def test_a_training_feature_table_costs_linear_work(count_touched: Measure) -> None:
    """The training path: one query per distinct (customer, time), asked in time order across customers."""
    touched, sizes = [], []
    for n in SIZES:
        events = _interleaved_events(n)
        touched.append(count_touched(lambda events=events: feature_table(CUSTOMER_SPENDING, events)))
        sizes.append(2 * n)
    _assert_linear(touched, sizes)


@pytest.mark.parametrize("order", ["time", "entity", "random"])
def test_reads_in_any_order_cost_linear_work(order: str, count_touched: Measure) -> None:
    """Serving and parity reads: queries in whatever order callers send them, labels summed too."""
    touched, sizes = [], []
    for n in SIZES:
        events = _interleaved_events(n)
        rng = np.random.default_rng(1)
        keys = events["TERMINAL_ID"].to_numpy()
        times = engine.to_ns(events["TX_DATETIME"], "TX_DATETIME")
        queries = {
            "time": np.arange(n),
            "entity": np.lexsort((times, keys)),
            "random": rng.permutation(n),
        }[order]
        labels = (rng.uniform(size=n) < 0.1).astype(np.int8)
        touched.append(
            count_touched(
                lambda keys=keys, times=times, labels=labels, queries=queries: evaluate_arrays(
                    TERMINAL_RISK, keys, times, {}, labels, keys[queries], times[queries] + 8 * NS_PER_DAY
                )
            )
        )
        sizes.append(2 * n)
    _assert_linear(touched, sizes)


def test_one_busy_entity_costs_linear_work(count_touched: Measure) -> None:
    """A terminal taking every payment of a day: each window holds thousands of events."""
    touched, sizes = [], []
    for n in SIZES:
        events = _interleaved_events(n).assign(CUSTOMER_ID=0)
        events["TX_DATETIME"] = pd.Timestamp("2018-04-01", tz="UTC") + pd.to_timedelta(
            np.arange(n) * (NS_PER_DAY // n), unit="ns"
        )
        touched.append(count_touched(lambda events=events: feature_table(CUSTOMER_SPENDING, events)))
        sizes.append(2 * n)
    _assert_linear(touched, sizes)
