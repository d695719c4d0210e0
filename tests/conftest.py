"""Shared fixtures: one small simulated dataset run through the whole graph once."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd

# Before anything imports feast: feast.metrics sets PROMETHEUS_MULTIPROC(ESS)_DIR when it is imported
# first, and prometheus_client then keeps every value in per-process files shared by name and labels,
# so one test's serving metrics would show up in the next test's fresh ServingMetrics.
import prometheus_client.values  # noqa: F401
import pytest
import redis

from bench.ports import free_port
from orchestration.profiles import build_resources
from orchestration.runner import run_pipeline
from settings import ServingSettings, Settings, StreamSettings, load_settings
from simulator import SimulatedData, SimulatorConfig, simulate, write_dataset
from streaming.bus_kafka import KafkaBus, mock_kafka_cluster
from tests.ray_cluster import LocalRayCluster

if TYPE_CHECKING:
    from serving.service import ScoringService
    from streaming.config import StreamConfig

SLOW_MODULES = frozenset(
    {
        "test_bench_smoke",  # the benchmarks' own code paths, Ray Serve included
        "test_dagster_ui",  # a browser on the Dagster UI
        "test_feast_cli",  # Feast's CLI in a process of its own
        "test_layers",  # import-linter over copies of the packages
        "test_monitoring_scenarios",  # drift scenarios through the whole loop
        "test_pipeline",  # the Dagster graph, materialised and validated
        "test_ray_feast",
        "test_ray_serve_cluster",
        "test_serving_metrics",
        "test_serving_ray",
        "test_stream_crash",  # a consumer SIGKILLed five times (a minute)
    }
)
"""Test modules `make test-fast` leaves out whole (their tests get the `slow` marker)."""
SLOW_TESTS = frozenset(
    {
        "test_a_sink_slowed_tenfold_bounds_memory_and_loses_nothing",  # test_stream_consumer, ~30 s
        "test_kafka_consumer_killed_before_commit_loses_nothing",  # test_bus, waits out a session timeout
        "test_the_consume_command_lands_predictions_unless_told_not_to",  # test_stream_predictions, ~10 s
        "test_metrics_and_status_report_progress",  # test_stream_consumer, waits out status intervals
        "test_bad_rows_stop_the_pipeline",  # test_validation, a Dagster run
    }
)
"""Single tests (by function name) `make test-fast` leaves out."""
SLOW_FIXTURES = frozenset({"pipeline_run", "served_data", "ray_cluster"})
"""A test that uses one of these (the whole Dagster graph once a session, a Ray cluster) is `slow` too."""
SLOW_MARKERS = ("e2e", "scenario", "daemon")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` what `make test-fast` (`-m "not slow and not integration"`) leaves out: the
    modules of `SLOW_MODULES`, the tests of `SLOW_TESTS`, the users of `SLOW_FIXTURES`, and the
    e2e, scenario and daemon tests; `make test` still runs them all.

    A new test that needs more than a few seconds belongs in one of these lists, or gets
    `@pytest.mark.slow` itself.
    """
    for item in items:
        module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
        if (
            module in SLOW_MODULES
            or getattr(item, "originalname", item.name) in SLOW_TESTS
            or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            or any(item.get_closest_marker(name) for name in SLOW_MARKERS)
        ):
            item.add_marker(pytest.mark.slow)


SMALL = SimulatorConfig(
    n_customers=300,
    n_terminals=600,
    n_days=140,
    n_compromised_terminals_per_day=1,
    n_compromised_customers_per_day=1,
    seed=7,
)
"""Big enough for the handbook split (train 07-25, test to 08-14) to hold frauds."""

FAST_MODEL = {"ops": {"fraud_model": {"config": {"n_folds": 2, "max_depth": [3], "learning_rate": [0.3]}}}}


@dataclass
class PipelineRun:
    data: SimulatedData
    data_dir: Path
    resources: dict[str, Any]
    results: dict[str, dg.ExecuteInProcessResult]


def local_settings(data_dir: Path, **fields: Any) -> Settings:
    """The local profile over `data_dir`, whatever this machine's environment says.

    Serve's REST API is looked for on a port nothing listens on unless a test names one: the
    `deployment` asset of a test's pipeline must never reconfigure a Serve that runs beside it.
    """
    fields.setdefault("serving", ServingSettings(ray_dashboard_port=free_port()))
    return load_settings(profile="local", data_dir=data_dir, **fields)


def serving_on_free_ports(served: ServedData, kafka_bootstrap: str, **serving: Any) -> Settings:
    """The local profile over `served`, its Serve ports free ones, its predictions topic on the mock
    Kafka cluster: what a test that starts Ray Serve on this machine runs with."""
    stream = served.resources["stream"]
    stream.publish_local_broker(kafka_bootstrap)
    KafkaBus(kafka_bootstrap).ensure_topics([stream.topics().predictions])
    ports = {name: free_port() for name in ("port", "ray_dashboard_port", "ray_metrics_port")}
    return local_settings(served.data_dir, serving=ServingSettings(**ports, **serving))


@pytest.fixture(scope="session")
def small_data() -> SimulatedData:
    return simulate(SMALL)


@pytest.fixture(scope="session")
def pipeline_run(
    small_data: SimulatedData, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PipelineRun]:
    """The local profile's whole graph, materialised once for the session."""
    data_dir = tmp_path_factory.mktemp("local")
    write_dataset(small_data, data_dir / "source")
    resources = build_resources(local_settings(data_dir))
    with dg.instance_for_test() as instance:
        results = run_pipeline(resources, instance, FAST_MODEL)
        yield PipelineRun(small_data, data_dir, resources, results)


@dataclass
class ServedData:
    """A copy of the session's pipeline output for serving: registry, lake, and a filled online store."""

    data: SimulatedData
    data_dir: Path
    resources: dict[str, Any]


@pytest.fixture(scope="session")
def served_data(pipeline_run: PipelineRun, tmp_path_factory: pytest.TempPathFactory) -> ServedData:
    """The registry (a champion) and training set of `pipeline_run`, copied so serving tests
    may register and promote models, and online event buffers holding every event and report."""
    from feature_repo.online import TRANSACTION_COLUMNS

    data_dir = tmp_path_factory.mktemp("served")
    for part in ("mlflow", "lake"):
        shutil.copytree(pipeline_run.data_dir / part, data_dir / part)
    resources = build_resources(local_settings(data_dir))
    with resources["stream"].online() as online:
        online.add_transactions(pipeline_run.data.events()[list(TRANSACTION_COLUMNS)])
        online.add_reports(pipeline_run.data.fraud_reports)
    return ServedData(pipeline_run.data, data_dir, resources)


def needs_tool(found: bool, what: str) -> pytest.MarkDecorator:
    """Skip where `what` is missing, but not under CI=true: there the test runs and fails on it."""
    return pytest.mark.skipif(
        not found and os.environ.get("CI") != "true",
        reason=f"{what} is not installed (CI=true fails instead)",
    )


def score_body(row: pd.Series, **overrides: Any) -> dict[str, Any]:
    """A `/v1/score` body from a transaction row, with fields replaced by `overrides`."""
    body = {
        "transaction_id": int(row["TRANSACTION_ID"]),
        "customer_id": int(row["CUSTOMER_ID"]),
        "terminal_id": int(row["TERMINAL_ID"]),
        "amount": float(row["TX_AMOUNT"]),
        "timestamp": pd.Timestamp(row["TX_DATETIME"]).isoformat(),
    }
    return {**body, **overrides}


def register_variant(served: ServedData, training_set: pd.DataFrame) -> str:
    """A second, different model version in the registry: the challenger."""
    import xgboost as xgb

    from feature_repo.windows import MODEL_FEATURES
    from modeling import registry

    mlflow = served.resources["mlflow"]
    experiment = mlflow.activate()
    features = training_set[list(MODEL_FEATURES)]
    model = xgb.XGBClassifier(n_estimators=5, max_depth=2, random_state=1).fit(
        features, training_set["TX_FRAUD"]
    )
    return registry.register_model(model, features.head(20), mlflow.model_name, experiment, {}, {}, {})


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """librdkafka's mock Kafka cluster, hosted by the test session; other processes may connect."""
    with mock_kafka_cluster() as servers:
        yield servers


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalRayCluster]:
    """A head and a worker raylet on this machine (tests/ray_cluster.py), shared by the test_ray_* modules.

    Under /tmp: Ray's socket paths must stay short. Both nodes get 2 logical
    CPUs and a custom resource naming them (`node_head`, `node_worker`), so a
    test can tell where its work ran.
    """
    cluster = LocalRayCluster(Path(tempfile.mkdtemp(prefix="raycluster-", dir="/tmp")))
    try:
        cluster.start_head(num_cpus=2, resources={"node_head": 1})
        cluster.add_worker("worker", num_cpus=2, resources={"node_worker": 1})
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def namespace() -> Iterator[str]:
    """A unique prefix for topics and Redis keys; the Redis keys under it are deleted afterwards."""
    prefix = f"test{uuid.uuid4().hex[:10]}."
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def stream_settings(
    backend: str, root: Path, namespace: str, kafka_bootstrap: str, **fields: Any
) -> Settings:
    """Settings whose stream is in its own namespace: Kafka (mock cluster) with SQLite online buffers,
    or Redis Streams with Redis online buffers, so both production pairings are exercised.

    `fields` replace `StreamSettings` fields. A child process gets the same settings from
    `settings.to_env()`.
    """
    if backend == "kafka":
        bus_url, online_url, online_prefix = (
            f"kafka://{kafka_bootstrap}",
            f"sqlite:///{root / 'online.db'}",
            "",
        )
    else:
        bus_url, online_url, online_prefix = REDIS_URL, REDIS_URL, namespace
    stream = {
        "topic_prefix": namespace,
        "online_prefix": online_prefix,
        "group": "landing",
        "session_timeout_ms": 6_000,
        "metrics_port": 0,
        **fields,
    }
    return local_settings(root, bus_url=bus_url, online_url=online_url, stream=StreamSettings(**stream))


def stream_resource(
    backend: str, root: Path, namespace: str, kafka_bootstrap: str, **fields: Any
) -> StreamConfig:
    """The `StreamConfig` of `stream_settings`: its landing area under `root/stream/landing`."""
    from streaming.config import StreamConfig

    return StreamConfig.from_settings(stream_settings(backend, root, namespace, kafka_bootstrap, **fields))


BACKENDS = ["kafka", pytest.param("redis", marks=pytest.mark.integration)]


def read_dead_letters(stream: StreamConfig, expected: int) -> list[dict[str, Any]]:
    """The dead-letter topic's records, once `expected` arrived (or after 20 s)."""
    consumer = stream.bus().consumer(stream.topics().dead_letters, "inspect", "inspector")
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while len(records) < expected and time.monotonic() < deadline:
        records += [json.loads(m.value) for m in consumer.poll(100, 0.5)]
    consumer.close()
    return records


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ScoringService]:
    """A scoring service over empty SQLite stores and no model: the HTTP contract without a champion."""
    from feature_repo.online import open_event_buffers
    from modeling.registry import ModelRegistry
    from serving.metrics import ServingMetrics
    from serving.model import ModelStore
    from serving.service import ScoringService as Service

    registry = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", "fraud_model")
    service = Service(
        open_event_buffers(f"sqlite:///{tmp_path / 'online.db'}"), ModelStore(registry), ServingMetrics()
    )
    yield service
    service.close()
