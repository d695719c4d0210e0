"""The wire format of the two event kinds, and the checks every event passes before it is landed.

One event is one compact JSON object: ids as JSON integers, the amount as a JSON
number, timestamps as ISO 8601 text with an explicit offset. Decoding is a pure
function of the payload and the consumer's clock, and it never raises on any
bytes: a bad event becomes a :class:`Rejection` whose reason uses the words of
the batch suites (``expectations/suites.py``) where the rule is the same, so a
dead letter and a failed batch check read alike. Serving's prediction records
are read under the same rules, by :mod:`streaming.predictions`.

Decisions a producer should know:

* Unknown extra fields are ignored (tolerant reader). Every required field is
  checked, so a misspelt field still shows as missing; ignoring the rest lets a
  producer add a field before every consumer is redeployed, and nothing beyond
  the required fields is landed, so an extra field (a label, say) cannot reach
  the features. The size limit bounds what extras cost.
* The field rules (ids, amount, timestamps and their limits) are
  :mod:`streaming.contract`'s, the very code the scoring API's request schema
  runs, so an event the bus or push refuses is refused by scoring too, and
  for the same reason. In short: numbers must be JSON numbers: ``"12"`` is
  not an id and ``"12.50"`` is not an amount. Ids must be JSON integers:
  ``12.0`` is refused, because an id that went through a float has lost its
  digits above 2**53 and would silently name another transaction. ``true``
  and ``false`` are not numbers. ``-0.0`` is a negative amount. Timestamps
  are ISO 8601 text with an offset, from 1970 to ``max_future`` past the
  consumer's clock, never past pandas' ``datetime64[ns]``.
* ``NaN`` and ``Infinity`` (which Python's ``json`` reads by default) and
  overflowing literals such as ``1e999`` parse to non-finite floats and are
  refused by the field they sit in, with that field's name in the reason.
* A key repeated in one object is refused: parsers differ on which copy wins,
  so the event means different things to different readers.
* Timestamps keep microseconds, :class:`~datetime.datetime`'s resolution;
  finer digits are truncated, both when decoding and when reading a frame.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import starmap
from typing import TypeVar

import pandas as pd

from feature_repo.contract import MAX_EVENT_BYTES, MAX_FIELD_CHARS
from streaming import contract

MAX_FUTURE = contract.MAX_FUTURE
"""Default clock skew allowed between producer and consumer."""
EARLIEST = contract.EARLIEST
TIMESTAMP_DTYPE = "datetime64[ns, UTC]"

_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Transaction:
    """A card payment as it reaches the system: no label."""

    TRANSACTION_ID: int
    TX_DATETIME: datetime
    CUSTOMER_ID: int
    TERMINAL_ID: int
    TX_AMOUNT: float


@dataclass(frozen=True, slots=True)
class FraudReport:
    """A confirmed fraud, reported some days after its transaction: the label source."""

    TRANSACTION_ID: int
    REPORT_DATETIME: datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event was refused, and its payload (the first :data:`MAX_EVENT_BYTES`) for the dead letter."""

    reason: str
    raw: bytes


class _EventError(Exception):
    """Carries a rejection reason out of the nested checks; only the decoders (here, predictions) see it."""


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _EventError(f"malformed JSON: duplicate key {key[:MAX_FIELD_CHARS]!r}")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _object(raw: bytes) -> dict[str, object]:
    """The payload as a JSON object, or :class:`_EventError` saying why it is none."""
    if len(raw) > MAX_EVENT_BYTES:
        raise _EventError(f"event larger than {MAX_EVENT_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _EventError(f"malformed JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise _EventError("malformed JSON: nested too deeply") from None
    except ValueError as exc:
        raise _EventError(f"malformed JSON: {exc}") from None
    if type(value) is not dict:
        raise _EventError(f"event must be a JSON object, not {_JSON_TYPES.get(type(value), 'null')}")
    return value


def _field(obj: dict[str, object], name: str, rule: Callable[[object], T]) -> T:
    value = obj.get(name)
    if value is None:
        raise _EventError(f"{name}: must not be missing")
    if type(value) is str and len(value) > MAX_FIELD_CHARS:
        raise _EventError(f"{name}: at most {MAX_FIELD_CHARS} characters")
    try:
        return rule(value)
    except contract.RuleError as exc:
        raise _EventError(f"{name}: {exc}") from None


def _not_future(name: str, moment: datetime, now: datetime, max_future: timedelta) -> datetime:
    try:
        return contract.not_future(moment, now, max_future).astimezone(UTC)
    except contract.RuleError as exc:
        raise _EventError(f"{name}: {exc}") from None


def decode_transaction(
    raw: bytes, now: datetime, max_future: timedelta = MAX_FUTURE
) -> Transaction | Rejection:
    """Read one transaction off the bus; never raises on any bytes.

    Args:
        raw: The payload as received.
        now: The consumer's clock (timezone-aware): what "future" is measured from.
        max_future: How far ahead of ``now`` a timestamp may be (producer clock skew).

    Returns:
        The transaction with its timestamp in UTC, or the first rule it breaks.
    """
    try:
        obj = _object(raw)
        return Transaction(
            TRANSACTION_ID=_field(obj, "TRANSACTION_ID", contract.identifier),
            TX_DATETIME=_not_future(
                "TX_DATETIME", _field(obj, "TX_DATETIME", contract.timestamp), now, max_future
            ),
            CUSTOMER_ID=_field(obj, "CUSTOMER_ID", contract.identifier),
            TERMINAL_ID=_field(obj, "TERMINAL_ID", contract.identifier),
            TX_AMOUNT=_field(obj, "TX_AMOUNT", contract.amount),
        )
    except _EventError as exc:
        return Rejection(str(exc), raw[:MAX_EVENT_BYTES])


def decode_report(raw: bytes, now: datetime, max_future: timedelta = MAX_FUTURE) -> FraudReport | Rejection:
    """Read one fraud report off the bus; never raises on any bytes. Arguments: see decode_transaction."""
    try:
        obj = _object(raw)
        return FraudReport(
            TRANSACTION_ID=_field(obj, "TRANSACTION_ID", contract.identifier),
            REPORT_DATETIME=_not_future(
                "REPORT_DATETIME", _field(obj, "REPORT_DATETIME", contract.timestamp), now, max_future
            ),
        )
    except _EventError as exc:
        return Rejection(str(exc), raw[:MAX_EVENT_BYTES])


def _utc_text(moment: datetime) -> str:
    if moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: the wire format needs a timezone")
    return moment.astimezone(UTC).isoformat()


def encode_transaction(tx: Transaction) -> bytes:
    """Compact JSON; raises ``ValueError`` for a naive timestamp or a non-finite amount."""
    return _ENCODER.encode(
        {
            "TRANSACTION_ID": tx.TRANSACTION_ID,
            "TX_DATETIME": _utc_text(tx.TX_DATETIME),
            "CUSTOMER_ID": tx.CUSTOMER_ID,
            "TERMINAL_ID": tx.TERMINAL_ID,
            "TX_AMOUNT": tx.TX_AMOUNT,
        }
    ).encode()


def encode_report(report: FraudReport) -> bytes:
    """Compact JSON; raises ``ValueError`` for a naive timestamp."""
    return _ENCODER.encode(
        {"TRANSACTION_ID": report.TRANSACTION_ID, "REPORT_DATETIME": _utc_text(report.REPORT_DATETIME)}
    ).encode()


def _ids(values: pd.Series) -> list[int]:
    return values.astype("int64").tolist()


def _datetimes(values: pd.Series) -> list[datetime]:
    """Python datetimes in UTC, truncated to microseconds; a naive column raises rather than guess a zone."""
    return list(pd.DatetimeIndex(values).tz_convert(UTC).floor("us").to_pydatetime())


def transactions_from_frame(frame: pd.DataFrame) -> Iterator[Transaction]:
    """The events of a typed frame (as ``SimulatedData.events()``), for producers and replay.

    The columns are converted to Python values whole, then zipped: per-row
    access to a frame would cost more than the encoding it feeds.
    """
    return starmap(
        Transaction,
        zip(
            _ids(frame["TRANSACTION_ID"]),
            _datetimes(frame["TX_DATETIME"]),
            _ids(frame["CUSTOMER_ID"]),
            _ids(frame["TERMINAL_ID"]),
            frame["TX_AMOUNT"].astype("float64").tolist(),
            strict=True,
        ),
    )


def reports_from_frame(frame: pd.DataFrame) -> Iterator[FraudReport]:
    """The reports of a typed frame (as ``SimulatedData.fraud_reports``), for producers and replay."""
    return starmap(
        FraudReport,
        zip(_ids(frame["TRANSACTION_ID"]), _datetimes(frame["REPORT_DATETIME"]), strict=True),
    )


def transactions_to_frame(events: Sequence[Transaction]) -> pd.DataFrame:
    """Decoded transactions for landing, typed as ``assets.raw.typed_transactions``."""
    return pd.DataFrame(
        {
            "TRANSACTION_ID": [e.TRANSACTION_ID for e in events],
            "TX_DATETIME": [e.TX_DATETIME for e in events],
            "CUSTOMER_ID": [e.CUSTOMER_ID for e in events],
            "TERMINAL_ID": [e.TERMINAL_ID for e in events],
            "TX_AMOUNT": [e.TX_AMOUNT for e in events],
        }
    ).astype(
        {
            "TRANSACTION_ID": "int64",
            "TX_DATETIME": TIMESTAMP_DTYPE,
            "CUSTOMER_ID": "int64",
            "TERMINAL_ID": "int64",
            "TX_AMOUNT": "float64",
        }
    )


def reports_to_frame(reports: Sequence[FraudReport]) -> pd.DataFrame:
    """Decoded reports for landing, typed as ``assets.raw.typed_reports``."""
    return pd.DataFrame(
        {
            "TRANSACTION_ID": [r.TRANSACTION_ID for r in reports],
            "REPORT_DATETIME": [r.REPORT_DATETIME for r in reports],
        }
    ).astype({"TRANSACTION_ID": "int64", "REPORT_DATETIME": TIMESTAMP_DTYPE})


def dead_letter(rejection: Rejection, source_topic: str, position: str, consumer: str, at: datetime) -> bytes:
    """The dead-letter record of a refused event: JSON, enough to find, read and replay it.

    The payload is kept as text when it is UTF-8, so an operator reads it as
    sent; otherwise as base64, so no byte is lost. ``payload_encoding`` says which.

    Args:
        rejection: What :func:`decode_transaction` or :func:`decode_report` returned.
        source_topic: The stream the event was read from.
        position: Where in that stream (Kafka ``partition:offset``, Redis entry id).
        consumer: Which consumer refused it.
        at: When it was refused (timezone-aware).
    """
    try:
        payload, encoding = rejection.raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(rejection.raw).decode("ascii"), "base64"
    record = {
        "reason": rejection.reason,
        "topic": source_topic,
        "position": position,
        "consumer": consumer,
        "at": _utc_text(at),
        "payload": payload,
        "payload_encoding": encoding,
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
