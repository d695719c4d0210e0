"""Evaluation of window features, exact at any timestamp: the training set's and serving's one engine.

Every feature is a sum over an entity's events in a half-open time window
(lo, hi]. Sorted by (entity, time), each window is a slice found by two binary
searches and summed as the difference of two exact running totals, so a full
point-in-time feature table costs O((events + queries) log events) in any
query order and whatever a window holds, with no per-row Python, and a single
serving request costs microseconds of numpy. Sums are exact, rounded once: a
window's value depends on its events alone, not on their order or on how a
store splits them. Times and entities are dense-ranked first so the composite
(entity, time) key is an exact int64 at nanosecond resolution whatever the id
range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from feature_repo.windows import Aggregation, FeatureGroup

NS_PER_DAY = 86_400 * 10**9
FEATURE_TIMESTAMP = "event_timestamp"


@dataclass(frozen=True)
class EventSchema:
    """Column names of the event and label (report) tables."""

    event_id: str = "TRANSACTION_ID"
    event_time: str = "TX_DATETIME"
    report_time: str = "REPORT_DATETIME"


FRAUD_EVENTS = EventSchema()


def to_ns(times: pd.Series | pd.DatetimeIndex, column: str) -> np.ndarray:
    """UTC nanoseconds since the epoch; naive times are refused, not guessed."""
    index = pd.DatetimeIndex(times)
    if index.tz is None:
        raise ValueError(f"{column}: timestamps must be timezone-aware (UTC), got naive values")
    # asi8 counts in the index's own unit: a datetime64[us] column would read 1000x too small.
    return np.asarray(index.as_unit("ns").asi8, dtype=np.int64)


def reported_labels(
    events: pd.DataFrame,
    reports: pd.DataFrame,
    max_delay_days: float,
    schema: EventSchema = FRAUD_EVENTS,
) -> np.ndarray:
    """Flag each event that has a report, checking every report was known in time.

    A window ending at t - d may use an event's label at time t only if its report
    came at most d days after the event. Rather than silently reading a label from
    the future, a slower report is an error.

    Returns:
        An int8 array aligned with `events`: 1 where the event was reported.
    """
    reported = reports.merge(events[[schema.event_id, schema.event_time]], on=schema.event_id, how="inner")
    if len(reported):
        delay = to_ns(reported[schema.report_time], schema.report_time) - to_ns(
            reported[schema.event_time], schema.event_time
        )
        if (delay < 0).any():
            raise ValueError(f"{int((delay < 0).sum())} reports are dated before their event")
        late = delay > max_delay_days * NS_PER_DAY
        if late.any():
            raise ValueError(
                f"{int(late.sum())} reports arrived more than {max_delay_days} days after their "
                "event: windows delayed by that much would read labels not yet known"
            )
    return events[schema.event_id].isin(reported[schema.event_id]).to_numpy(np.int8)


LIMB_BITS = 32
"""Bits per fixed-point digit of an exact sum: a window of up to 2**31 events cannot overflow a digit."""


def _fixed_point_digits(column: np.ndarray) -> tuple[np.ndarray, int]:
    """Each value's exact base-2**32 digits on an absolute grid, as signed int64 (one column a digit).

    Digit k of a value is worth 2**(32 * (lowest + k)); `lowest` is the
    finest grid step any value's last mantissa bit needs, so the digits hold
    every bit of every value. `fmod` by a power of two and scaling by one are
    exact in IEEE arithmetic, so no bit is rounded away.

    Returns:
        The digits (values x digits) and `lowest`.
    """
    if not np.isfinite(column).all():
        raise ValueError("window features sum finite values only; got NaN or infinity")
    magnitude = np.abs(column)
    nonzero = magnitude[magnitude > 0]
    if not len(nonzero):
        return np.zeros((len(column), 0), dtype=np.int64), 0
    _, exponents = np.frexp(nonzero)  # nonzero < 2**exponent; its last bit is worth >= 2**(exponent - 53)
    lowest = int(exponents.min() - 53) // LIMB_BITS
    highest = -(-int(exponents.max()) // LIMB_BITS)
    digits = np.empty((len(column), highest - lowest), dtype=np.int64)
    for k in range(highest - lowest):
        bit = (lowest + k) * LIMB_BITS
        if bit + LIMB_BITS <= -1074:  # below the smallest subnormal: no double has bits here
            digits[:, k] = 0
            continue
        # The value's bits below this digit's top; beyond float64's range, all of them.
        below = magnitude if bit + LIMB_BITS > 1023 else np.fmod(magnitude, np.ldexp(1.0, bit + LIMB_BITS))
        digits[:, k] = np.floor(np.ldexp(below, -bit))
    digits[column < 0] *= -1
    return digits, lowest


def _canonical(digits: np.ndarray) -> np.ndarray:
    """Carry each digit into the next so that all but the top lie in [0, 2**32)."""
    digits = digits.copy()
    for k in range(digits.shape[1] - 1):
        carry = digits[:, k] >> LIMB_BITS
        digits[:, k] -= carry << LIMB_BITS
        digits[:, k + 1] += carry
    return digits


def _shift(values: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """values * 2**bits, rounded toward zero, for non-negative int64 values and per-row shifts."""
    return np.where(bits >= 0, values << np.clip(bits, 0, 63), values >> np.clip(-bits, 0, 63))


def _digits_to_float(digits: np.ndarray, lowest: int) -> np.ndarray:
    """The float64 nearest each exact sum (ties to even): a function of the sum alone.

    The magnitude's top 62 bits are gathered into one int64 with a sticky bit
    for any 1 below them, so the int64 -> float64 cast, which rounds
    correctly, rounds once as if from the exact value.
    """
    if digits.shape[1] == 0:
        return np.zeros(len(digits))
    zeros = np.zeros((len(digits), 2), dtype=np.int64)
    # A zero digit on top takes the carries, so every digit ends below 2**32; two below give
    # every row two digits under its top one.
    digits = np.concatenate([zeros, digits, zeros[:, :1]], axis=1)
    negative = _canonical(digits)[:, -1] < 0
    digits = _canonical(np.where(negative[:, None], -digits, digits))
    nonzero = digits != 0
    rows = np.arange(len(digits))
    top = np.maximum(digits.shape[1] - 1 - np.argmax(nonzero[:, ::-1], axis=1), 2)
    d0, d1, d2 = digits[rows, top], digits[rows, top - 1], digits[rows, top - 2]
    # X = d0 * 2**64 + d1 * 2**32 + d2 has 64 + width bits; X >> (width + 2) keeps the top 62.
    width = np.frexp(d0.astype(np.float64))[1].astype(np.int64)
    kept = (d0 << (62 - width)) | _shift(d1, 30 - width) | _shift(d2, -(width + 2))
    dropped = (
        (d1 & ((np.int64(1) << np.clip(width - 30, 0, 32)) - 1))
        | (d2 & ((np.int64(1) << np.minimum(width + 2, 32)) - 1))
        | (np.logical_or.accumulate(nonzero, axis=1)[rows, top - 3] & (top >= 3))
    )
    rounded = (kept | (dropped != 0)).astype(np.float64)
    exponent = (top - 4 + lowest) * LIMB_BITS + width + 2
    return np.where(negative, -1.0, 1.0) * np.ldexp(rounded, exponent)


def _window_sums(
    event_keys: np.ndarray,
    event_times: np.ndarray,
    values: dict[str, np.ndarray],
    query_keys: np.ndarray,
    window_hi: np.ndarray,
    window_los: dict[int, np.ndarray],
) -> dict[int, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Count and sum `values` over each query's events in (lo, hi] of the same key.

    Events are sorted once by (entity code, time rank) where a time's rank is
    the number of distinct event times at or before it: then "event <= bound"
    is an integer comparison, the composite key cannot overflow, and every
    window is a slice of the sorted events found by two binary searches. A
    window's sum is the difference of two running totals of exact fixed-point
    digits (int64, wrapping harmlessly: only differences are read), so it is
    exact, costs O(1) whatever the window's size or the queries' order, and
    rounds once at the end: a sum depends on the window's events alone, not
    on how they are split (per day online, whole offline) or ordered.

    Returns:
        For each window (keyed as `window_los`), the counts and the sums.
    """
    _, codes = np.unique(np.concatenate([event_keys, query_keys]), return_inverse=True)
    codes = codes.astype(np.int64)
    ek, qk = codes[: len(event_keys)], codes[len(event_keys) :]
    distinct_times = np.unique(event_times)
    stride = len(distinct_times) + 1
    composite = ek * stride + np.searchsorted(distinct_times, event_times, side="right")
    order = np.argsort(composite, kind="stable")
    sorted_composite = composite[order]
    running: dict[str, tuple[np.ndarray, int]] = {}
    for name, column in values.items():
        digits, lowest = _fixed_point_digits(np.asarray(column, dtype=np.float64)[order])
        totals = np.zeros((len(digits) + 1, digits.shape[1]), dtype=np.int64)
        np.cumsum(digits, axis=0, out=totals[1:])
        running[name] = (totals, lowest)
    q_order = np.argsort(
        qk * stride + np.searchsorted(distinct_times, window_hi, side="right"), kind="stable"
    )

    def count_at_or_before(bounds: np.ndarray) -> np.ndarray:
        # Searched in the queries' sorted order, each search starts near where the previous ended.
        needles = qk * stride + np.searchsorted(distinct_times, bounds, side="right")
        found = np.empty(len(needles), dtype=np.int64)
        found[q_order] = np.searchsorted(sorted_composite, needles[q_order], side="right")
        return found

    end = count_at_or_before(window_hi)
    result: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    for window, lo in window_los.items():
        start = count_at_or_before(lo)
        sums = {
            name: _digits_to_float(totals[end] - totals[start], lowest)
            for name, (totals, lowest) in running.items()
        }
        result[window] = (end - start, sums)
    return result


def evaluate_arrays(
    group: FeatureGroup,
    event_keys: np.ndarray,
    event_times: np.ndarray,
    values: dict[str, np.ndarray],
    labels: np.ndarray | None,
    query_keys: np.ndarray,
    query_times: np.ndarray,
) -> dict[str, np.ndarray]:
    """`evaluate` on plain arrays: the one implementation, which serving calls without pandas.

    Args:
        event_keys / event_times: the events' entity ids and UTC nanoseconds.
        values: the events' value columns the group's features aggregate.
        labels / query_keys / query_times: as in `evaluate`.

    Returns:
        A column per feature, in `group.feature_names` order (counts int64, others float64).
    """
    if group.uses_labels and labels is None:
        raise ValueError(f"{group.name}: a rate feature needs event labels")
    sums_of = {f.value_column: values[f.value_column] for f in group.features if f.value_column is not None}
    if labels is not None and group.uses_labels:
        sums_of["__label__"] = labels
    window_hi = query_times - group.delay_days * NS_PER_DAY
    windows = sorted({f.window_days for f in group.features})
    by_window = _window_sums(
        np.asarray(event_keys, dtype=np.int64),
        np.asarray(event_times, dtype=np.int64),
        sums_of,
        np.asarray(query_keys, dtype=np.int64),
        window_hi,
        {n: window_hi - n * NS_PER_DAY for n in windows},
    )
    out: dict[str, np.ndarray] = {}
    for f in group.features:
        counts, sums = by_window[f.window_days]
        safe = np.maximum(counts, 1)
        if f.aggregation is Aggregation.COUNT:
            out[f.name] = counts.astype(np.int64)
        elif f.aggregation is Aggregation.MEAN:
            assert f.value_column is not None
            out[f.name] = np.where(counts > 0, sums[f.value_column] / safe, 0.0)
        else:
            out[f.name] = np.where(counts > 0, sums["__label__"] / safe, 0.0)
    return {name: out[name] for name in group.feature_names}


def evaluate(
    group: FeatureGroup,
    events: pd.DataFrame,
    labels: np.ndarray | None,
    query_keys: np.ndarray,
    query_times: np.ndarray,
    schema: EventSchema = FRAUD_EVENTS,
) -> pd.DataFrame:
    """The group's features at arbitrary (entity, time) points.

    Args:
        group: the feature definitions.
        events: every event known, with the group's join key and value columns.
        labels: per-event 0/1 labels (see `reported_labels`); required when the
            group has a rate feature.
        query_keys: entity ids to evaluate at.
        query_times: UTC nanoseconds to evaluate at (window end before delay).
        schema: event column names.

    Returns:
        One row per query, a column per feature (counts int64, others float64).
    """
    values = {
        f.value_column: events[f.value_column].to_numpy(np.float64)
        for f in group.features
        if f.value_column is not None
    }
    return pd.DataFrame(
        evaluate_arrays(
            group,
            events[group.join_key].to_numpy(np.int64),
            to_ns(events[schema.event_time], schema.event_time),
            values,
            labels,
            query_keys,
            query_times,
        )
    )


def feature_table(
    group: FeatureGroup,
    events: pd.DataFrame,
    reports: pd.DataFrame | None = None,
    schema: EventSchema = FRAUD_EVENTS,
) -> pd.DataFrame:
    """The offline store's table for one feature view: values as of each event.

    One row per distinct (entity, event time): the features including every
    event at that instant. A point-in-time join at an event's own timestamp
    reads exactly the window USE_CASE.md defines.
    """
    labels = None
    if group.uses_labels:
        if reports is None:
            raise ValueError(f"{group.name}: a rate feature needs the label reports")
        labels = reported_labels(events, reports, group.delay_days, schema)
    keys = events[group.join_key].to_numpy(np.int64)
    times = to_ns(events[schema.event_time], schema.event_time)
    order = np.lexsort((keys, times))
    keys, times = keys[order], times[order]
    first = np.r_[True, (keys[1:] != keys[:-1]) | (times[1:] != times[:-1])]
    keys, times = keys[first], times[first]
    table = pd.DataFrame(
        {
            group.join_key: keys,
            FEATURE_TIMESTAMP: pd.to_datetime(times, unit="ns", utc=True),
        }
    )
    return pd.concat([table, evaluate(group, events, labels, keys, times, schema)], axis=1)
