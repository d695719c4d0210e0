"""The streaming side's configuration: which bus, which online store, where events land.

One `StreamResource` per profile (`orchestration.profiles`) is the only place
these are set; the consumer's command line, the HTTP push server, the replay
and Dagster's sensor all read it. The bus is named by a URL whose scheme picks
the backend, so switching Kafka for Redis Streams is a configuration change:

* `kafka://host:9092,host2:9092`: a Kafka cluster;
* `redis://host:6379/0`: Redis Streams;
* `kafka-local:///path/broker.json`: the local profile's in-process Kafka
  (librdkafka's mock cluster), whose address its host process writes to that
  file (`python -m streaming broker`, or `consume` when no live process
  hosts one; the broker's data lives as long as its host process).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg

from streaming.bus import TOPICS, EventBus, Topics
from streaming.bus_kafka import KafkaBus
from streaming.bus_redis import RedisStreamBus
from streaming.landing import StreamLanding
from streaming.online import EventBuffers, open_event_buffers

LOCAL_BROKER_SCHEME = "kafka-local"


class LocalBrokerMissingError(RuntimeError):
    """The local profile's bus is not running: nothing hosts the mock Kafka cluster."""


class StreamResource(dg.ConfigurableResource):
    """The event bus, the online event buffers and the stream's landing area.

    Attributes:
        bus_url: the bus (see the module docstring for the schemes).
        online_url: the online event buffers: `sqlite:///path.db` or `redis://...`.
        landing_path: the lake's stream area (`streaming.landing`).
        topic_prefix: put before every topic / stream name.
        online_prefix: put before every online key (Redis) or table name (SQLite).
        group: the consumer group of the landing consumers.
        batch_size: messages per micro-batch: the bound on data in flight.
        session_timeout_ms: how long a dead Kafka consumer keeps its partitions.
        metrics_port: the consumer's Prometheus port on 127.0.0.1; 0 turns it off.
    """

    bus_url: str
    online_url: str
    landing_path: str
    topic_prefix: str = "fraudpipe."
    online_prefix: str = ""
    group: str = "fraudpipe-landing"
    batch_size: int = 2_000
    session_timeout_ms: int = 10_000
    metrics_port: int = 9464

    def topics(self) -> Topics:
        return TOPICS.prefixed(self.topic_prefix)

    def bus(self) -> EventBus:
        url = urlparse(self.bus_url)
        if url.scheme == "redis":
            return RedisStreamBus(self.bus_url)
        if url.scheme == "kafka":
            return KafkaBus(url.netloc, session_timeout_ms=self.session_timeout_ms)
        if url.scheme == LOCAL_BROKER_SCHEME:
            return KafkaBus(self.local_broker_address(), session_timeout_ms=self.session_timeout_ms)
        raise ValueError(
            f"bus_url {self.bus_url!r}: the scheme must be kafka://, redis:// or {LOCAL_BROKER_SCHEME}://"
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
                f"no local Kafka broker is running ({file} is missing): start one with `make consume`"
            )
        return str(json.loads(file.read_text())["bootstrap_servers"])

    def publish_local_broker(self, bootstrap_servers: str) -> None:
        """Tell producers and replays in other processes where this process's mock cluster listens."""
        file = self.local_broker_file
        if file is None:
            raise ValueError(f"{self.bus_url} is not a local broker URL")
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump({"bootstrap_servers": bootstrap_servers, "pid": os.getpid()}, out)
        os.replace(tmp, file)

    def landing(self) -> StreamLanding:
        return StreamLanding(Path(self.landing_path))

    def online(self) -> EventBuffers:
        return open_event_buffers(self.online_url, prefix=self.online_prefix)
