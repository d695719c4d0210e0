"""The event contract's field rules: one implementation, run by the bus, HTTP push and scoring alike.

`feature_repo.contract` holds the fields and the limits; this module holds the
code that applies them to one value, and nothing else runs it: the stream
decoder (`streaming.events`, which the consumer runs on the bus and the push
endpoint runs on each pushed event) calls these functions, and the scoring
request schema (`serving.schemas`) wraps the very same functions as pydantic
validators (:data:`Identifier`, :data:`Amount`, :data:`Timestamp`). An id,
amount or timestamp one of them accepts, the others accept, and a refusal reads
the same everywhere (`"must not be negative"`), behind the field's name.

The rules are strict, because every accepted value is landed or scored as it is:

* An id is a JSON integer in [0, 2**63 - 1] (it lands as int64). ``true`` is no
  id (``bool`` subclasses ``int``, so types are compared exactly), ``"42"`` is
  text, and ``42.0`` went through a float, which has lost the digits of any id
  above 2**53 and would silently name another transaction.
* An amount is a finite JSON number in [0, MAX_AMOUNT). ``"57.2"`` is text;
  ``NaN``, ``Infinity`` and overflowing literals (``1e999``) are not finite;
  ``-0.0`` is refused as negative: it compares equal to 0 but keeps its sign
  through arithmetic (``-0.0 * x``, ``1 / -0.0``), and a strict reader refuses
  rather than rewrites what it was sent. Send ``0``.
* A timestamp is ISO 8601 text (as :meth:`datetime.fromisoformat` reads it,
  fractional digits beyond microseconds truncated) with an explicit offset, in
  [:data:`EARLIEST`, now + :data:`MAX_FUTURE`], and never past :data:`LATEST`,
  the end of pandas' ``datetime64[ns]``, where the stream lands it and serving
  reads its features. A unix number is no timestamp (its unit is a guess), nor
  is a naive time (its zone is one). The floor is checked before anything
  converts the time, so far-off years with an offset cannot overflow.

Python objects are not wire values: a :class:`~datetime.datetime` passed to
the scoring schema by code (the readiness probe reads the year 2100 on purpose)
is held to the fixed range [:data:`EARLIEST`, :data:`LATEST`] and to the rule
on time zones, but not to the clock, which is the wire's rule. JSON cannot
produce a ``datetime``, so no request gets around the clock that way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from pydantic import PlainValidator, WithJsonSchema, WrapValidator
from pydantic_core import PydanticCustomError

from feature_repo.contract import MAX_AMOUNT, MAX_FIELD_CHARS, MAX_ID

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
"""The earliest event time: the Unix epoch, the floor of the lake's and the batch suites' data."""
LATEST = EARLIEST + timedelta(microseconds=(2**63 - 1) // 1_000)
"""The last microsecond ``datetime64[ns]`` holds (2262-04-11T23:47:16.854775Z): pandas' end of time."""
MAX_FUTURE = timedelta(minutes=5)
"""Clock skew allowed between a producer (or scoring client) and the reader: how far ahead of now a
timestamp may be. The consumer and the push endpoint take theirs as an argument; scoring uses this."""

T = TypeVar("T")


class RuleError(ValueError):
    """A value breaks a field's rule; the message says which, without the field's name."""


def identifier(value: object) -> int:
    """An id: a JSON integer (never bool, text or float) in [0, MAX_ID]."""
    # type() rather than isinstance(): bool is a subclass of int, and true is no id.
    if type(value) is not int or value < 0:
        raise RuleError("must be a non-negative integer")
    if value > MAX_ID:
        raise RuleError("must fit in a signed 64-bit integer")
    return value


def amount(value: object) -> float:
    """An amount: a finite JSON number (int or float, never bool or text) in [0, MAX_AMOUNT), -0.0 refused."""
    if type(value) is float:
        if not math.isfinite(value):
            raise RuleError("must be a finite number")
        # copysign tells -0.0 apart from 0.0, which compare equal.
        if value < 0 or math.copysign(1.0, value) < 0:
            raise RuleError("must not be negative")
    elif type(value) is int:
        if value < 0:
            raise RuleError("must not be negative")
    else:
        raise RuleError("must be a finite number")
    if value >= MAX_AMOUNT:
        raise RuleError(f"must be less than {MAX_AMOUNT:.0f}")
    return float(value)


def _aware_since_epoch(at: datetime) -> datetime:
    if at.utcoffset() is None:
        raise RuleError("timestamp must carry a timezone")
    # Compared before converting: far-off years with an offset overflow astimezone().
    if at < EARLIEST:
        raise RuleError("must not be before 1970")
    return at


def timestamp(value: object) -> datetime:
    """A wire timestamp: ISO 8601 text with an offset, not before :data:`EARLIEST`; kept in its offset.

    The clock is not read here: :func:`not_future` checks the other end.
    """
    if type(value) is not str:
        raise RuleError("must be an ISO 8601 timestamp")
    if len(value) > MAX_FIELD_CHARS:
        raise RuleError(f"at most {MAX_FIELD_CHARS} characters")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RuleError("must be an ISO 8601 timestamp") from None
    return _aware_since_epoch(parsed)


def not_future(at: datetime, now: datetime, max_future: timedelta = MAX_FUTURE) -> datetime:
    """``at`` if it is at most ``max_future`` after ``now`` (timezone-aware) and within pandas' range."""
    if at - now > max_future:
        raise RuleError(f"must not be more than {max_future.total_seconds():g} s in the future")
    if at > LATEST:  # only where the caller allows a skew of centuries
        raise RuleError(f"must not be after {LATEST.isoformat()}, where datetime64[ns] ends")
    return at


def moment(value: datetime) -> datetime:
    """A timestamp given as a Python object by code, not read off the wire: see the module docstring."""
    if _aware_since_epoch(value) > LATEST:
        raise RuleError(f"must not be after {LATEST.isoformat()}, where datetime64[ns] ends")
    return value


# --- the same rules as pydantic field types, for the scoring API's request schema ----------------


def _refused(exc: RuleError) -> PydanticCustomError:
    return PydanticCustomError("event_contract", "{reason}", {"reason": str(exc)})


def _refusing(rule: Callable[[Any], T]) -> Callable[[Any], T]:
    """``rule`` as a pydantic validator: pydantic's error type, with the rule's own words as message."""

    def validate(value: Any) -> T:
        try:
            return rule(value)
        except RuleError as exc:
            raise _refused(exc) from None

    validate.__name__ = rule.__name__
    return validate


def _request_timestamp(value: Any, _pydantic_own: Any) -> datetime:
    """A wrap validator that never calls pydantic's own (lax) datetime validation: the rules alone
    decide, and datetime's serializer stays (a plain validator's warns on every datetime it writes)."""
    try:
        if isinstance(value, datetime):
            return moment(value)
        return not_future(timestamp(value), datetime.now(UTC))
    except RuleError as exc:
        raise _refused(exc) from None


Identifier = Annotated[
    int,
    PlainValidator(_refusing(identifier)),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_ID}),
]
"""An id field of a pydantic model, checked by :func:`identifier`."""

Amount = Annotated[
    float,
    PlainValidator(_refusing(amount)),
    WithJsonSchema({"type": "number", "minimum": 0, "exclusiveMaximum": MAX_AMOUNT}),
]
"""An amount field of a pydantic model, checked by :func:`amount`."""

Timestamp = Annotated[
    datetime,
    WrapValidator(_request_timestamp),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "maxLength": MAX_FIELD_CHARS,
            "description": (
                "ISO 8601 with an explicit offset, from 1970-01-01T00:00:00Z to "
                f"{MAX_FUTURE.total_seconds():g} s after the server's clock"
            ),
        }
    ),
]
"""A timestamp field of a pydantic model: text checked by :func:`timestamp` and :func:`not_future`
against the clock as it is validated; a ``datetime`` object (code's, not the wire's) by :func:`moment`."""
