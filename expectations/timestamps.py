"""Lenient timestamp parsing for raw data, shared by routing and validation."""

from __future__ import annotations

import pandas as pd


def lenient_utc(values: pd.Series) -> pd.Series:
    """Parse ISO 8601 text or datetimes to UTC; naive values read as UTC, junk as NaT.

    Only for deciding where a raw row goes and what range it is in: whether a
    value was well-formed (timezone given, parseable) is the checks' call.
    """
    text = values.astype("string") if values.dtype == object else values
    return pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
