"""Clients get a reason they can act on, or an error id; never the text of an exception, which may
name a host, a path or a URL with a password."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.ports import free_port
from feature_repo.online import RedisEventBuffers
from serving.api import build_api
from serving.service import ScoringService
from settings import ServingConfig

SECRET = "redis://fraud:s3cret@10.1.2.3:6379/0"
BODY = {
    "transaction_id": 1,
    "customer_id": 2,
    "terminal_id": 3,
    "amount": 1.5,
    "timestamp": "2018-05-01T00:00:00Z",
}


class _Unreachable:
    """An online store whose every read fails the way a client library's would: naming its URL."""

    def features(self, _frame: Any) -> Any:
        raise ConnectionError(f"Error connecting to {SECRET}")

    def close(self) -> None:
        pass


class _Loaded:
    """What the service holds once a champion is loaded, as far as these paths look at it."""

    config = ServingConfig()
    champion = None


def test_a_body_that_is_no_json_says_why(service: ScoringService) -> None:
    with TestClient(build_api(service)) as client:
        answer = client.post(
            "/v1/score", content=b'{"transaction_id": 1,', headers={"content-type": "application/json"}
        )
    assert answer.status_code == 422
    assert answer.json()["error"] == "validation"
    (error,) = answer.json()["detail"]
    assert error["type"] == "json_invalid"
    assert error["msg"].startswith("JSON decode error: Expecting"), error


def test_an_internal_error_answers_an_id_and_logs_the_detail_under_it(
    service: ScoringService, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(f"lost {SECRET}")

    monkeypatch.setattr(service, "score", broken)
    monkeypatch.setattr(service, "_serving", _Loaded())
    with (
        caplog.at_level(logging.ERROR, logger="serving.api"),
        TestClient(build_api(service), raise_server_exceptions=False) as client,
    ):
        answer = client.post("/v1/score/batch", json={"transactions": [BODY]})
    assert answer.status_code == 500
    assert answer.json()["error"] == "internal"
    assert "s3cret" not in answer.text and "10.1.2.3" not in answer.text
    error_id = answer.json()["error_id"]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None and SECRET in str(logged[0].exc_info[1])


def test_readiness_points_to_the_log_instead_of_quoting_the_store(
    service: ScoringService, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "_online", _Unreachable())
    monkeypatch.setattr(service, "_serving", _Loaded())
    with caplog.at_level(logging.ERROR, logger="serving.service"), TestClient(build_api(service)) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 503
    detail = answer.json()["detail"]
    assert detail.startswith("online store unreachable (error ") and "s3cret" not in detail
    error_id = detail.split("error ", 1)[1].split(" ", 1)[0]
    assert any(error_id in r.getMessage() and SECRET in r.exc_text for r in caplog.records if r.exc_text)


@pytest.mark.integration
def test_an_online_store_that_does_not_answer_is_a_503_never_a_cold_start_score(
    service: ScoringService, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real Redis client on a port nobody listens on: no score from missing features, a reason, a retry."""
    port = free_port()
    down = RedisEventBuffers(f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.5")
    monkeypatch.setattr(service, "_online", down)
    monkeypatch.setattr(service, "_serving", _Loaded())
    with (
        caplog.at_level(logging.WARNING, logger="serving.api"),
        TestClient(build_api(service), raise_server_exceptions=False) as client,
    ):
        for path, body in (("/v1/score", BODY), ("/v1/score/batch", {"transactions": [BODY]})):
            answer = client.post(path, json=body)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.json()["error"] == "online_unavailable"
            assert answer.json()["detail"].startswith("the online store did not answer")
            assert answer.headers["retry-after"] == str(ServingConfig().retry_after_s)
            assert str(port) not in answer.text
    warned = [r for r in caplog.records if "online store unavailable" in r.getMessage()]
    assert len(warned) == 1  # once per interval, not once per request
