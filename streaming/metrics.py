"""Prometheus metrics of the stream consumer.

Each consumer owns a `CollectorRegistry` rather than the process-global one, so
its /metrics shows the consumer's series only. Importing Feast switches
prometheus_client into its multiprocess mode (Feast sets
PROMETHEUS_MULTIPROCESS_DIR), where series of the same name and labels share
one value within a process whatever their registry: hence one consumer per
process, as `python -m streaming consume` runs it. Rates (events/s) are
`rate()` over the counters in Prometheus, not computed here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ConsumerMetrics:
    """What an operator watches: throughput, lag, dead letters, batch latency and feature freshness."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "fraudpipe_stream_events",
            "Events read off the bus, by outcome: landed, duplicate (already landed), "
            "dead_letter (refused), skipped (outside a replay's window).",
            ["topic", "outcome"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "fraudpipe_stream_batch_seconds",
            "One micro-batch from poll to commit: decode, dead letters, landing, online update.",
            ["topic"],
            buckets=BATCH_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.lag = Gauge(
            "fraudpipe_stream_lag_messages",
            "Messages the consumer group has not committed yet.",
            ["topic"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "fraudpipe_stream_in_flight_messages",
            "Messages polled and not yet committed: bounded by the batch size.",
            ["topic"],
            registry=self.registry,
        )
        self.watermark = Gauge(
            "fraudpipe_stream_watermark_seconds",
            "Latest event time applied to the online features (Unix seconds).",
            ["topic"],
            registry=self.registry,
        )
        self.freshness = Gauge(
            "fraudpipe_stream_feature_freshness_seconds",
            "Wall clock minus the latest event time applied to the online features.",
            ["topic"],
            registry=self.registry,
        )

        self.retries = Counter(
            "fraudpipe_stream_retried_batches",
            "Batches given up uncommitted and retried because something did not answer, by cause: "
            "bus, online_store, lake (disk full, I/O error).",
            ["topic", "cause"],
            registry=self.registry,
        )
        self.data_lost = Counter(
            "fraudpipe_stream_bus_data_lost",
            "Times the bus was found without what it had acknowledged (its consumer group gone).",
            ["topic"],
            registry=self.registry,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on `host:port` from a daemon thread; loopback unless configured otherwise."""
        start_http_server(port, addr=host, registry=self.registry)
