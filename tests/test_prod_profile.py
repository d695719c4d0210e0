"""The prod profile runs the same graph against this machine's PostgreSQL and Redis.

Each run gets its own databases and Feast project (the Redis key suffix), and
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

from orchestration.postgres import drop_database, ensure_database
from orchestration.profiles import PROJECT_ROOT, build_resources
from orchestration.resources import FeastResource
from orchestration.runner import run_pipeline
from simulator import SimulatedData, write_dataset
from tests.conftest import FAST_MODEL

pytestmark = pytest.mark.integration

PG = "postgres@127.0.0.1:5432"
REDIS = "127.0.0.1:6379,db=0"


@pytest.fixture
def prod_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    run = uuid.uuid4().hex[:10]
    urls = {
        # dagster-postgres speaks psycopg2; MLflow and Feast take psycopg 3.
        "FRAUDPIPE_DAGSTER_PG_URL": f"postgresql+psycopg2://{PG}/fp_{run}_dagster",
        "FRAUDPIPE_MLFLOW_PG_URL": f"postgresql+psycopg://{PG}/fp_{run}_mlflow",
        "FRAUDPIPE_FEAST_PG_URL": f"postgresql+psycopg://{PG}/fp_{run}_feast",
    }
    env = {**urls, "FRAUDPIPE_REDIS": REDIS, "FRAUDPIPE_FEAST_PROJECT": f"fptest_{run}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for url in urls.values():
        ensure_database(url)
    try:
        yield env
    finally:
        for url in urls.values():
            drop_database(url)
        client = redis.Redis(host="127.0.0.1", port=6379, db=0)
        keys = list(client.scan_iter(match=f"*{env['FRAUDPIPE_FEAST_PROJECT']}".encode(), count=1000))
        if keys:
            client.delete(*keys)


def _count(url: str, query: str) -> int:
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False)) as conn:
        row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0


def test_prod_profile_runs_the_graph(
    prod_env: dict[str, str], small_data: SimulatedData, tmp_path: Path
) -> None:
    write_dataset(small_data, tmp_path / "source")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "orchestration" / "instance" / "prod" / "dagster.yaml", home / "dagster.yaml")
    resources = build_resources("prod", tmp_path)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        results = run_pipeline(resources, instance, FAST_MODEL)
        assert all(r.success for r in results.values())

    dagster_db = prod_env["FRAUDPIPE_DAGSTER_PG_URL"]
    assert _count(dagster_db, "SELECT count(*) FROM runs") == 2
    assert (
        _count(
            dagster_db, "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        )
        > 5
    )

    mlflow_db = prod_env["FRAUDPIPE_MLFLOW_PG_URL"]
    assert _count(mlflow_db, "SELECT count(*) FROM model_versions WHERE name = 'fraud_model'") == 1
    assert _count(mlflow_db, "SELECT count(*) FROM registered_model_aliases WHERE alias = 'champion'") == 1

    project = prod_env["FRAUDPIPE_FEAST_PROJECT"]
    feast_db = prod_env["FRAUDPIPE_FEAST_PG_URL"]
    assert _count(feast_db, f"SELECT count(*) FROM feature_views WHERE project_id = '{project}'") == 2
    assert _count(feast_db, f"SELECT count(*) FROM feature_services WHERE project_id = '{project}'") == 1

    keys = list(redis.Redis(host="127.0.0.1", port=6379).scan_iter(match=f"*{project}".encode(), count=1000))
    entities = small_data.customers.shape[0] + small_data.terminals.shape[0]
    assert 0.9 * entities <= len(keys) <= entities

    store = FeastResource(
        profile="prod",
        data_dir=str(tmp_path),
        project=project,
        registry_url=feast_db,
        redis_connection=REDIS,
    ).store()
    customer = int(small_data.events()["CUSTOMER_ID"].iloc[-1])
    online = store.get_online_features(
        features=["customer_spending:CUSTOMER_ID_NB_TX_30DAY_WINDOW"], entity_rows=[{"CUSTOMER_ID": customer}]
    ).to_dict()
    assert online["CUSTOMER_ID_NB_TX_30DAY_WINDOW"][0] is not None
    assert online["CUSTOMER_ID_NB_TX_30DAY_WINDOW"][0] > 0
