"""On-demand features: computed from the request itself, by training and serving alike."""

from __future__ import annotations

import numpy as np
import pandas as pd

NIGHT_LAST_HOUR = 6
WEEKEND_FIRST_WEEKDAY = 5
_NS_PER_HOUR = 3_600 * 10**9
_EPOCH_WEEKDAY = 3
"""1970-01-01 was a Thursday (Monday is 0)."""


def calendar_arrays(times_ns: np.ndarray) -> dict[str, np.ndarray]:
    """TX_DURING_WEEKEND and TX_DURING_NIGHT of UTC nanosecond times: the one implementation.

    Integer arithmetic on the epoch, so serving needs no pandas per request.
    """
    hours = np.asarray(times_ns, dtype=np.int64) // _NS_PER_HOUR
    weekday = (hours // 24 + _EPOCH_WEEKDAY) % 7
    return {
        "TX_DURING_WEEKEND": (weekday >= WEEKEND_FIRST_WEEKDAY).astype(np.int64),
        "TX_DURING_NIGHT": (hours % 24 <= NIGHT_LAST_HOUR).astype(np.int64),
    }


def calendar_features(timestamps: pd.Series) -> pd.DataFrame:
    """TX_DURING_WEEKEND and TX_DURING_NIGHT of each transaction time (UTC).

    Args:
        timestamps: transaction times; tz-aware, or epoch seconds as Feast
            passes a UnixTimestamp request field.

    Returns:
        The two 0/1 int64 columns, indexed like `timestamps`.
    """
    if pd.api.types.is_integer_dtype(timestamps):
        times = pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True, unit="s"))
    else:
        times = pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True))
    times = times.as_unit("ns")
    return pd.DataFrame(calendar_arrays(times.asi8), index=timestamps.index)
