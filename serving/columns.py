"""Transactions to score as columns, and a batch body read straight into them.

`/v1/score/batch` reads its body here: pydantic's Rust validator checks ids and
amounts, and the timestamps are decoded as a byte matrix with numpy. Built as
pydantic `Transaction` objects instead, a batch of 1,000 cost 4-5 ms of the
replica's GIL before its feature read began, against about 1.5 ms here (bench.serve).

The fast reader accepts only a canonical subset of what `serving.schemas.BatchRequest`
accepts (timestamps as `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+HH:MM)`) and gives the same
values; anything else, an error included, reads as None, and the caller validates
the body with the schema, whose refusals name the field and the item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

import numpy as np
import pandas as pd
import pydantic_core
from pydantic import ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict

from feature_repo.contract import MAX_AMOUNT, MAX_ID
from serving.schemas import MAX_TRANSACTIONS, Transaction
from streaming.contract import LATEST, MAX_FUTURE

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_LATEST_US = (LATEST - _EPOCH) // _MICROSECOND
_MAX_FUTURE_US = MAX_FUTURE // _MICROSECOND

CANONICAL_TIMESTAMP = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})$"
)
"""The timestamps the fast reader decodes: at most 32 ASCII characters, fixed places up to the seconds."""
_WIDTH = 32


@dataclass(frozen=True)
class TransactionColumns:
    """Transactions to score, one numpy array per field; `timestamp` in UTC microseconds since the epoch."""

    transaction_id: np.ndarray
    customer_id: np.ndarray
    terminal_id: np.ndarray
    amount: np.ndarray
    timestamp_us: np.ndarray

    def __len__(self) -> int:
        return len(self.transaction_id)

    @classmethod
    def of(cls, transactions: Sequence[Transaction]) -> TransactionColumns:
        """The columns of validated `Transaction` objects (the dynamically batched `/v1/score`)."""
        n = len(transactions)
        return cls(
            np.fromiter((t.transaction_id for t in transactions), np.int64, n),
            np.fromiter((t.customer_id for t in transactions), np.int64, n),
            np.fromiter((t.terminal_id for t in transactions), np.int64, n),
            np.fromiter((t.amount for t in transactions), np.float64, n),
            np.fromiter(((t.timestamp - _EPOCH) // _MICROSECOND for t in transactions), np.int64, n),
        )

    def frame(self) -> pd.DataFrame:
        """The online store's request frame (`feature_repo.online.TRANSACTION_COLUMNS`)."""
        return pd.DataFrame(
            {
                "TRANSACTION_ID": self.transaction_id,
                "TX_DATETIME": pd.DatetimeIndex((self.timestamp_us * 1_000).view("M8[ns]"), tz="UTC"),
                "CUSTOMER_ID": self.customer_id,
                "TERMINAL_ID": self.terminal_id,
                "TX_AMOUNT": self.amount,
            }
        )

    def isoformat(self) -> list[str]:
        """Each timestamp as ISO 8601 text in UTC, to the microsecond (`2018-04-01T10:00:00.000000+00:00`)."""
        texts = np.datetime_as_string(self.timestamp_us.view("M8[us]"), unit="us")
        return [f"{text}+00:00" for text in texts.tolist()]


_Id = Annotated[int, Field(ge=0, le=MAX_ID)]


@with_config(ConfigDict(extra="forbid", strict=True, allow_inf_nan=False))
class _Item(TypedDict):
    transaction_id: _Id
    customer_id: _Id
    terminal_id: _Id
    amount: Annotated[float, Field(ge=0, lt=MAX_AMOUNT)]
    timestamp: Annotated[str, Field(pattern=CANONICAL_TIMESTAMP)]


@with_config(ConfigDict(extra="forbid", strict=True))
class _Body(TypedDict):
    transactions: Annotated[list[_Item], Field(min_length=1, max_length=MAX_TRANSACTIONS)]


_BODY = TypeAdapter(_Body)


def read_batch(body: bytes, now: datetime | None = None) -> TransactionColumns | None:
    """A `BatchRequest` body as columns, or None where the schema must decide (see the module docstring).

    Args:
        body: the request's bytes.
        now: the clock the five-minute future rule is read against; by default the current time.
    """
    try:
        items = _BODY.validate_json(body)["transactions"]
    except (pydantic_core.ValidationError, ValueError):
        return None
    n = len(items)
    amount = np.fromiter((t["amount"] for t in items), np.float64, n)
    if np.signbit(amount).any():  # -0.0: equal to 0, refused as negative by the contract
        return None
    stamps = timestamps_us([t["timestamp"] for t in items])
    if stamps is None:
        return None
    now_us = ((now or datetime.now(UTC)) - _EPOCH) // _MICROSECOND
    if (stamps < 0).any() or (stamps > _LATEST_US).any() or (stamps - now_us > _MAX_FUTURE_US).any():
        return None
    return TransactionColumns(
        np.fromiter((t["transaction_id"] for t in items), np.int64, n),
        np.fromiter((t["customer_id"] for t in items), np.int64, n),
        np.fromiter((t["terminal_id"] for t in items), np.int64, n),
        amount,
        stamps,
    )


_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def timestamps_us(texts: list[str]) -> np.ndarray | None:
    """UTC microseconds since the epoch of texts matching `CANONICAL_TIMESTAMP`; None if one is no valid time.

    Every field sits at a fixed place up to the seconds; the fraction's length and
    the zone follow from each text's length and last character.
    """
    n = len(texts)
    chars = np.array(texts, dtype=f"S{_WIDTH}").view(np.uint8).reshape(n, _WIDTH).astype(np.int64)
    rows = np.arange(n)
    lengths = np.fromiter(map(len, texts), np.int64, n)

    def number(start: int, stop: int) -> np.ndarray:
        return (chars[:, start:stop] - ord("0")) @ (10 ** np.arange(stop - start - 1, -1, -1))

    year, month, day = number(0, 4), number(5, 7), number(8, 10)
    hour, minute, second = number(11, 13), number(14, 16), number(17, 19)
    zulu = chars[rows, lengths - 1] == ord("Z")
    zone = np.where(zulu, lengths - 1, lengths - 6)
    places = np.arange(20, 26)
    fraction = np.where(places < zone[:, None], chars[:, 20:26] - ord("0"), 0) @ (10 ** np.arange(5, -1, -1))
    zone_at = np.minimum(zone[:, None] + np.array([1, 2, 4, 5]), _WIDTH - 1)
    zone_digits = chars[rows[:, None], zone_at] - ord("0")
    zone_hours = np.where(zulu, 0, zone_digits[:, 0] * 10 + zone_digits[:, 1])
    zone_minutes = np.where(zulu, 0, zone_digits[:, 2] * 10 + zone_digits[:, 3])
    sign = np.where(chars[rows, zone] == ord("-"), -1, 1)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    valid_month = (month >= 1) & (month <= 12)
    last_day = _DAYS_IN_MONTH[np.where(valid_month, month, 0)] + ((month == 2) & leap)
    valid = (
        valid_month
        & (year >= 1)
        & (day >= 1)
        & (day <= last_day)
        & (hour <= 23)
        & (minute <= 59)
        & (second <= 59)
        & (zone_hours <= 23)
        & (zone_minutes <= 59)
    )
    if not valid.all():
        return None
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    y = year - (month <= 2)
    era = y // 400
    year_of_era = y - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    days = era * 146_097 + day_of_era - 719_468
    offset = sign * (zone_hours * 3_600 + zone_minutes * 60)
    return (days * 86_400 + hour * 3_600 + minute * 60 + second - offset) * 1_000_000 + fraction
