"""The streaming side's configuration, resolved from the settings: which bus, online store and landing area.

The bus is named by a URL whose scheme picks the backend, so switching Kafka
for Redis Streams is a configuration change:

* `kafka://host:9092,host2:9092`: a Kafka cluster;
* `redis://host:6379/0`, or `rediss://` for TLS: Redis Streams;
* `kafka-local:///path/broker.json`: the local profile's in-process Kafka
  (librdkafka's mock cluster), whose address its host process writes to that
  file (`python -m streaming broker`, or `consume` when no live process
  hosts one; the broker's data lives as long as its host process).

How a server is reached securely is a setting, not part of the URL: the TLS and
SASL of `kafka://` (`settings.stream.KafkaSecurity`; the in-process broker
speaks plaintext only), the CA and client certificate of `rediss://`, for the
bus and the online store alike (`settings.stream.RedisTls`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from feature_repo.online import EventBuffers, open_event_buffers
from settings import Settings
from settings.stream import KafkaSecurity, RedisTls
from streaming.bus import TOPICS, EventBus, Topics
from streaming.bus_kafka import KafkaBus
from streaming.bus_redis import RedisStreamBus
from streaming.landing import StreamLanding

LOCAL_BROKER_SCHEME = "kafka-local"


class LocalBrokerMissingError(RuntimeError):
    """The local profile's bus is not running: nothing hosts the mock Kafka cluster."""


@dataclass(frozen=True)
class StreamConfig:
    """The event bus, the online event buffers and the stream's landing area of one process.

    Attributes:
        bus_url: the bus (see the module docstring for the schemes).
        online_url: the online event buffers: `sqlite:///path.db`, `redis://...` or `rediss://...`.
        landing_path: the lake's stream area (`streaming.landing`).
        topic_prefix / online_prefix / group / batch_size / session_timeout_ms /
            metrics_port / online_grace: `settings.StreamSettings`.
        kafka_security / redis_tls: `settings.StreamSettings.kafka` / `.redis`.
    """

    bus_url: str
    online_url: str
    landing_path: Path
    topic_prefix: str
    online_prefix: str
    group: str
    batch_size: int
    session_timeout_ms: int
    metrics_port: int
    online_grace: timedelta
    kafka_security: KafkaSecurity
    redis_tls: RedisTls

    @classmethod
    def from_settings(cls, settings: Settings, **changes: Any) -> StreamConfig:
        """The profile's stream configuration; `changes` replace fields (a test's namespace, say)."""
        online_url = settings.resolved_online_url()
        stream = settings.stream
        config = cls(
            bus_url=settings.resolved_bus_url(),
            online_url=online_url,
            landing_path=settings.landing_path,
            topic_prefix=stream.topic_prefix,
            online_prefix=stream.online_prefix_for(online_url),
            group=stream.group,
            batch_size=stream.batch_size,
            session_timeout_ms=stream.session_timeout_ms,
            metrics_port=stream.metrics_port,
            online_grace=timedelta(hours=stream.online_grace_hours),
            kafka_security=stream.kafka,
            redis_tls=stream.redis,
        )
        return replace(config, **changes)

    def topics(self) -> Topics:
        return TOPICS.prefixed(self.topic_prefix)

    def bus(self) -> EventBus:
        url = urlparse(self.bus_url)
        if url.scheme in ("redis", "rediss"):
            return RedisStreamBus(self.bus_url, tls=self.redis_tls)
        if url.scheme == "kafka":
            return KafkaBus(
                url.netloc, session_timeout_ms=self.session_timeout_ms, security=self.kafka_security
            )
        if url.scheme == LOCAL_BROKER_SCHEME:
            return KafkaBus(self.local_broker_address(), session_timeout_ms=self.session_timeout_ms)
        # Only the scheme is echoed: a URL may carry a password.
        raise ValueError(
            f"bus URL scheme {url.scheme!r}: expected kafka://, redis://, rediss:// or {LOCAL_BROKER_SCHEME}://"
        )

    @property
    def local_broker_file(self) -> Path | None:
        """Where the local broker's address is published; None for a real bus."""
        url = urlparse(self.bus_url)
        return Path(url.path) if url.scheme == LOCAL_BROKER_SCHEME else None

    def local_broker_address(self) -> str:
        file = self.local_broker_file
        if file is None or not file.exists():
            raise LocalBrokerMissingError(
                f"no local Kafka broker is running ({file} is missing): start one with `make broker` "
                "or `make consume`"
            )
        return str(json.loads(file.read_text())["bootstrap_servers"])

    def publish_local_broker(self, bootstrap_servers: str) -> None:
        """Tell producers and replays in other processes where this process's mock cluster listens."""
        file = self.local_broker_file
        if file is None:
            raise ValueError("the bus is not the local broker")
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump({"bootstrap_servers": bootstrap_servers, "pid": os.getpid()}, out)
        os.replace(tmp, file)

    def landing(self) -> StreamLanding:
        return StreamLanding(self.landing_path)

    def online(self) -> EventBuffers:
        return open_event_buffers(
            self.online_url, prefix=self.online_prefix, grace=self.online_grace, tls=self.redis_tls
        )
