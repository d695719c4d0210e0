"""Evaluation of window features, exact at any timestamp: the training set's and serving's one engine.

Every feature is a sum over an entity's events in a half-open time window
(lo, hi]. Sorted by (entity, time), each window is a slice found by two binary
searches, summed in one vectorised pass, so a full point-in-time feature table
costs O((events + queries) log events + window sizes) with no per-row Python,
and a single serving request costs microseconds of numpy. Times and entities
are dense-ranked first so the composite (entity, time) key is an exact int64 at
nanosecond resolution whatever the id range.
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
    window is a slice of the sorted events found by two binary searches. Sums
    add each window's own values (`np.add.reduceat`), not differences of
    running totals, so their rounding is that of the window alone.

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
    # A trailing zero lets an empty window at the very end index a valid position.
    sorted_values = {
        name: np.append(column[order].astype(np.float64), 0.0) for name, column in values.items()
    }
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
        counts = end - start
        bounds = np.column_stack([start, end]).ravel()
        sums = {
            # reduceat over [start, end) pairs; an empty pair yields one value, masked out.
            name: np.where(counts > 0, np.add.reduceat(column, bounds)[::2], 0.0)
            if len(counts)
            else np.zeros(0)
            for name, column in sorted_values.items()
        }
        result[window] = (counts, sums)
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
