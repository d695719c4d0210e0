"""API keys on scoring and push: 401 without an accepted key, probes open, the key never in a log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.api import build_api
from serving.service import ScoringService
from settings import ApiKeys, AuthSettings, SettingsError, load_settings
from streaming.bus import Topics
from streaming.bus_kafka import KafkaBus
from streaming.http_push import create_app

KEY = "k" * 20 + "-current"
OLD_KEY = "o" * 20 + "-retiring"
TRANSACTION = (
    b'{"TRANSACTION_ID": 1, "TX_DATETIME": "2018-05-01T00:00:00Z", "CUSTOMER_ID": 2, '
    b'"TERMINAL_ID": 3, "TX_AMOUNT": 1.5}'
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api_keys"
    path.write_text(f"# rotated 2026-12-01\n{KEY}\n\n  {OLD_KEY}  \n")
    return path


def test_keys_come_from_a_file_or_the_environment(keys_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDPIPE_AUTH__API_KEYS_FILE", str(keys_file))
    from_file = load_settings().auth.keys()
    assert from_file is not None and len(from_file) == 2
    monkeypatch.delenv("FRAUDPIPE_AUTH__API_KEYS_FILE")
    monkeypatch.setenv("FRAUDPIPE_AUTH__API_KEYS", f"{KEY}, {OLD_KEY}")
    from_env = load_settings().auth.keys()
    assert from_env is not None and len(from_env) == 2
    assert KEY not in repr(load_settings())
    monkeypatch.delenv("FRAUDPIPE_AUTH__API_KEYS")
    assert load_settings().auth.keys() is None


def test_bad_key_sources_are_refused_without_showing_a_key(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text(f"{KEY}\nhunter2\n")
    with pytest.raises(ValueError, match=r"line 2: keys need at least 16 characters") as refused:
        AuthSettings(api_keys_file=short).keys()
    assert "hunter2" not in str(refused.value)
    with pytest.raises(ValueError, match="cannot read the API keys file"):
        AuthSettings(api_keys_file=tmp_path / "missing").keys()
    empty = tmp_path / "empty"
    empty.write_text("# none yet\n")
    with pytest.raises(ValueError, match="holds no API key"):
        AuthSettings(api_keys_file=empty).keys()
    with pytest.raises(SettingsError, match="not both"):
        load_settings(auth={"api_keys_file": str(empty), "api_keys": KEY})


def test_only_a_whole_accepted_key_with_the_bearer_scheme_passes() -> None:
    keys = ApiKeys([KEY, OLD_KEY])
    assert keys.accepts(f"Bearer {KEY}".encode())
    assert keys.accepts(f"bearer {OLD_KEY}".encode())
    for refused in (
        None,
        b"",
        KEY.encode(),
        f"Basic {KEY}".encode(),
        f"Bearer {KEY[:-1]}".encode(),
        f"Bearer {KEY}x".encode(),
        b"Bearer ",
    ):
        assert not keys.accepts(refused), refused


def test_scoring_needs_a_key_and_probes_do_not(
    service: ScoringService, keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = AuthSettings(api_keys_file=keys_file).keys()
    with caplog.at_level(logging.DEBUG), TestClient(build_api(service, api_keys=keys)) as client:
        for path in ("/v1/score", "/v1/score/batch"):
            for headers in ({}, bearer("x" * 30), {"Authorization": KEY}):
                refused = client.post(path, json={}, headers=headers)
                assert refused.status_code == 401, (path, headers)
                assert refused.json()["error"] == "unauthorized"
                assert refused.headers["www-authenticate"] == "Bearer"
        for path in ("/docs", "/openapi.json", "/metrics"):
            assert client.get(path).status_code == 401, path
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503  # no champion: not ready, but not refused
        # With either key the request reaches the app: an empty body is a validation error.
        for key in (KEY, OLD_KEY):
            assert client.post("/v1/score", json={}, headers=bearer(key)).status_code == 422
        assert client.get("/openapi.json", headers=bearer(KEY)).status_code == 200
        exposition = client.get("/metrics", headers=bearer(KEY)).text
    assert 'ray_fraudpipe_serve_errors_total{kind="unauthorized"} 9.0' in exposition
    assert KEY not in caplog.text and OLD_KEY not in caplog.text


def test_without_keys_scoring_stays_open(service: ScoringService) -> None:
    with TestClient(build_api(service)) as client:
        assert client.post("/v1/score", json={}).status_code == 422


def test_push_needs_a_key_and_appends_nothing_without_one(kafka_bootstrap: str, namespace: str) -> None:
    topics = Topics(*(f"{namespace}.{name}" for name in ("tx", "reports", "predictions", "dead")))
    bus = KafkaBus(kafka_bootstrap)
    bus.ensure_topics(topics.names())
    app = create_app(bus, topics, api_keys=ApiKeys([KEY]))
    with TestClient(app) as client:
        refused = client.post("/v1/transactions", content=TRANSACTION, headers=bearer(OLD_KEY))
        assert refused.status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.get("/healthz").status_code == 200
        accepted = client.post("/v1/transactions", content=TRANSACTION, headers=bearer(KEY))
        assert accepted.status_code == 202, accepted.text
        exposition = client.get("/metrics", headers=bearer(KEY)).text
    assert "http_push_unauthorized_total 2.0" in exposition
    assert 'http_push_events_accepted_total{topic="' + topics.transactions + '"} 1.0' in exposition
    consumer = bus.consumer(topics.transactions, "check", "check")
    landed: list[bytes] = []
    for _ in range(20):
        landed += [message.value for message in consumer.poll(100, 0.5)]
    consumer.close()
    assert len(landed) == 1  # the refused push appended nothing
