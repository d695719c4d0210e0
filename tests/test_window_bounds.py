"""A window holds exactly the events of its entity in (lo, hi], whichever time key the engine picks.

`feature_repo.engine._time_keys` orders times by their offset from the earliest
event when (entity, offset) fits an int64, and by their rank among the
distinct event times otherwise. The reference here is a plain loop; a far event
of an entity no query reads forces the rank path without changing any answer.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_repo.engine import _window_sums

FAR = 4 * 10**18
"""A time far enough from the others that no (entity, offset) key fits an int64: ranks are used."""
UNREAD = 99
"""The entity of the far event: no query reads it."""

events = st.lists(
    st.tuples(st.integers(0, 3), st.integers(-6, 6), st.decimals(-100, 100, places=2).map(float)),
    max_size=40,
)
queries = st.lists(
    st.tuples(st.integers(0, 4), st.integers(-9, 9), st.integers(0, 8)), min_size=1, max_size=12
)


@pytest.mark.parametrize("path", ["offsets", "ranks"])
@settings(max_examples=300, deadline=None)
@given(events=events, queries=queries)
def test_each_window_holds_its_entitys_events_in_lo_exclusive_hi_inclusive(
    path: str, events: list[tuple[int, int, float]], queries: list[tuple[int, int, int]]
) -> None:
    rows = events + ([(UNREAD, FAR, 1.0)] if path == "ranks" else [])
    keys = np.array([k for k, _, _ in rows], dtype=np.int64)
    times = np.array([t for _, t, _ in rows], dtype=np.int64)
    values = np.array([v for _, _, v in rows], dtype=np.float64)
    query_keys = np.array([k for k, _, _ in queries], dtype=np.int64)
    hi = np.array([t for _, t, _ in queries], dtype=np.int64)
    lo = hi - np.array([n for _, _, n in queries], dtype=np.int64)

    (counts, sums) = _window_sums(keys, times, {"V": values}, query_keys, hi, {1: lo})[1]

    for i, (key, end, length) in enumerate(queries):
        inside = [v for k, t, v in events if k == key and end - length < t <= end]
        assert counts[i] == len(inside), (i, queries[i])
        assert sums["V"][i] == float(sum((Fraction(v) for v in inside), Fraction(0))), (i, queries[i])
