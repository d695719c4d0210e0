"""The wire format: events round-trip exactly; a bad event is refused with its reason, never a crash."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_repo.contract import MAX_EVENT_BYTES, REPORT_FIELDS, TRANSACTION_FIELDS
from simulator import SimulatedData, SimulatorConfig, simulate
from streaming.events import (
    FraudReport,
    Rejection,
    Transaction,
    dead_letter,
    decode_report,
    decode_transaction,
    encode_report,
    encode_transaction,
    reports_from_frame,
    reports_to_frame,
    transactions_from_frame,
    transactions_to_frame,
)

NOW = datetime(2018, 5, 1, tzinfo=UTC)
"""After every simulated event and report: the consumer's clock in these tests."""

GOOD_TX = {
    "TRANSACTION_ID": 7,
    "TX_DATETIME": "2018-04-01T10:00:00+00:00",
    "CUSTOMER_ID": 3,
    "TERMINAL_ID": 42,
    "TX_AMOUNT": 57.3,
}
GOOD_REPORT = {"TRANSACTION_ID": 7, "REPORT_DATETIME": "2018-04-05T08:30:00+00:00"}
DROP = object()
"""An override value meaning: leave the field out."""


def payload(base: dict[str, object], overrides: dict[str, object]) -> bytes:
    """A JSON event, as json.dumps writes it (NaN and Infinity literals included)."""
    fields = {**base, **overrides}
    return json.dumps({k: v for k, v in fields.items() if v is not DROP}).encode()


def tx_json(**overrides: object) -> bytes:
    return payload(GOOD_TX, overrides)


def report_json(**overrides: object) -> bytes:
    return payload(GOOD_REPORT, overrides)


@pytest.fixture(scope="module")
def data() -> SimulatedData:
    return simulate(SimulatorConfig(n_customers=50, n_terminals=100, n_days=10))


def test_simulated_transactions_round_trip_exactly(data: SimulatedData) -> None:
    events = data.events()
    decoded = [decode_transaction(encode_transaction(tx), NOW) for tx in transactions_from_frame(events)]
    assert not [d for d in decoded if isinstance(d, Rejection)]
    pd.testing.assert_frame_equal(
        transactions_to_frame([d for d in decoded if isinstance(d, Transaction)]), events, check_exact=True
    )


def test_simulated_reports_round_trip_to_the_microsecond(data: SimulatedData) -> None:
    """The simulator's report times carry nanoseconds; the wire carries datetime's microseconds."""
    reports = data.fraud_reports
    decoded = [decode_report(encode_report(r), NOW) for r in reports_from_frame(reports)]
    expected = reports.assign(REPORT_DATETIME=reports["REPORT_DATETIME"].dt.floor("us"))
    pd.testing.assert_frame_equal(
        reports_to_frame([d for d in decoded if isinstance(d, FraudReport)]), expected, check_exact=True
    )


def test_empty_batches_keep_their_dtypes(data: SimulatedData) -> None:
    assert transactions_to_frame([]).dtypes.equals(data.events().dtypes)
    assert reports_to_frame([]).dtypes.equals(data.fraud_reports.dtypes)


def test_encoding_is_compact_json_in_utc() -> None:
    tx = Transaction(1, datetime(2018, 4, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))), 2, 3, 10.5)
    assert encode_transaction(tx) == (
        b'{"TRANSACTION_ID":1,"TX_DATETIME":"2018-04-01T10:00:00+00:00",'
        b'"CUSTOMER_ID":2,"TERMINAL_ID":3,"TX_AMOUNT":10.5}'
    )
    report = FraudReport(1, datetime(2018, 4, 2, tzinfo=UTC))
    assert encode_report(report) == b'{"TRANSACTION_ID":1,"REPORT_DATETIME":"2018-04-02T00:00:00+00:00"}'


@pytest.mark.parametrize(
    "tx",
    [
        Transaction(1, datetime(2018, 4, 1), 2, 3, 10.5),
        Transaction(1, datetime(2018, 4, 1, tzinfo=UTC), 2, 3, math.nan),
    ],
    ids=["naive timestamp", "NaN amount"],
)
def test_encoder_refuses_what_the_decoder_would(tx: Transaction) -> None:
    with pytest.raises(ValueError):
        encode_transaction(tx)


ACCEPTED = {
    "integer amount": (tx_json(TX_AMOUNT=12), {"TX_AMOUNT": 12.0}),
    "zero amount": (tx_json(TX_AMOUNT=0), {"TX_AMOUNT": 0.0}),
    "Z suffix": (tx_json(TX_DATETIME="2018-04-01T10:00:00Z"), {}),
    "other offset, same instant": (tx_json(TX_DATETIME="2018-04-01T12:00:00+02:00"), {}),
    "unknown extra field ignored": (tx_json(TX_FRAUD=1, MERCHANT="x" * 500), {}),
    "surrounding whitespace": (b"  " + tx_json() + b"\n", {}),
    "exactly max_future ahead": (
        tx_json(TX_DATETIME="2018-05-01T00:05:00+00:00"),
        {"TX_DATETIME": datetime(2018, 5, 1, 0, 5, tzinfo=UTC)},
    ),
    "the epoch": (
        tx_json(TX_DATETIME="1970-01-01T00:00:00Z"),
        {"TX_DATETIME": datetime(1970, 1, 1, tzinfo=UTC)},
    ),
    "largest int64 id": (tx_json(TRANSACTION_ID=2**63 - 1), {"TRANSACTION_ID": 2**63 - 1}),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_valid_variants_are_accepted(case: str) -> None:
    raw, changes = ACCEPTED[case]
    expected = {
        "TRANSACTION_ID": 7,
        "TX_DATETIME": datetime(2018, 4, 1, 10, tzinfo=UTC),
        "CUSTOMER_ID": 3,
        "TERMINAL_ID": 42,
        "TX_AMOUNT": 57.3,
        **changes,
    }
    decoded = decode_transaction(raw, NOW)
    assert decoded == Transaction(**expected)
    assert isinstance(decoded, Transaction) and decoded.TX_DATETIME.tzinfo is UTC


TX_REJECTED = {
    "malformed JSON": (
        b'{"TRANSACTION_ID": 1,',
        "malformed JSON: Expecting property name enclosed in double quotes: line 1 column 22 (char 21)",
    ),
    "empty payload": (b"", "malformed JSON: Expecting value: line 1 column 1 (char 0)"),
    "not UTF-8": (b"\xff" + tx_json(), "malformed JSON: not UTF-8 (invalid start byte at byte 0)"),
    "two objects": (
        tx_json() * 2,
        f"malformed JSON: Extra data: line 1 column {len(tx_json()) + 1} (char {len(tx_json())})",
    ),
    "nested too deeply": (b"[" * 3000, "malformed JSON: nested too deeply"),
    "duplicate key": (
        tx_json()[:-1] + b',"TX_AMOUNT":-5}',
        "malformed JSON: duplicate key 'TX_AMOUNT'",
    ),
    "array": (b"[1, 2]", "event must be a JSON object, not array"),
    "string": (b'"hello"', "event must be a JSON object, not string"),
    "number": (b"12", "event must be a JSON object, not number"),
    "boolean": (b"true", "event must be a JSON object, not boolean"),
    "null": (b"null", "event must be a JSON object, not null"),
    "oversized payload": (
        tx_json(NOTE="x" * MAX_EVENT_BYTES),
        f"event larger than {MAX_EVENT_BYTES} bytes",
    ),
    "null field": (tx_json(CUSTOMER_ID=None), "CUSTOMER_ID: must not be missing"),
    "numeric string id": (
        tx_json(TRANSACTION_ID="12"),
        "TRANSACTION_ID: must be a non-negative integer",
    ),
    "float id": (tx_json(TRANSACTION_ID=12.0), "TRANSACTION_ID: must be a non-negative integer"),
    "bool id": (tx_json(CUSTOMER_ID=True), "CUSTOMER_ID: must be a non-negative integer"),
    "negative id": (tx_json(TERMINAL_ID=-1), "TERMINAL_ID: must be a non-negative integer"),
    "list id": (tx_json(TERMINAL_ID=[1]), "TERMINAL_ID: must be a non-negative integer"),
    "NaN id": (tx_json(TRANSACTION_ID=math.nan), "TRANSACTION_ID: must be a non-negative integer"),
    "id beyond int64": (
        tx_json(TRANSACTION_ID=2**63),
        "TRANSACTION_ID: must fit in a signed 64-bit integer",
    ),
    "oversized id": (tx_json(TERMINAL_ID="7" * 500), "TERMINAL_ID: at most 64 characters"),
    "numeric string amount": (tx_json(TX_AMOUNT="12.50"), "TX_AMOUNT: must be a finite number"),
    "bool amount": (tx_json(TX_AMOUNT=False), "TX_AMOUNT: must be a finite number"),
    "NaN amount": (tx_json(TX_AMOUNT=math.nan), "TX_AMOUNT: must be a finite number"),
    "Infinity amount": (tx_json(TX_AMOUNT=math.inf), "TX_AMOUNT: must be a finite number"),
    "-Infinity amount": (tx_json(TX_AMOUNT=-math.inf), "TX_AMOUNT: must be a finite number"),
    "overflowing amount": (tx_json()[:-6] + b"1e999}", "TX_AMOUNT: must be a finite number"),
    "negative amount": (tx_json(TX_AMOUNT=-12.5), "TX_AMOUNT: must not be negative"),
    "huge amount": (tx_json(TX_AMOUNT=1e7), "TX_AMOUNT: must be less than 10000000"),
    "huge integer amount": (tx_json(TX_AMOUNT=10**400), "TX_AMOUNT: must be less than 10000000"),
    "oversized timestamp": (
        tx_json(TX_DATETIME="2018-04-01T10:00:00" + "0" * 50 + "+00:00"),
        "TX_DATETIME: at most 64 characters",
    ),
    "naive timestamp": (
        tx_json(TX_DATETIME="2018-04-01T10:00:00"),
        "TX_DATETIME: timestamp must carry a timezone",
    ),
    "date only": (tx_json(TX_DATETIME="2018-04-01"), "TX_DATETIME: timestamp must carry a timezone"),
    "unparseable timestamp": (
        tx_json(TX_DATETIME="yesterday"),
        "TX_DATETIME: must be an ISO 8601 timestamp",
    ),
    "UTC word": (
        tx_json(TX_DATETIME="2018-04-01T10:00:00 UTC"),
        "TX_DATETIME: must be an ISO 8601 timestamp",
    ),
    "epoch number": (tx_json(TX_DATETIME=1522576800), "TX_DATETIME: must be an ISO 8601 timestamp"),
    "before 1970": (
        tx_json(TX_DATETIME="1969-12-31T23:59:59Z"),
        "TX_DATETIME: must not be before 1970",
    ),
    "before 1970 by its offset": (
        tx_json(TX_DATETIME="1970-01-01T05:00:00+06:00"),
        "TX_DATETIME: must not be before 1970",
    ),
    "year 1 with offset": (
        tx_json(TX_DATETIME="0001-01-01T00:00:00+01:00"),
        "TX_DATETIME: must not be before 1970",
    ),
    "far-future timestamp": (
        tx_json(TX_DATETIME="2018-05-01T00:05:01+00:00"),
        "TX_DATETIME: must not be more than 300 s in the future",
    ),
    "year 9999 with offset": (
        tx_json(TX_DATETIME="9999-12-31T23:59:59-23:59"),
        "TX_DATETIME: must not be more than 300 s in the future",
    ),
    **{
        f"missing {field}": (tx_json(**{field: DROP}), f"{field}: must not be missing")
        for field in TRANSACTION_FIELDS
    },
}


@pytest.mark.parametrize("case", sorted(TX_REJECTED))
def test_each_bad_transaction_is_refused_with_its_reason(case: str) -> None:
    raw, reason = TX_REJECTED[case]
    decoded = decode_transaction(raw, NOW)
    assert decoded == Rejection(reason, raw[:MAX_EVENT_BYTES])


REPORT_REJECTED = {
    "bool id": (report_json(TRANSACTION_ID=True), "TRANSACTION_ID: must be a non-negative integer"),
    "naive timestamp": (
        report_json(REPORT_DATETIME="2018-04-05T08:30:00"),
        "REPORT_DATETIME: timestamp must carry a timezone",
    ),
    "far-future timestamp": (
        report_json(REPORT_DATETIME="2019-01-01T00:00:00Z"),
        "REPORT_DATETIME: must not be more than 300 s in the future",
    ),
    "not an object": (b"[]", "event must be a JSON object, not array"),
    **{
        f"missing {field}": (report_json(**{field: DROP}), f"{field}: must not be missing")
        for field in REPORT_FIELDS
    },
}


@pytest.mark.parametrize("case", sorted(REPORT_REJECTED))
def test_each_bad_report_is_refused_with_its_reason(case: str) -> None:
    raw, reason = REPORT_REJECTED[case]
    decoded = decode_report(raw, NOW)
    assert decoded == Rejection(reason, raw)


def test_max_future_is_the_callers_to_set() -> None:
    raw = report_json(REPORT_DATETIME="2018-05-01T01:00:00Z")
    assert isinstance(decode_report(raw, NOW), Rejection)
    assert isinstance(decode_report(raw, NOW, max_future=timedelta(hours=2)), FraudReport)
    refused = decode_report(raw, NOW, max_future=timedelta(0))
    assert isinstance(refused, Rejection)
    assert refused.reason == "REPORT_DATETIME: must not be more than 0 s in the future"


def test_good_events_around_bad_ones_are_unaffected(data: SimulatedData) -> None:
    good = list(transactions_from_frame(data.events().head(len(TX_REJECTED))))
    bad = [raw for raw, _ in TX_REJECTED.values()]
    stream = [raw for pair in zip(map(encode_transaction, good), bad, strict=True) for raw in pair]
    decoded = [decode_transaction(raw, NOW) for raw in stream]
    assert decoded[0::2] == good
    assert all(isinstance(d, Rejection) for d in decoded[1::2])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
LATEST = NOW + timedelta(minutes=5)
DAY = timedelta(hours=23, minutes=59)
OFFSETS = st.timedeltas(min_value=-DAY, max_value=DAY)
TIMESTAMPS = st.datetimes(timezones=st.none() | st.builds(timezone, OFFSETS)).map(datetime.isoformat)
FIELD_VALUES = JSON_VALUES | TIMESTAMPS | st.integers(min_value=-1, max_value=2**64)


def assert_well_formed(decoded: object, kind: type) -> None:
    """Either a rejection with a reason, or an event whose every field meets the rules."""
    if isinstance(decoded, Rejection):
        assert decoded.reason and len(decoded.raw) <= MAX_EVENT_BYTES
        return
    assert isinstance(decoded, kind)
    for name, value in ((f.name, getattr(decoded, f.name)) for f in dataclasses.fields(decoded)):
        if isinstance(value, datetime):
            assert value.tzinfo is UTC and datetime(1970, 1, 1, tzinfo=UTC) <= value <= LATEST
        elif name == "TX_AMOUNT":
            assert type(value) is float and 0 <= value < 1e7
        else:
            assert type(value) is int and 0 <= value < 2**63


@settings(max_examples=300)
@given(st.binary(max_size=MAX_EVENT_BYTES + 100))
def test_decoding_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    assert_well_formed(decode_transaction(raw, NOW), Transaction)
    assert_well_formed(decode_report(raw, NOW), FraudReport)


@settings(max_examples=150)
@given(JSON_VALUES | st.fixed_dictionaries({f: FIELD_VALUES for f in TRANSACTION_FIELDS}))
def test_decoding_never_raises_on_arbitrary_json(value: object) -> None:
    raw = json.dumps(value).encode()
    decoded = decode_transaction(raw, NOW)
    assert_well_formed(decoded, Transaction)
    if isinstance(decoded, Transaction):
        assert decode_transaction(encode_transaction(decoded), NOW) == decoded


@settings(max_examples=100)
@given(st.fixed_dictionaries({f: FIELD_VALUES for f in REPORT_FIELDS}))
def test_report_decoding_never_raises_on_arbitrary_fields(value: dict[str, object]) -> None:
    decoded = decode_report(json.dumps(value).encode(), NOW)
    assert_well_formed(decoded, FraudReport)
    if isinstance(decoded, FraudReport):
        assert decode_report(encode_report(decoded), NOW) == decoded


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, len(tx_json()) - 1), st.binary(max_size=3)), min_size=1, max_size=3))
def test_decoding_never_raises_on_corrupted_events(edits: list[tuple[int, bytes]]) -> None:
    """Near-valid payloads reach the field rules, where random bytes mostly stop at the parser."""
    raw = tx_json()
    for at, replacement in edits:
        raw = raw[:at] + replacement + raw[at + 1 :]
    assert_well_formed(decode_transaction(raw, NOW), Transaction)


VALID_TRANSACTIONS = st.builds(
    Transaction,
    TRANSACTION_ID=st.integers(0, 2**63 - 1),
    TX_DATETIME=st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(2018, 4, 30),
        timezones=st.builds(timezone, OFFSETS),
    ),
    CUSTOMER_ID=st.integers(0, 2**63 - 1),
    TERMINAL_ID=st.integers(0, 2**63 - 1),
    TX_AMOUNT=st.floats(min_value=0, max_value=1e7, exclude_max=True),
)


@given(VALID_TRANSACTIONS)
def test_every_valid_transaction_round_trips(tx: Transaction) -> None:
    decoded = decode_transaction(encode_transaction(tx), NOW)
    assert decoded == tx
    assert isinstance(decoded, Transaction) and decoded.TX_DATETIME.tzinfo is UTC


AT = datetime(2018, 5, 1, 0, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "encoding"),
    [
        (tx_json(TX_AMOUNT=-1, NOTE="café"), "utf-8"),
        (b"\xff\xfe\x00garbage", "base64"),
        (('{"NOTE":"' + "é" * MAX_EVENT_BYTES + '"}').encode(), "base64"),
    ],
    ids=["text", "binary", "oversized, cut inside a character"],
)
def test_dead_letter_records_carry_reason_position_and_payload(raw: bytes, encoding: str) -> None:
    rejection = decode_transaction(raw, NOW)
    assert isinstance(rejection, Rejection)
    record = json.loads(dead_letter(rejection, "transactions", "0:1234", "landing-1", AT))
    assert record["reason"] == rejection.reason
    assert record["topic"] == "transactions"
    assert (record["position"], record["consumer"]) == ("0:1234", "landing-1")
    assert datetime.fromisoformat(record["at"]) == AT
    assert record["payload_encoding"] == encoding
    kept = record["payload"].encode() if encoding == "utf-8" else base64.b64decode(record["payload"])
    assert kept == raw[:MAX_EVENT_BYTES]
