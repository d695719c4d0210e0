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

from collections.abc import Callable
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
_DIGIT_MASK = np.int64((1 << LIMB_BITS) - 1)
_SLICE_ROWS = 1 << 15


def _fixed_point_digits(column: np.ndarray) -> tuple[np.ndarray, int]:
    """Each value's exact base-2**32 digits, as signed int64 (one column a digit).

    Digit k is worth 2**(lowest + 32 k), where `lowest` is the lowest set bit
    of any value, so the digits hold every bit of every value (integers fit
    one digit). A float64 is its 53-bit integer significand shifted: the
    digits are cut from that integer with integer shifts, exactly.

    Returns:
        The digits (values x digits) and `lowest`.
    """
    if not np.isfinite(column).all():
        raise ValueError("window features sum finite values only; got NaN or infinity")
    mantissas, exponents = np.frexp(np.abs(column))  # |value| = mantissa * 2**exponent, mantissa in [0.5, 1)
    significands = np.ldexp(mantissas, 53).astype(np.int64)
    nonzero = significands != 0
    if not nonzero.any():
        return np.zeros((len(column), 0), dtype=np.int64), 0
    lowest_bits = np.frexp((significands & -significands).astype(np.float64))[1] - 1
    lowest = int((exponents - 53 + lowest_bits)[nonzero].min())
    shifts = np.where(nonzero, exponents - 53 - lowest, 0)  # |value| = significand << shift, in 2**lowest
    digits = np.empty((len(column), -(-(int(exponents[nonzero].max()) - lowest) // LIMB_BITS)), np.int64)
    for k in range(digits.shape[1]):
        digits[:, k] = _shift(significands, shifts - k * LIMB_BITS) & _DIGIT_MASK
    digits[column < 0] *= -1
    return digits, lowest


def _shift(values: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """values * 2**bits rounded toward zero, for non-negative int64 values and per-row shifts.

    Bits shifted past the top wrap away: callers keep only the low digit of a left shift.
    """
    # One of the two shifts is 0. Plain ufuncs, not clip: a serving read makes many small calls.
    return (values << np.minimum(np.maximum(bits, 0), 63)) >> np.minimum(np.maximum(-bits, 0), 63)


def _carry(digits: np.ndarray) -> np.ndarray:
    """Carry each digit into the next, in place, so that all but the top lie in [0, 2**32)."""
    for k in range(digits.shape[1] - 1):
        carry = digits[:, k] >> LIMB_BITS
        digits[:, k] -= carry << LIMB_BITS
        digits[:, k + 1] += carry
    return digits


def _digits_to_float(digits: np.ndarray, lowest: int) -> np.ndarray:
    """The float64 nearest each exact sum (ties to even): a function of the sum alone.

    (A sum below 2**-1022, float64's subnormal range, may round twice.)

    The magnitude's top 62 bits are gathered into one int64 with a sticky bit
    for any 1 below them, so the int64 -> float64 cast, which rounds
    correctly, rounds once as if from the exact value.
    """
    if digits.shape[1] <= 1:  # integers times 2**lowest: the cast alone rounds them correctly
        whole = digits[:, 0] if digits.shape[1] else np.zeros(len(digits), dtype=np.int64)
        return np.ldexp(whole.astype(np.float64), lowest)
    zeros = np.zeros((len(digits), 2), dtype=np.int64)
    # A zero digit on top takes the carries, so every digit ends below 2**32; two below give
    # every row two digits under its top one.
    padded = np.concatenate([zeros, digits, zeros[:, :1]], axis=1)
    canonical = _carry(padded.copy())
    negative = canonical[:, -1] < 0
    if negative.any():
        canonical[negative] = _carry(-padded[negative])
    nonzero = canonical != 0
    rows = np.arange(len(canonical))
    top = np.maximum(canonical.shape[1] - 1 - np.argmax(nonzero[:, ::-1], axis=1), 2)
    d0, d1, d2 = canonical[rows, top], canonical[rows, top - 1], canonical[rows, top - 2]
    # X = d0 * 2**64 + d1 * 2**32 + d2 has 64 + width bits; X >> (width + 2) keeps the top 62.
    width = np.frexp(d0.astype(np.float64))[1].astype(np.int64)
    kept = (d0 << (62 - width)) | _shift(d1, 30 - width) | _shift(d2, -(width + 2))
    dropped = (
        (d1 & ((np.int64(1) << np.minimum(np.maximum(width - 30, 0), 32)) - 1))
        | (d2 & ((np.int64(1) << np.minimum(width + 2, 32)) - 1))
        | (np.logical_or.accumulate(nonzero, axis=1)[rows, top - 3] & (top >= 3))
    )
    rounded = (kept | (dropped != 0)).astype(np.float64)
    exponent = (top - 4) * LIMB_BITS + lowest + width + 2
    return np.ldexp(np.where(negative, -rounded, rounded), exponent)


def _time_keys(event_times: np.ndarray, n_codes: int) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """A monotone integer key of a time, and the key's stride, so that entity code * stride + key
    orders (entity, time) and "event <= bound" is an integer comparison.

    When every (entity, offset from the earliest event) fits an int64 (a serving read's few weeks
    of a few thousand entities), the offset itself, clamped to one below the first event and the
    last: no sort of the times, which with the ranks' binary searches was half a read's cost.
    Otherwise a time's rank, the number of distinct event times at or before it.
    """
    if not len(event_times):
        return lambda times: np.zeros(len(times), dtype=np.int64), 1
    origin, span = int(event_times.min()), int(event_times.max()) - int(event_times.min())
    if n_codes * (span + 1) < 2**62:
        # Plain ufuncs, not clip: a serving read makes many small calls.
        return lambda times: np.minimum(np.maximum(times - origin, -1), span), span + 1
    distinct_times = np.sort(event_times)  # np.unique hashes: several times slower here
    distinct_times = distinct_times[np.r_[True, distinct_times[1:] != distinct_times[:-1]]]
    return lambda times: np.searchsorted(distinct_times, times, side="right"), len(distinct_times) + 1


def _window_sums(
    event_keys: np.ndarray,
    event_times: np.ndarray,
    values: dict[str, np.ndarray],
    query_keys: np.ndarray,
    window_hi: np.ndarray,
    window_los: dict[int, np.ndarray],
) -> dict[int, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Count and sum `values` over each query's events in (lo, hi] of the same key.

    Events are sorted once by (entity code, time key) (`_time_keys`): then
    "event <= bound" is an integer comparison, the composite key cannot
    overflow, and every window is a slice of the sorted events found by two
    binary searches. A
    window's sum is the difference of two running totals of exact fixed-point
    digits (int64, wrapping harmlessly: only differences are read), so it is
    exact, costs O(1) whatever the window's size or the queries' order, and
    rounds once at the end: a sum depends on the window's events alone, not
    on how they are split (per day online, whole offline) or ordered.

    Returns:
        For each window (keyed as `window_los`), the counts and the sums.
    """
    keys = np.concatenate([event_keys, query_keys])
    # Any dense code per entity will do: on large inputs hashing (factorize) is several times
    # quicker than sorting (unique); on a serving read's few hundred, factorize's overhead dominates.
    if len(keys) > _SLICE_ROWS:
        codes = pd.factorize(keys)[0].astype(np.int64)
    else:
        codes = np.unique(keys, return_inverse=True)[1].astype(np.int64)
    ek, qk = codes[: len(event_keys)], codes[len(event_keys) :]
    time_key, stride = _time_keys(event_times, int(codes.max()) + 1 if len(codes) else 0)
    composite = ek * stride + time_key(event_times)
    order = np.argsort(composite, kind="stable")
    sorted_composite = composite[order]
    running: dict[str, tuple[np.ndarray, int]] = {}
    for name, column in values.items():
        digits, lowest = _fixed_point_digits(np.asarray(column, dtype=np.float64)[order])
        totals = np.zeros((len(digits) + 1, digits.shape[1]), dtype=np.int64)
        np.cumsum(digits, axis=0, out=totals[1:])
        running[name] = (totals, lowest)
    # Queries are answered in (entity, time) order, so searches and running-total reads move forward.
    q_order = np.argsort(qk * stride + time_key(window_hi), kind="stable")

    def count_at_or_before(bounds: np.ndarray) -> np.ndarray:
        # Time keys in the callers' order (often time order: quick), the slices in entity order.
        needles = qk * stride + time_key(bounds)
        return np.searchsorted(sorted_composite, needles[q_order], side="right")

    def in_query_order(sorted_values: np.ndarray) -> np.ndarray:
        out = np.empty_like(sorted_values)
        out[q_order] = sorted_values
        return out

    end = count_at_or_before(window_hi)
    starts = {window: count_at_or_before(lo) for window, lo in window_los.items()}
    sums: dict[int, dict[str, np.ndarray]] = {window: {} for window in window_los}
    for name, (totals, lowest) in running.items():
        sorted_sums = np.empty((len(starts), len(q_order)))
        # In slices, every window in one conversion: the temporaries stay in cache (one pass over
        # all rows was 2x slower) and a small read makes one round of numpy calls, not one a window.
        for at in range(0, len(q_order), _SLICE_ROWS):
            rows = slice(at, at + _SLICE_ROWS)
            upper = totals[end[rows]]
            exact = np.concatenate([upper - totals[start[rows]] for start in starts.values()])
            sorted_sums[:, rows] = _digits_to_float(exact, lowest).reshape(len(starts), -1)
        for window, window_sums in zip(starts, sorted_sums, strict=True):
            sums[window][name] = in_query_order(window_sums)
    return {window: (in_query_order(end - start), sums[window]) for window, start in starts.items()}


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
    reads exactly the window docs/use_case.md defines.
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
