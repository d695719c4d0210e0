"""The prod profile runs the same graph against this machine's PostgreSQL and Redis.

Each run gets its own databases, Feast project and stream namespace, and
removes them afterwards.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from bench.ports import free_port
from feature_repo.store import FeastStore
from feature_repo.windows import FEATURE_SERVICE_NAME
from orchestration.postgres import drop_database, ensure_database
from orchestration.profiles import build_resources
from orchestration.runner import run_pipeline
from settings import PROJECT_ROOT, ServingSettings, Settings, SettingsError, StreamSettings, load_settings
from simulator import SimulatedData, write_dataset
from tests.conftest import FAST_MODEL, REDIS_URL

pytestmark = pytest.mark.integration

PG = "postgres@127.0.0.1:5432"


@pytest.fixture
def prod_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    """The prod profile over `tmp_path`, with databases, a Feast project and a stream namespace of its own."""
    run = uuid.uuid4().hex[:10]
    urls = {
        # dagster-postgres speaks psycopg2; MLflow and Feast take psycopg 3.
        "dagster_pg_url": f"postgresql+psycopg2://{PG}/fp_{run}_dagster",
        "mlflow_pg_url": f"postgresql+psycopg://{PG}/fp_{run}_mlflow",
        "feast_pg_url": f"postgresql+psycopg://{PG}/fp_{run}_feast",
    }
    # The Dagster instance's dagster.yaml reads its database URL from the environment itself.
    monkeypatch.setenv("FRAUDPIPE_DAGSTER_PG_URL", urls["dagster_pg_url"])
    namespace = f"fptest_{run}"
    settings = load_settings(
        profile="prod",
        data_dir=tmp_path,
        bus_url=REDIS_URL,
        online_url=REDIS_URL,
        feast_project=namespace,
        stream=StreamSettings(topic_prefix=f"{namespace}.", online_prefix=f"{namespace}:"),
        # No Serve answers there (not even another test's): `deployment` only records the versions.
        serving=ServingSettings(ray_dashboard_port=free_port()),
        **urls,
    )
    for url in urls.values():
        ensure_database(url)
    try:
        yield settings
    finally:
        for url in urls.values():
            drop_database(url)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _count(url: str, query: str) -> int:
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False)) as conn:
        row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0


def _secret(settings: Settings, name: str) -> str:
    value = getattr(settings, name)
    assert value is not None
    return str(value.get_secret_value())


def test_prod_profile_needs_every_server_url(tmp_path: Path) -> None:
    """The settings refuse the prod profile without its servers, naming each missing variable."""
    with pytest.raises(SettingsError) as refused:
        load_settings(
            profile="prod",
            data_dir=tmp_path,
            bus_url=REDIS_URL,
            mlflow_pg_url=f"postgresql+psycopg://{PG}/x",
            feast_pg_url=f"postgresql+psycopg://{PG}/y",
        )
    message = str(refused.value)
    assert "FRAUDPIPE_ONLINE_URL" in message and "FRAUDPIPE_DAGSTER_PG_URL" in message
    assert "FRAUDPIPE_BUS_URL" not in message and "FRAUDPIPE_MLFLOW_PG_URL" not in message


def test_prod_profile_runs_the_graph(
    prod_settings: Settings, small_data: SimulatedData, tmp_path: Path
) -> None:
    write_dataset(small_data, tmp_path / "source")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "orchestration" / "instance" / "prod" / "dagster.yaml", home / "dagster.yaml")
    resources = build_resources(prod_settings)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        results = run_pipeline(resources, instance, FAST_MODEL)
        assert all(r.success for r in results.values())

    dagster_db = _secret(prod_settings, "dagster_pg_url")
    assert _count(dagster_db, "SELECT count(*) FROM runs") == 2
    assert (
        _count(
            dagster_db, "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        )
        > 5
    )

    mlflow_db = _secret(prod_settings, "mlflow_pg_url")
    assert _count(mlflow_db, "SELECT count(*) FROM model_versions WHERE name = 'fraud_model'") == 1
    assert _count(mlflow_db, "SELECT count(*) FROM registered_model_aliases WHERE alias = 'champion'") == 1
    # The `deployment` asset recorded the pinned versions in the same registry.
    assert (
        _count(
            mlflow_db,
            "SELECT count(*) FROM registered_model_tags WHERE name = 'fraud_model' AND key = 'deployment'",
        )
        == 1
    )

    project = prod_settings.feast_project
    feast_db = _secret(prod_settings, "feast_pg_url")
    assert _count(feast_db, f"SELECT count(*) FROM feature_views WHERE project_id = '{project}'") == 2
    assert _count(feast_db, f"SELECT count(*) FROM feature_services WHERE project_id = '{project}'") == 1

    # The profile's Feast store reads that registry.
    store = FeastStore.from_settings(prod_settings).store()
    assert store.get_feature_service(FEATURE_SERVICE_NAME).name == FEATURE_SERVICE_NAME
    assert {view.name for view in store.list_feature_views()} == {"customer_spending", "terminal_risk"}
