"""One event contract: push, bus and scoring refuse and accept the same values, naming the field.

Each bad value of the table is put into an otherwise good transaction and sent
through every validator: the stream decoder (what the consumer runs on the bus),
the HTTP push endpoint (the same decoder behind HTTP), the scoring request
schema (as FastAPI applies it: the parsed JSON, in Python mode) and the scoring
endpoint. Every one must refuse it with the field's name; every good value of
the second table must pass them all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from feature_repo.online import open_event_buffers
from modeling.registry import ModelRegistry
from serving.api import build_api
from serving.metrics import ServingMetrics
from serving.model import ModelStore
from serving.schemas import BatchRequest
from serving.schemas import Transaction as ScoringRequest
from serving.service import ScoringService
from streaming.bus import TOPICS, Topics
from streaming.contract import EARLIEST, LATEST
from streaming.events import Rejection, Transaction, decode_transaction
from streaming.http_push import create_app

STREAM_NAMES = {
    "transaction_id": "TRANSACTION_ID",
    "customer_id": "CUSTOMER_ID",
    "terminal_id": "TERMINAL_ID",
    "amount": "TX_AMOUNT",
    "timestamp": "TX_DATETIME",
}
"""The scoring API's name of each field, and the stream's."""
IDS = ("transaction_id", "customer_id", "terminal_id")

GOOD = {
    "transaction_id": 7,
    "customer_id": 3,
    "terminal_id": 42,
    "amount": 57.3,
    "timestamp": "2018-04-01T10:00:00+00:00",
}


def _future(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


BAD: dict[str, tuple[str, object]] = {
    **{f"{field} true": (field, True) for field in IDS},
    **{f"{field} numeric string": (field, "42") for field in IDS},
    **{f"{field} float": (field, 42.0) for field in IDS},
    "negative id": ("customer_id", -1),
    "id beyond int64": ("transaction_id", 2**63),
    "null id": ("terminal_id", None),
    "list id": ("terminal_id", [1]),
    "numeric string amount": ("amount", "57.2"),
    "bool amount": ("amount", True),
    "negative zero amount": ("amount", -0.0),
    "negative amount": ("amount", -0.5),
    "NaN amount": ("amount", math.nan),
    "Infinity amount": ("amount", math.inf),
    "-Infinity amount": ("amount", -math.inf),
    "amount at the maximum": ("amount", 1e7),
    "huge integer amount": ("amount", 10**400),
    "unix integer timestamp": ("timestamp", 1522576800),
    "unix float timestamp": ("timestamp", 1522576800.5),
    "unix timestamp as text": ("timestamp", "1522576800"),
    "bool timestamp": ("timestamp", True),
    "year 2100": ("timestamp", "2100-01-01T00:00:00+00:00"),
    "year 2263 (past datetime64[ns])": ("timestamp", "2263-01-01T00:00:00+00:00"),
    "year 9999 with offset": ("timestamp", "9999-12-31T23:59:59-23:59"),
    "year 1677 (before datetime64[ns])": ("timestamp", "1677-06-01T00:00:00+00:00"),
    "before 1970": ("timestamp", "1969-12-31T23:59:59Z"),
    "before 1970 by its offset": ("timestamp", "1970-01-01T05:00:00+06:00"),
    "naive timestamp": ("timestamp", "2018-04-01T10:00:00"),
    "date only": ("timestamp", "2018-04-01"),
    "unparseable timestamp": ("timestamp", "yesterday"),
    "oversized timestamp": ("timestamp", "2018-04-01T10:00:00." + "0" * 50 + "+00:00"),
    "ten minutes ahead": ("timestamp", None),  # filled in at run time: relative to the clock
}
"""Values every validator refuses: (field, value), the value replacing the good one."""

GOOD_VALUES: dict[str, tuple[str, object]] = {
    "id zero": ("customer_id", 0),
    "largest int64 id": ("transaction_id", 2**63 - 1),
    "integer amount": ("amount", 12),
    "zero amount": ("amount", 0),
    "float zero amount": ("amount", 0.0),
    "largest amount": ("amount", math.nextafter(1e7, 0)),
    "Z suffix": ("timestamp", "2018-04-01T10:00:00Z"),
    "other offset": ("timestamp", "2018-04-01T12:00:00+02:00"),
    "nanosecond digits (pandas' isoformat)": ("timestamp", "2018-04-01T10:00:00.123456789+00:00"),
    "the epoch": ("timestamp", "1970-01-01T00:00:00+00:00"),
    "now": ("timestamp", None),  # filled in at run time
    "four minutes ahead (clock skew)": ("timestamp", None),
}

AT_RUN_TIME = {
    "ten minutes ahead": lambda: _future(timedelta(minutes=10)),
    "now": lambda: _future(timedelta(0)),
    "four minutes ahead (clock skew)": lambda: _future(timedelta(minutes=4)),
}


def _case(table: dict[str, tuple[str, object]], case: str) -> tuple[str, object]:
    field, value = table[case]
    return field, AT_RUN_TIME[case]() if case in AT_RUN_TIME else value


def scoring_body(**overrides: object) -> dict[str, object]:
    return {**GOOD, **overrides}


def stream_event(**overrides: object) -> dict[str, object]:
    return {STREAM_NAMES[field]: value for field, value in scoring_body(**overrides).items()}


def as_json(value: object) -> str:
    """JSON as a client would send it, NaN and Infinity literals included (Python's parser reads them)."""
    return json.dumps(value)


class _Collecting:
    """A bus whose producer keeps what it was sent: the push endpoint without a broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    def producer(self) -> _Collecting:
        return self

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.sent.append((topic, value, key))

    def flush(self, timeout_s: float = 30) -> None:
        pass

    def consumer(self, topic: str, group: str, name: str) -> Any:
        raise NotImplementedError

    def ensure_topics(self, topics: object) -> None:
        pass


@pytest.fixture(scope="module")
def scoring_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """The scoring app with no model pinned: validation answers before any model is needed."""
    root: Path = tmp_path_factory.mktemp("contract")
    registry = ModelRegistry(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", "fraud_model")
    service = ScoringService(
        open_event_buffers(f"sqlite:///{root / 'online.db'}"), ModelStore(registry), ServingMetrics()
    )
    yield build_api(service)
    service.close()


@pytest.fixture(scope="module")
def scoring(scoring_app: FastAPI) -> TestClient:
    return TestClient(scoring_app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def push() -> Iterator[tuple[TestClient, _Collecting, Topics]]:
    bus = _Collecting()
    topics = TOPICS.prefixed("contract_")
    with TestClient(create_app(bus, topics)) as client:
        yield client, bus, topics


# --- every validator refuses each bad value, naming the field ---------------------------------


@pytest.mark.parametrize("case", list(BAD))
def test_the_stream_decoder_refuses_naming_the_field(case: str) -> None:
    field, value = _case(BAD, case)
    raw = as_json(stream_event(**{field: value})).encode()
    decoded = decode_transaction(raw, datetime.now(UTC))
    assert isinstance(decoded, Rejection), decoded
    assert decoded.reason.startswith(f"{STREAM_NAMES[field]}: "), decoded.reason


@pytest.mark.parametrize("case", list(BAD))
def test_the_push_endpoint_refuses_naming_the_field_and_index(
    case: str, push: tuple[TestClient, _Collecting, Topics]
) -> None:
    client, bus, _topics = push
    field, value = _case(BAD, case)
    before = len(bus.sent)
    body = f"[{as_json(stream_event())},{as_json(stream_event(**{field: value}))}]"
    response = client.post("/v1/transactions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert error["index"] == 1
    assert error["reason"].startswith(f"{STREAM_NAMES[field]}: "), error
    assert len(bus.sent) == before, "a refused batch appended something"


@pytest.mark.parametrize("case", list(BAD))
def test_the_scoring_schema_refuses_naming_the_field(case: str) -> None:
    field, value = _case(BAD, case)
    # As FastAPI validates a body: Python's json parses it, pydantic validates the result.
    parsed = json.loads(as_json(scoring_body(**{field: value})))
    with pytest.raises(ValidationError) as refused:
        ScoringRequest.model_validate(parsed)
    assert [error["loc"] for error in refused.value.errors()] == [(field,)], refused.value.errors()


@pytest.mark.parametrize("case", list(BAD))
def test_the_scoring_endpoint_refuses_naming_the_field(case: str, scoring: TestClient) -> None:
    field, value = _case(BAD, case)
    body = as_json(scoring_body(**{field: value}))
    response = scoring.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", field]], response.json()


# --- and each good value passes every one -----------------------------------------------------


@pytest.mark.parametrize("case", list(GOOD_VALUES))
def test_good_values_pass_every_validator(
    case: str, scoring: TestClient, push: tuple[TestClient, _Collecting, Topics]
) -> None:
    field, value = _case(GOOD_VALUES, case)
    event = stream_event(**{field: value})
    decoded = decode_transaction(as_json(event).encode(), datetime.now(UTC))
    assert isinstance(decoded, Transaction), decoded

    client, _bus, _topics = push
    pushed = client.post(
        "/v1/transactions", content=as_json(event), headers={"content-type": "application/json"}
    )
    assert pushed.status_code == 202, pushed.text

    body = scoring_body(**{field: value})
    request = ScoringRequest.model_validate(json.loads(as_json(body)))
    # The same value (the same instant, for a timestamp, which scoring keeps in its own offset).
    assert getattr(request, field) == getattr(decoded, STREAM_NAMES[field])
    # No model is pinned: a request that passed validation is answered 503, not 422.
    answered = scoring.post("/v1/score", content=as_json(body), headers={"content-type": "application/json"})
    assert answered.status_code == 503, answered.text


# --- a batch names the index of each bad transaction ------------------------------------------


def test_a_scoring_batch_names_the_index_and_field_of_each_bad_transaction(scoring: TestClient) -> None:
    transactions = [
        scoring_body(),
        scoring_body(amount=-0.0),
        scoring_body(),
        scoring_body(customer_id="42"),
        scoring_body(timestamp="2263-01-01T00:00:00+00:00"),
    ]
    response = scoring.post("/v1/score/batch", json={"transactions": transactions})
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [
        ["body", "transactions", 1, "amount"],
        ["body", "transactions", 3, "customer_id"],
        ["body", "transactions", 4, "timestamp"],
    ]
    with pytest.raises(ValidationError) as refused:
        BatchRequest.model_validate({"transactions": transactions})
    assert [error["loc"] for error in refused.value.errors()] == [
        ("transactions", 1, "amount"),
        ("transactions", 3, "customer_id"),
        ("transactions", 4, "timestamp"),
    ]


# --- the fixed range, and timestamps built by code --------------------------------------------


def test_latest_is_the_last_microsecond_of_datetime64_ns() -> None:
    assert pd.Timestamp(LATEST) == pd.Timestamp.max.tz_localize("UTC").floor("us")
    assert datetime(1970, 1, 1, tzinfo=UTC) == EARLIEST


def test_no_skew_lets_a_timestamp_past_datetime64_ns_through() -> None:
    """A caller may allow centuries of skew; pandas' range still bounds what lands."""
    raw = as_json(stream_event(timestamp="2263-01-01T00:00:00+00:00")).encode()
    refused = decode_transaction(raw, datetime.now(UTC), max_future=timedelta(days=365 * 300))
    assert isinstance(refused, Rejection)
    assert refused.reason == f"TX_DATETIME: must not be after {LATEST.isoformat()}, where datetime64[ns] ends"


def test_a_datetime_built_by_code_is_held_to_the_fixed_range_not_the_clock() -> None:
    """JSON never yields a datetime object: one comes from code, such as the readiness probe (2100)."""
    ids = {"transaction_id": 1, "customer_id": 2, "terminal_id": 3, "amount": 0.0}
    assert ScoringRequest(**ids, timestamp=datetime(2100, 1, 1, tzinfo=UTC)).timestamp.year == 2100
    for bad, reason in [
        (datetime(2100, 1, 1), "timestamp must carry a timezone"),
        (datetime(1969, 12, 31, tzinfo=UTC), "must not be before 1970"),
        (datetime(2263, 1, 1, tzinfo=UTC), "where datetime64[ns] ends"),
    ]:
        with pytest.raises(ValidationError) as refused:
            ScoringRequest(**ids, timestamp=bad)
        (error,) = refused.value.errors()
        assert error["loc"] == ("timestamp",) and reason in error["msg"], error


def test_scoring_refusals_read_as_the_stream_refusals() -> None:
    """The same rule, the same words: the scoring error's message is the stream reason after the field."""
    for field, value in [("customer_id", "42"), ("amount", -0.0), ("timestamp", "2018-04-01T10:00:00")]:
        decoded = decode_transaction(as_json(stream_event(**{field: value})).encode(), datetime.now(UTC))
        assert isinstance(decoded, Rejection)
        with pytest.raises(ValidationError) as refused:
            ScoringRequest.model_validate(json.loads(as_json(scoring_body(**{field: value}))))
        (error,) = refused.value.errors()
        assert (error["type"], f"{STREAM_NAMES[field]}: {error['msg']}") == ("event_contract", decoded.reason)
