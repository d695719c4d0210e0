"""The cluster profile's Feast: point-in-time joins on the Ray cluster equal the DuckDB path's.

The store is the one `feature_repo/profiles/cluster/feature_store.yaml`
describes, through `FeastStore(profile="cluster")`: its registry in a
PostgreSQL database of its own (dropped afterwards), its offline store
`RayAsofOfflineStore` on the session's two-node `ray_cluster`, over the feature
tables the session's `pipeline_run` wrote with the local profile. The
reference is the local profile itself: its DuckDB ASOF store on the same
tables and registry objects.

The test process joins the cluster as a driver with its token
(`LocalRayCluster.driver`) and leaves it through Feast's own `shutdown_ray`,
which also forgets that Feast initialised Ray, so later tests start their own
Ray; the cluster itself stays up for the next test_ray_* module.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import pandas as pd
import pytest
import ray

from assets.features import feature_registry
from assets.raw import load_reports, load_transactions
from assets.training_set import build_training_set, settled_transactions
from feature_repo.engine import FEATURE_TIMESTAMP
from feature_repo.store import FeastStore
from feature_repo.windows import FEATURE_GROUPS, LABEL
from orchestration.postgres import drop_database, ensure_database
from orchestration.resources import LakeResource
from tests.conftest import PipelineRun
from tests.ray_cluster import LocalRayCluster

pytestmark = pytest.mark.integration

PG = "postgres@127.0.0.1:5432"


@pytest.fixture
def cluster_feast(pipeline_run: PipelineRun, ray_cluster: LocalRayCluster) -> Iterator[FeastStore]:
    """The cluster profile's Feast over the session's feature tables, its registry applied."""
    from feast.infra.ray_initializer import shutdown_ray

    run = uuid.uuid4().hex[:10]
    registry_url = f"postgresql+psycopg://{PG}/fp_{run}_feast"
    ensure_database(registry_url)
    feast = FeastStore(
        profile="cluster",
        data_dir=pipeline_run.data_dir,
        project=f"fptest_{run}",
        registry_url=registry_url,
        ray_address=ray_cluster.address,
    )
    try:
        with ray_cluster.driver():
            try:
                feature_registry(feast=feast)
                yield feast
            finally:
                shutdown_ray()
    finally:
        drop_database(registry_url)


def _assert_on_cluster() -> None:
    """The driver is connected to the session's two raylets, not to a Ray of its own."""
    assert ray.is_initialized()
    names = {r for node in ray.nodes() if node["Alive"] for r in node["Resources"] if r.startswith("node_")}
    assert names == {"node_head", "node_worker"}


def _in_nanoseconds(duckdb: pd.DataFrame, column: str) -> pd.DataFrame:
    """DuckDB's frame with `column` in nanoseconds, as the Ray store returns it.

    DuckDB hands an entity row's times back at its own TIMESTAMPTZ precision,
    microseconds; the Ray store keeps the entity rows' column as it came
    (nanoseconds, as loaded from the lake). Widening is lossless.
    """
    return duckdb.astype({column: "datetime64[ns, UTC]"})


T = TypeVar("T")


def _timed(build: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = build()
    return result, time.perf_counter() - started


def test_training_set_on_ray_equals_duckdb(pipeline_run: PipelineRun, cluster_feast: FeastStore) -> None:
    lake: LakeResource = pipeline_run.resources["lake"]
    local: FeastStore = pipeline_run.resources["feast"]
    labelled = settled_transactions(load_transactions(lake), load_reports(lake))

    duckdb, duckdb_s = _timed(lambda: build_training_set(local, labelled))
    on_ray, ray_s = _timed(lambda: build_training_set(cluster_feast, labelled))
    _, warm_s = _timed(lambda: build_training_set(cluster_feast, labelled))
    _assert_on_cluster()
    print(
        f"\ntraining set, {len(duckdb)} rows: DuckDB {duckdb_s:.2f} s, "
        f"Ray {ray_s:.2f} s (workers starting), {warm_s:.2f} s warm"
    )

    assert len(duckdb) > 50_000 and duckdb[LABEL].sum() > 1_000
    # The local profile's own training set, built by the pipeline, is the same table.
    pd.testing.assert_frame_equal(duckdb, lake.read_table("training_set"), check_exact=True)
    pd.testing.assert_frame_equal(
        on_ray.sort_values("TRANSACTION_ID", ignore_index=True),
        _in_nanoseconds(duckdb, "TX_DATETIME").sort_values("TRANSACTION_ID", ignore_index=True),
        check_exact=True,
    )


def test_ttl_and_repeated_rows_on_ray_equal_duckdb(
    pipeline_run: PipelineRun, cluster_feast: FeastStore
) -> None:
    """Entity rows between and long after feature rows, and repeated rows: each view's TTL decides."""
    lake: LakeResource = pipeline_run.resources["lake"]
    local: FeastStore = pipeline_run.resources["feast"]
    rng = np.random.default_rng(3)
    sample = load_transactions(lake).sample(4_000, random_state=3, ignore_index=True)
    later = pd.to_timedelta(rng.integers(0, 80 * 86_400, len(sample)), unit="s")
    entity_df = sample[["CUSTOMER_ID", "TERMINAL_ID"]].assign(
        **{FEATURE_TIMESTAMP: sample["TX_DATETIME"] + later}
    )
    entity_df = pd.concat([entity_df, entity_df.head(500)], ignore_index=True)
    entity_df.insert(0, "ROW", np.arange(len(entity_df)))
    features = [f"{group.name}:{name}" for group in FEATURE_GROUPS for name in group.feature_names]

    frames = []
    for feast in (local, cluster_feast):
        joined = feast.store().get_historical_features(entity_df=entity_df, features=features).to_df()
        frames.append(joined.sort_values("ROW", ignore_index=True))
    duckdb, on_ray = frames
    _assert_on_cluster()

    assert len(on_ray) == len(entity_df)
    for group in FEATURE_GROUPS:
        stale = int(duckdb[group.feature_names[0]].isna().sum())
        print(f"\n{group.name}: {stale} of {len(duckdb)} rows past the {group.horizon_days}-day TTL")
        assert 100 < stale < len(duckdb) - 1_000, f"{group.name}: no TTL expiry exercised"
    pd.testing.assert_frame_equal(on_ray, _in_nanoseconds(duckdb, FEATURE_TIMESTAMP), check_exact=True)
