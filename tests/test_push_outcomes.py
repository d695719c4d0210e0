"""What a push answer promises when the bus fails: 503, nothing appended, now or later; 504, maybe some.

Real servers: a Redis of the test's own that is killed (nothing can be stored: 503) or
stopped with SIGSTOP (the commands went out and are stored when it resumes: 504, never
a 503), and a Kafka producer whose brokers never answer (its queue is purged, so
nothing is delivered after the client was told to resend).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from bench.redis_server import REDIS_SERVER, redis_server
from streaming.bus import TOPICS, DeliveryError
from streaming.bus_kafka import KafkaProducer
from streaming.bus_redis import RedisStreamBus
from streaming.http_push import create_app
from tests.conftest import needs_tool

BATCH = [
    {
        "TRANSACTION_ID": n,
        "TX_DATETIME": "2018-04-02T10:00:00+00:00",
        "CUSTOMER_ID": 1,
        "TERMINAL_ID": 2,
        "TX_AMOUNT": 12.5,
    }
    for n in range(1, 4)
]


def test_a_failed_kafka_flush_leaves_nothing_queued_to_be_sent_later() -> None:
    producer = KafkaProducer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    for n in range(3):
        producer.send("t", b"{}", key=str(n).encode())
    with pytest.raises(DeliveryError) as failed:
        producer.flush(0.5)
    assert failed.value.possibly_stored is False
    assert len(producer._producer) == 0  # purged: librdkafka will not deliver them after the 503


@pytest.mark.integration
@needs_tool(REDIS_SERVER is not None, "redis-server")
def test_503_means_nothing_appended_and_504_means_maybe(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis", persistent=True) as server:
        topics = TOPICS.prefixed("push.")
        app = create_app(RedisStreamBus(server.url), topics, flush_timeout_s=2)
        client = redis.Redis.from_url(server.url)
        with TestClient(app) as http:
            assert http.post("/v1/transactions", json=BATCH[:1]).status_code == 202
            server.kill()
            down = http.post("/v1/transactions", json=BATCH)
            server.start()
            assert down.status_code == 503, down.text
            assert "nothing was appended" in down.json()["detail"]
            assert down.json()["error"] == "unavailable"
            assert client.xlen(topics.transactions) == 1  # what the 202 appended, and only that

            # Connected again, then stalled: the commands go out and wait in the server's socket.
            assert http.post("/v1/transactions", json=BATCH[:1]).status_code == 202
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                stalled = http.post("/v1/transactions", json=BATCH)
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert stalled.status_code == 504, stalled.text
            assert "may be on it" in stalled.json()["detail"]
            assert stalled.json()["error"] == "unconfirmed"
        # The stalled server stored them when it resumed: the 504 did not promise otherwise.
        assert client.xlen(topics.transactions) == 2 + len(BATCH)
        client.close()
