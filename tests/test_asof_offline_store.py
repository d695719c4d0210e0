"""Our ASOF offline store returns what Feast's own DuckDB store returns, TTL included."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, RepoConfig
from feast.types import Float64, Int64
from feast.value_type import ValueType

T0 = pd.Timestamp("2018-04-01", tz="UTC")


def _store(
    tmp_path: Path, offline_type: str, table: Path, ttl_days: int
) -> tuple[FeatureStore, FeatureService]:
    config = RepoConfig(
        project="asof",
        provider="local",
        registry=str(tmp_path / f"{offline_type.rsplit('.', 1)[-1]}.db"),
        offline_store={"type": offline_type},
        online_store={"type": "sqlite", "path": str(tmp_path / "online.db")},
        entity_key_serialization_version=3,
    )
    config.repo_path = tmp_path
    card = Entity(name="card", join_keys=["CARD"], value_type=ValueType.INT64)
    view = FeatureView(
        name="card_stats",
        entities=[card],
        ttl=timedelta(days=ttl_days),
        schema=[Field(name="COUNT", dtype=Int64), Field(name="AMOUNT", dtype=Float64)],
        source=FileSource(name="card_stats_source", path=str(table), timestamp_field="event_timestamp"),
    )
    service = FeatureService(name="stats_v1", features=[view])
    store = FeatureStore(config=config)
    store.apply([card, view, service])
    return store, service


@pytest.mark.parametrize("ttl_days", [0, 3])
def test_asof_store_equals_feasts_duckdb_store(tmp_path: Path, ttl_days: int) -> None:
    rng = np.random.default_rng(0)
    n = 3000
    table = tmp_path / "card_stats.parquet"
    features = pd.DataFrame(
        {
            "CARD": rng.integers(0, 40, n),
            "event_timestamp": T0 + pd.to_timedelta(rng.integers(0, 60 * 86400, n), unit="s"),
            "COUNT": rng.integers(0, 100, n),
            "AMOUNT": rng.uniform(0, 500, n),
        }
    ).drop_duplicates(["CARD", "event_timestamp"])
    features.to_parquet(table, index=False)
    entity_df = pd.DataFrame(
        {
            "ROW": np.arange(2000),
            "CARD": rng.integers(0, 45, 2000),  # some cards have no feature row at all
            "event_timestamp": T0 + pd.to_timedelta(rng.integers(0, 62 * 86400, 2000), unit="s"),
        }
    )
    # Exact hits: entity rows at a feature row's own timestamp must read that row.
    hits = features.sample(200, random_state=1)
    entity_df.loc[:199, ["CARD", "event_timestamp"]] = hits[["CARD", "event_timestamp"]].to_numpy()

    results = []
    for offline in ("duckdb", "feature_repo.asof_offline_store.AsofDuckDBOfflineStore"):
        folder = tmp_path / offline.rsplit(".", 1)[-1]
        folder.mkdir()
        store, service = _store(folder, offline, table, ttl_days)
        frame = store.get_historical_features(entity_df=entity_df, features=service).to_df()
        results.append(frame.sort_values("ROW", ignore_index=True)[["ROW", "COUNT", "AMOUNT"]])
    feast_stock, ours = results
    assert feast_stock["COUNT"].notna().sum() > 1000 and feast_stock["COUNT"].isna().sum() > 10
    pd.testing.assert_frame_equal(
        ours.astype({"COUNT": "float64"}),
        feast_stock.astype({"COUNT": "float64"}),
        check_exact=False,
        rtol=1e-12,
    )
