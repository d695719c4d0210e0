"""The batch endpoint's columnar reader agrees with the `BatchRequest` schema, value for value.

`serving.columns.read_batch` may only take a body the schema accepts, must give
the values the schema gives (timestamps as the same instants), and must take
the canonical bodies clients send, or the batch endpoint silently falls back
to the slow path. Bodies it leaves to the schema are answered exactly as
FastAPI answers a declared `BatchRequest` body.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serving.api import _message, build_api
from serving.columns import CANONICAL_TIMESTAMP, TransactionColumns, read_batch, timestamps_us
from serving.schemas import BatchRequest
from serving.service import ScoringService
from tests.test_event_contract import BAD, GOOD_VALUES, _case, as_json, scoring_body


def _schema(body: bytes) -> TransactionColumns | None:
    """What the schema makes of a body, as FastAPI applies it; None where it refuses."""
    try:
        return TransactionColumns.of(BatchRequest.model_validate(json.loads(body)).transactions)
    except (ValidationError, ValueError):
        return None


def _same(fast: TransactionColumns, slow: TransactionColumns) -> None:
    for name in ("transaction_id", "customer_id", "terminal_id", "amount", "timestamp_us"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), (name, a, b)


def _body(*items: dict[str, object]) -> bytes:
    return as_json({"transactions": list(items)}).encode()


@pytest.mark.parametrize("case", list(BAD))
def test_the_reader_takes_no_value_the_contract_refuses(case: str) -> None:
    field, value = _case(BAD, case)
    assert read_batch(_body(scoring_body(), scoring_body(**{field: value}))) is None


@pytest.mark.parametrize("case", list(GOOD_VALUES))
def test_the_reader_gives_the_schemas_values(case: str) -> None:
    field, value = _case(GOOD_VALUES, case)
    body = _body(scoring_body(), scoring_body(**{field: value}))
    slow = _schema(body)
    assert slow is not None
    fast = read_batch(body)
    if fast is None:  # only a timestamp outside the canonical layout may go to the schema
        assert field == "timestamp" and "." in str(value) and len(str(value).split(".")[1]) > 12, value
        return
    _same(fast, slow)


def _text(moment: datetime, digits: int, zone_minutes: int | None) -> str:
    """`moment` written in the canonical layout: `digits` of fraction, zone Z (None) or an offset."""
    zone = UTC if zone_minutes is None else timezone(timedelta(minutes=zone_minutes))
    local = moment.astimezone(zone)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{local.microsecond:06d}"[:digits]
    if zone_minutes is None:
        return text + "Z"
    sign = "-" if zone_minutes < 0 else "+"
    return text + f"{sign}{abs(zone_minutes) // 60:02d}:{abs(zone_minutes) % 60:02d}"


MOMENTS = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2026, 1, 1), timezones=st.just(UTC))
ZONES = st.one_of(st.none(), st.integers(-(23 * 60 + 59), 23 * 60 + 59))


@settings(max_examples=300, deadline=None)
@given(moments=st.lists(st.tuples(MOMENTS, st.integers(0, 6), ZONES), min_size=1, max_size=20))
def test_canonical_timestamps_are_read_as_the_schema_reads_them(
    moments: list[tuple[datetime, int, int | None]],
) -> None:
    body = _body(*(scoring_body(timestamp=_text(*m)) for m in moments))
    slow = _schema(body)
    assert slow is not None
    fast = read_batch(body)
    assert fast is not None, "a canonical body went to the slow path"
    _same(fast, slow)


@settings(max_examples=500, deadline=None)
@given(texts=st.lists(st.from_regex(CANONICAL_TIMESTAMP, fullmatch=True), min_size=1, max_size=5))
def test_any_text_of_the_layout_is_read_or_refused_as_the_schema_does(texts: list[str]) -> None:
    """Random digits in the layout: month 13, 30 February, hour 24, offset +24:00 and the like."""
    body = _body(*(scoring_body(timestamp=text) for text in texts))
    slow, fast = _schema(body), read_batch(body)
    assert (fast is None) == (slow is None), (texts, fast, slow)
    if fast is not None and slow is not None:
        _same(fast, slow)


def test_the_decoder_fails_on_a_broken_date() -> None:
    assert timestamps_us(["2019-02-29T00:00:00Z"]) is None
    assert timestamps_us(["2020-02-29T23:59:59.5-01:30"]) == [
        (datetime(2020, 3, 1, 1, 29, 59, 500_000, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC))
        // timedelta(microseconds=1)
    ]


# --- what the reader leaves to the schema is answered as FastAPI answers it ---------------------


@pytest.fixture(scope="module")
def reference() -> Iterator[TestClient]:
    """A FastAPI route that declares a `BatchRequest` body, with the scoring app's 422 format."""
    app = FastAPI()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Any, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": _message(e), "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": errors, "error": "validation"}, status_code=422)

    @app.post("/v1/score/batch")
    async def batch(batch: BatchRequest) -> dict[str, int]:
        return {"n": len(batch.transactions)}

    with TestClient(app) as client:
        yield client


JSON = {"content-type": "application/json"}
REFUSED_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "no body": (b"", JSON),
    "no JSON": (b'{"transactions": [', JSON),
    "trailing text": (_body(scoring_body()) + b" x", JSON),
    "no content type": (_body(scoring_body()), {}),
    "text/plain": (_body(scoring_body()), {"content-type": "text/plain"}),
    "a list": (b"[]", JSON),
    "no transactions": (b'{"transactions": []}', JSON),
    "an extra field": (b'{"transactions": [], "x": 1}', JSON),
    "too many": (as_json({"transactions": [scoring_body()] * 8_001}).encode(), JSON),
    "bad items": (
        _body(scoring_body(), scoring_body(amount=-0.0), scoring_body(timestamp="2018-13-01T00:00:00Z")),
        JSON,
    ),
    "an extra item field": (_body(scoring_body(x=1)), JSON),
    "a missing item field": (_body({k: v for k, v in scoring_body().items() if k != "amount"}), JSON),
    "UTF-16": (_body(scoring_body(customer_id=-1)).decode().encode("utf-16"), JSON),
    "no Unicode (a 400)": (b"\x00" * 13, JSON),
    "bad UTF-8 (a 400)": (b"\xff", JSON),
}


@pytest.mark.parametrize("case", list(REFUSED_BODIES))
def test_a_body_left_to_the_schema_is_refused_as_fastapi_refuses_it(
    case: str, reference: TestClient, service: ScoringService
) -> None:
    body, headers = REFUSED_BODIES[case]
    expected = reference.post("/v1/score/batch", content=body, headers=headers)
    assert expected.status_code in (400, 422), expected.text
    with TestClient(build_api(service)) as client:
        answer = client.post("/v1/score/batch", content=body, headers=headers)
    assert answer.status_code == expected.status_code, answer.text
    assert answer.json() == expected.json()


def test_the_openapi_document_still_describes_the_batch_body(service: ScoringService) -> None:
    with TestClient(build_api(service)) as client:
        document = client.get("/openapi.json").json()
    body = document["paths"]["/v1/score/batch"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert body["properties"]["transactions"]["maxItems"] == 8_000
    ref = body["properties"]["transactions"]["items"]["$ref"]
    assert ref.rsplit("/", 1)[-1] in document["components"]["schemas"], ref
