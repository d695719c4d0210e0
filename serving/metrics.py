"""Prometheus metrics of one replica, on a registry of its own so `/metrics` shows only serving."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "fraudpipe_serve_request_seconds",
            "Time from a request's arrival at the replica to its answer, by endpoint and status.",
            ["endpoint", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "fraudpipe_serve_stage_seconds",
            "Time a scored batch spent reading features and in the model.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "fraudpipe_serve_batch_size",
            "Transactions scored together in one feature read and model call.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "fraudpipe_serve_cache_lookups",
            "Result cache lookups by result (hit or miss).",
            ["result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "fraudpipe_serve_errors",
            "Requests that failed, by kind (validation, too_large, stale_read, not_ready, internal).",
            ["kind"],
            registry=self.registry,
        )
        self.scores = Counter(
            "fraudpipe_serve_scores",
            "Transactions scored, by route and model version (shadow scores included).",
            ["route", "version"],
            registry=self.registry,
        )
        self.prediction_log = Counter(
            "fraudpipe_serve_prediction_log",
            "Prediction log records by outcome (sent, dropped: queue full or bus error).",
            ["outcome"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "fraudpipe_serve_model_swaps",
            "Times this replica swapped its champion or challenger.",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
