"""On-demand features: computed from the request itself, by training and serving alike."""

from __future__ import annotations

import pandas as pd

NIGHT_LAST_HOUR = 6
WEEKEND_FIRST_WEEKDAY = 5


def calendar_features(timestamps: pd.Series) -> pd.DataFrame:
    """TX_DURING_WEEKEND and TX_DURING_NIGHT of each transaction time (UTC).

    Args:
        timestamps: transaction times; tz-aware, or epoch seconds as Feast
            passes a UnixTimestamp request field.

    Returns:
        The two 0/1 int64 columns, indexed like `timestamps`.
    """
    times = pd.to_datetime(timestamps, utc=True)
    return pd.DataFrame(
        {
            "TX_DURING_WEEKEND": (times.dt.weekday >= WEEKEND_FIRST_WEEKDAY).astype("int64"),
            "TX_DURING_NIGHT": (times.dt.hour <= NIGHT_LAST_HOUR).astype("int64"),
        },
        index=timestamps.index,
    )
