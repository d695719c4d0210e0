"""Serving's metrics, one set of names for two backends.

In a Ray Serve replica (`ServingMetrics.for_ray()`) they go through Ray Serve's
metrics API: Serve tags each series with its deployment, replica and
application, and the metrics agent of every node exports all of the node's
replicas in one scrape, at `http://<node>:<ray_metrics_port>/metrics`, as
`ray_<name>` (a counter `ray_<name>_total`). Outside Ray (the single-process
baseline, the in-process scorer, tests) `ServingMetrics()` keeps them on a
prometheus_client registry of its own, under the very names Ray exports, so
dashboards, alerts and readers know one set of names; only Serve's tags are
missing there.

Either way the service calls `metrics.<name>.labels(...).inc()` or
`.observe()`, as on prometheus_client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram
from prometheus_client.parser import text_string_to_metric_families

RAY_PREFIX = "ray_"
"""What Ray's metrics agent puts before the name of every metric it exports."""
SERVE_TAGS = ("deployment", "replica", "application")
"""The tags Ray Serve adds to a metric made in a replica (`ray.serve.metrics`)."""
RAY_TAGS = (
    "Component",
    "NodeAddress",
    "SessionName",
    "Version",
    "WorkerId",
    "otel_scope_name",
    "otel_scope_schema_url",
    "otel_scope_version",
)
"""The labels Ray 2.60's metrics agent adds to every series of an application metric it
exports (checked against a real Ray by tests/test_serving_metrics.py)."""

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


@dataclass(frozen=True)
class MetricSpec:
    """One of serving's metrics: `name` is what Ray is given, `exported` what a scrape reads."""

    name: str
    kind: Literal["counter", "histogram"]
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        """The family name in an exposition, Ray's or the plain registry's."""
        return RAY_PREFIX + self.name

    def series(self, ray: bool = True) -> dict[str, set[str]]:
        """Series name -> label names, as Ray's metrics agent exports them (or, `ray=False`, the
        plain registry: no Serve or Ray tags; prometheus_client's `_created` series aside)."""
        labels = set(self.labels) | (set(SERVE_TAGS) | set(RAY_TAGS) if ray else set())
        if self.kind == "counter":
            return {f"{self.exported}_total": labels}
        return {
            f"{self.exported}_bucket": labels | {"le"},
            f"{self.exported}_count": labels,
            f"{self.exported}_sum": labels,
        }


REQUEST_SECONDS = MetricSpec(
    "fraudpipe_serve_request_seconds",
    "histogram",
    "Time from a request's arrival at the replica to its answer, by route template and status.",
    ("endpoint", "status"),
    _LATENCY_BUCKETS,
)
STAGE_SECONDS = MetricSpec(
    "fraudpipe_serve_stage_seconds",
    "histogram",
    "Time a scored batch spent reading features and in the model.",
    ("stage",),
    _LATENCY_BUCKETS,
)
BATCH_SIZE = MetricSpec(
    "fraudpipe_serve_batch_size",
    "histogram",
    "Transactions scored together in one feature read and model call.",
    buckets=_BATCH_BUCKETS,
)
CACHE = MetricSpec(
    "fraudpipe_serve_cache_lookups", "counter", "Result cache lookups by result (hit or miss).", ("result",)
)
ERRORS = MetricSpec(
    "fraudpipe_serve_errors",
    "counter",
    "Requests that failed, by kind "
    "(validation, too_large, overloaded, unauthorized, stale_read, not_ready, online_unavailable, internal).",
    ("kind",),
)
SCORES = MetricSpec(
    "fraudpipe_serve_scores",
    "counter",
    "Transactions scored, by route and model version (shadow scores included).",
    ("route", "version"),
)
PREDICTION_LOG = MetricSpec(
    "fraudpipe_serve_prediction_log",
    "counter",
    "Prediction log records by outcome (sent, dropped: queue full or bus error).",
    ("outcome",),
)
SWAPS = MetricSpec(
    "fraudpipe_serve_model_swaps", "counter", "Times this replica swapped its champion or challenger."
)

SPECS = (REQUEST_SECONDS, STAGE_SECONDS, BATCH_SIZE, CACHE, ERRORS, SCORES, PREDICTION_LOG, SWAPS)


class Counter(Protocol):
    def labels(self, *values: str, **named: str) -> Counter: ...

    def inc(self, amount: float = 1) -> None: ...


class Histogram(Protocol):
    def labels(self, *values: str, **named: str) -> Histogram: ...

    def observe(self, amount: float) -> None: ...


class _RayMetric:
    """A Ray Serve metric with prometheus_client's `labels(...)` face, children cached by label values."""

    def __init__(self, metric: Any, labels: tuple[str, ...], tags: dict[str, str] | None = None) -> None:
        self._metric = metric
        self._labels = labels
        self._tags = tags
        self._children: dict[tuple[str, ...], _RayMetric] = {}

    def labels(self, *values: str, **named: str) -> _RayMetric:
        if named:
            if values or set(named) != set(self._labels):
                raise ValueError(f"expected label values for {self._labels}, got {values} {named}")
            values = tuple(named[label] for label in self._labels)
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labels):
                raise ValueError(f"expected label values for {self._labels}, got {values}")
            tags = dict(zip(self._labels, map(str, values), strict=True))
            child = self._children[values] = _RayMetric(self._metric, (), tags)
        return child

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        if amount:  # Ray refuses 0, which prometheus_client takes as a no-op
            self._metric.inc(float(amount), self._tags)

    def observe(self, amount: float) -> None:
        self._metric.observe(float(amount), self._tags)


def _on_registry(registry: CollectorRegistry) -> Callable[[MetricSpec], Any]:
    def make(spec: MetricSpec) -> Any:
        if spec.kind == "counter":
            return PromCounter(spec.exported, spec.description, spec.labels, registry=registry)
        return PromHistogram(
            spec.exported, spec.description, spec.labels, buckets=spec.buckets, registry=registry
        )

    return make


def _on_ray(spec: MetricSpec) -> Any:
    from ray.serve import metrics

    tag_keys: Any = spec.labels  # Ray annotates them `Tuple[str]`, a tuple of one, for any tuple of names
    if spec.kind == "counter":
        return _RayMetric(metrics.Counter(spec.name, spec.description, tag_keys), spec.labels)
    histogram = metrics.Histogram(spec.name, spec.description, list(spec.buckets), tag_keys)
    return _RayMetric(histogram, spec.labels)


class ServingMetrics:
    """Serving's metrics: `ServingMetrics()` on a registry of this process, `for_ray()` in a replica."""

    def __init__(self) -> None:
        """On a prometheus_client registry of its own, so `exposition()` shows only serving."""
        self.registry: CollectorRegistry | None = CollectorRegistry(auto_describe=True)
        self.ray_metrics_port: int | None = None
        self._build(_on_registry(self.registry))

    @classmethod
    def for_ray(cls, ray_metrics_port: int | None = None) -> ServingMetrics:
        """Through Ray Serve's metrics API; to be made inside a replica, which Serve then tags.

        Args:
            ray_metrics_port: where the nodes' metrics agents export them, for the pointer
                that the replica's `/metrics` answers.
        """
        metrics = cls.__new__(cls)
        metrics.registry = None
        metrics.ray_metrics_port = ray_metrics_port
        metrics._build(_on_ray)
        return metrics

    def _build(self, make: Callable[[MetricSpec], Any]) -> None:
        self.request_seconds: Histogram = make(REQUEST_SECONDS)
        self.stage_seconds: Histogram = make(STAGE_SECONDS)
        self.batch_size: Histogram = make(BATCH_SIZE)
        self.cache: Counter = make(CACHE)
        self.errors: Counter = make(ERRORS)
        self.scores: Counter = make(SCORES)
        self.prediction_log: Counter = make(PREDICTION_LOG)
        self.swaps: Counter = make(SWAPS)

    @property
    def in_ray(self) -> bool:
        """Whether Ray's metrics agents export these (this process holds no registry of them)."""
        return self.registry is None

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format; in Ray, the metrics agents export them instead."""
        if self.registry is None:
            raise RuntimeError("Ray's metrics agents export these metrics: scrape them there")
        return generate_latest(self.registry)


def series_samples(exposition: str, series: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of `series` (e.g. `ray_fraudpipe_serve_scores_total`) in a
    Prometheus exposition: one per replica and label set in Ray's, one per label set in a registry's."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == series:
                yield sample.labels, sample.value


def ray_metrics_url(port: int, host: str = "127.0.0.1") -> str:
    """The metrics agent of a Ray node: every replica of that node in one scrape."""
    return f"http://{host}:{port}/metrics"
