"""Serving's prediction log read back off the bus: one record per answer, checked, flattened for landing.

Serving (``serving.service``, ``serving.prediction_log``) writes the records;
this module is their reader, under the rules of :mod:`streaming.events`
(extra fields ignored, types strict, non-finite numbers refused by the field
they sit in, never a raise on any bytes), so a bad record goes to the dead
letters with a reason like a bad transaction does.

Decisions a monitoring reader should know:

* A row is one answer, identified by ``REQUEST_ID``: the same transaction
  scored twice is two rows, and a record redelivered by the bus is one.
* Its day is the transaction's (``TX_DATETIME``, the time the answer was
  scored *at*), not when it was served, so a day of predictions lines up with
  the same day of transactions and, once reported, of labels.
* Every feature of :data:`~feature_repo.windows.MODEL_FEATURES` must be there
  and finite, landed under the training set's column names so drift compares
  them column by column; features beyond those are ignored.
* The shadow score is optional; without one ``SHADOW_MODEL_VERSION`` is ``""``
  and ``SHADOW_PROBABILITY`` NaN, so the table's dtypes never depend on it.
* Latencies (``features_ms``, ``model_ms``) are not landed: they are serving's
  Prometheus metrics, not the model's behaviour.
* A record is bounded by :data:`~streaming.events.MAX_EVENT_BYTES` like any
  event; one with 15 features and a shadow score takes about 1.2 KB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import numpy as np
import pandas as pd

from feature_repo.windows import MODEL_FEATURES
from streaming import contract
from streaming.events import (
    MAX_EVENT_BYTES,
    MAX_FUTURE,
    TIMESTAMP_DTYPE,
    Rejection,
    _EventError,
    _field,
    _not_future,
    _object,
)

PREDICTION_DTYPES: dict[str, str] = {
    "REQUEST_ID": "object",
    "TRANSACTION_ID": "int64",
    "TX_DATETIME": TIMESTAMP_DTYPE,
    "CUSTOMER_ID": "int64",
    "TERMINAL_ID": "int64",
    **dict.fromkeys(MODEL_FEATURES, "float64"),
    "PROBABILITY": "float64",
    "MODEL_VERSION": "object",
    "ROUTE": "object",
    "CACHED": "bool",
    "SERVED_AT": TIMESTAMP_DTYPE,
    "SHADOW_MODEL_VERSION": "object",
    "SHADOW_PROBABILITY": "float64",
}
"""The landed table's columns, in order, and their dtypes (``object`` columns hold ``str``)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Prediction:
    """One answer as monitoring sees it; ``FEATURES`` in :data:`MODEL_FEATURES` order."""

    REQUEST_ID: str
    TRANSACTION_ID: int
    TX_DATETIME: datetime
    CUSTOMER_ID: int
    TERMINAL_ID: int
    FEATURES: tuple[float, ...]
    PROBABILITY: float
    MODEL_VERSION: str
    ROUTE: str
    CACHED: bool
    SERVED_AT: datetime
    SHADOW_MODEL_VERSION: str
    SHADOW_PROBABILITY: float


def _text(value: object) -> str:
    if type(value) is not str or not value:
        raise contract.RuleError("must be a non-empty string")
    return value


def _finite(value: object) -> float:
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return float(value)
    raise contract.RuleError("must be a finite number")


def _probability(value: object) -> float:
    number = _finite(value)
    if not 0.0 <= number <= 1.0:
        raise contract.RuleError("must be between 0 and 1")
    return number


def _flag(value: object) -> bool:
    if type(value) is not bool:
        raise contract.RuleError("must be true or false")
    return value


def _json_object(value: object) -> dict[str, object]:
    if type(value) is not dict:
        raise contract.RuleError("must be a JSON object")
    return value


def _epoch_seconds(value: object) -> float:
    number = _finite(value)
    if number < 0:
        raise contract.RuleError("must not be before 1970")
    return number


def _member(obj: dict[str, object], parent: str, name: str, rule: Callable[[object], T]) -> T:
    """A field of a nested object, its reason naming the path (``features.TX_AMOUNT: ...``)."""
    try:
        return _field(obj, name, rule)
    except _EventError as exc:
        raise _EventError(f"{parent}.{exc}") from None


def _served_at(obj: dict[str, object], now: datetime, max_future: timedelta) -> datetime:
    seconds = _field(obj, "served_at", _epoch_seconds)
    # Compared as numbers first: a far-off float would overflow datetime.
    if seconds - now.timestamp() > max_future.total_seconds():
        raise _EventError(f"served_at: must not be more than {max_future.total_seconds():g} s in the future")
    return datetime.fromtimestamp(seconds, UTC)


def decode_prediction(
    raw: bytes, now: datetime, max_future: timedelta = MAX_FUTURE
) -> Prediction | Rejection:
    """Read one prediction record off the bus; never raises on any bytes.

    Args:
        raw: The payload as serving sent it.
        now: The consumer's clock (timezone-aware): what "future" is measured from.
        max_future: How far ahead of ``now`` ``timestamp`` and ``served_at`` may be (clock skew).

    Returns:
        The prediction with its times in UTC, or the first rule it breaks.
    """
    try:
        obj = _object(raw)
        request_id = _field(obj, "request_id", _text)
        transaction_id = _field(obj, "transaction_id", contract.identifier)
        moment = _not_future("timestamp", _field(obj, "timestamp", contract.timestamp), now, max_future)
        customer_id = _field(obj, "customer_id", contract.identifier)
        terminal_id = _field(obj, "terminal_id", contract.identifier)
        features = _field(obj, "features", _json_object)
        values = tuple(_member(features, "features", name, _finite) for name in MODEL_FEATURES)
        probability = _field(obj, "probability", _probability)
        model_version = _field(obj, "model_version", _text)
        route = _field(obj, "route", _text)
        cached = _field(obj, "cached", _flag)
        served_at = _served_at(obj, now, max_future)
        shadow_version, shadow_probability = "", math.nan
        if obj.get("shadow") is not None:
            shadow = _field(obj, "shadow", _json_object)
            shadow_version = _member(shadow, "shadow", "model_version", _text)
            shadow_probability = _member(shadow, "shadow", "probability", _probability)
        return Prediction(
            REQUEST_ID=request_id,
            TRANSACTION_ID=transaction_id,
            TX_DATETIME=moment,
            CUSTOMER_ID=customer_id,
            TERMINAL_ID=terminal_id,
            FEATURES=values,
            PROBABILITY=probability,
            MODEL_VERSION=model_version,
            ROUTE=route,
            CACHED=cached,
            SERVED_AT=served_at,
            SHADOW_MODEL_VERSION=shadow_version,
            SHADOW_PROBABILITY=shadow_probability,
        )
    except _EventError as exc:
        return Rejection(str(exc), raw[:MAX_EVENT_BYTES])


def predictions_to_frame(predictions: Sequence[Prediction]) -> pd.DataFrame:
    """Decoded predictions for landing: the columns and dtypes of :data:`PREDICTION_DTYPES`."""
    features = np.array([p.FEATURES for p in predictions], dtype=np.float64).reshape(-1, len(MODEL_FEATURES))
    columns: dict[str, object] = {
        "REQUEST_ID": [p.REQUEST_ID for p in predictions],
        "TRANSACTION_ID": [p.TRANSACTION_ID for p in predictions],
        "TX_DATETIME": [p.TX_DATETIME for p in predictions],
        "CUSTOMER_ID": [p.CUSTOMER_ID for p in predictions],
        "TERMINAL_ID": [p.TERMINAL_ID for p in predictions],
        **{name: features[:, i] for i, name in enumerate(MODEL_FEATURES)},
        "PROBABILITY": [p.PROBABILITY for p in predictions],
        "MODEL_VERSION": [p.MODEL_VERSION for p in predictions],
        "ROUTE": [p.ROUTE for p in predictions],
        "CACHED": [p.CACHED for p in predictions],
        "SERVED_AT": [p.SERVED_AT for p in predictions],
        "SHADOW_MODEL_VERSION": [p.SHADOW_MODEL_VERSION for p in predictions],
        "SHADOW_PROBABILITY": [p.SHADOW_PROBABILITY for p in predictions],
    }
    return pd.DataFrame(columns).astype(PREDICTION_DTYPES)
