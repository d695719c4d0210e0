"""A Feast offline store whose point-in-time join is DuckDB's ASOF JOIN.

Feast's stock DuckDB store joins every entity row to every feature row of the
same entity inside the TTL and then keeps the newest: rows x history. On the
default dataset (1.75 M transactions, about 60 feature rows per card in a
30-day TTL) that took minutes and tens of GiB. An ASOF JOIN finds the newest
row by a merge of two sorted inputs instead. Everything else (registry, feature
services, on-demand features, materialisation) is Feast's own DuckDB store.

Select it in feature_store.yaml with
`offline_store: {type: feature_repo.asof_offline_store.AsofDuckDBOfflineStore}`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast.feature_view import FeatureView
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource, SavedDatasetFileStorage
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.offline_stores.offline_utils import infer_event_timestamp_from_entity_df
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.saved_dataset import SavedDatasetStorage


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    type: Literal["feature_repo.asof_offline_store.AsofDuckDBOfflineStore"] = (
        "feature_repo.asof_offline_store.AsofDuckDBOfflineStore"
    )


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _file_source(view: FeatureView) -> FileSource:
    source = view.batch_source
    if not isinstance(source, FileSource):
        raise TypeError(f"{view.name}: the ASOF store reads parquet FileSources, not {type(source).__name__}")
    return source


def _source_sql(view: FeatureView, repo_path: str) -> str:
    source = _file_source(view)
    if source.field_mapping:
        raise ValueError(f"{view.name}: field_mapping is not supported by the ASOF store")
    path = FileSource.get_uri_for_file_path(repo_path, source.path)
    table = f"read_parquet('{str(path).replace(chr(39), chr(39) * 2)}')"
    created = source.created_timestamp_column
    if not created:
        return table
    keys = ", ".join(_quote(e.name) for e in view.entity_columns)
    return (
        f"(SELECT * FROM {table} QUALIFY row_number() OVER (PARTITION BY {keys}, "
        f"{_quote(source.timestamp_field)} ORDER BY {_quote(created)} DESC) = 1)"
    )


class ComputedRetrievalJob(RetrievalJob):
    """A retrieval whose rows are computed in this process when asked for; subclasses say how.

    What Feast asks of every retrieval beyond the rows (on-demand views,
    metadata, saving the dataset) is the same for our stores, so it is here once.
    """

    def __init__(
        self,
        on_demand_feature_views: list[OnDemandFeatureView],
        full_feature_names: bool,
        metadata: RetrievalMetadata,
    ) -> None:
        super().__init__()
        self._odfvs = on_demand_feature_views
        self._full_feature_names = full_feature_names
        self._metadata = metadata

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return self._odfvs

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    def persist(
        self, storage: SavedDatasetStorage, allow_overwrite: bool = False, timeout: int | None = None
    ) -> None:
        if not isinstance(storage, SavedDatasetFileStorage):
            raise TypeError(f"{type(self).__name__} saves datasets to parquet files only")
        path = storage.file_options.uri
        if not allow_overwrite and Path(path).exists():
            raise FileExistsError(path)
        pq.write_table(self.to_arrow(), path)


class AsofRetrievalJob(ComputedRetrievalJob):
    """Runs the ASOF query on an in-process DuckDB when the frame is asked for."""

    def __init__(
        self,
        query: str,
        entity_df: pd.DataFrame,
        on_demand_feature_views: list[OnDemandFeatureView],
        full_feature_names: bool,
        metadata: RetrievalMetadata,
    ) -> None:
        super().__init__(on_demand_feature_views, full_feature_names, metadata)
        self._query = query
        self._entity_df = entity_df

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        con = duckdb.connect()
        try:
            con.register("entity_df", self._entity_df)
            return con.execute(self._query).to_arrow_table()
        finally:
            con.close()


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    """DuckDB offline store with an ASOF point-in-time join (see module docstring)."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        if not isinstance(entity_df, pd.DataFrame):
            raise TypeError("the ASOF store takes the entity rows as a pandas DataFrame")
        if filter_by_created_timestamp:
            raise NotImplementedError("filter_by_created_timestamp is not supported by the ASOF store")
        ts = infer_event_timestamp_from_entity_df(dict(zip(entity_df.columns, entity_df.dtypes, strict=True)))
        entity_df = entity_df.assign(**{ts: pd.to_datetime(entity_df[ts], utc=True)})
        select = ["e.*"]
        joins = []
        for i, view in enumerate(feature_views):
            alias = f"f{i}"
            prefix = view.projection.name_to_use()
            names = [ref.split(":", 1)[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
            key_map = view.projection.join_key_map or {e.name: e.name for e in view.entity_columns}
            stamp = _quote(_file_source(view).timestamp_field)
            fresh = f"{alias}.{stamp} IS NOT NULL"
            if view.ttl and view.ttl.total_seconds() > 0:
                fresh = (
                    f"{alias}.{stamp} >= e.{_quote(ts)} - to_microseconds("
                    f"{int(view.ttl.total_seconds() * 1_000_000)})"
                )
            base = view.projection.name_alias or view.name
            for name in names:
                out = f"{base}__{name}" if full_feature_names else name
                select.append(f"CASE WHEN {fresh} THEN {alias}.{_quote(name)} END AS {_quote(out)}")
            on = " AND ".join(
                f"e.{_quote(entity)} = {alias}.{_quote(key)}" for key, entity in key_map.items()
            )
            joins.append(
                f"ASOF LEFT JOIN {_source_sql(view, str(config.repo_path))} {alias} "
                f"ON {on} AND e.{_quote(ts)} >= {alias}.{stamp}"
            )
        times = entity_df[ts]
        return AsofRetrievalJob(
            f"SELECT {', '.join(select)} FROM entity_df e {' '.join(joins)}",
            entity_df,
            OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry),
            full_feature_names,
            RetrievalMetadata(
                features=feature_refs,
                keys=[c for c in entity_df.columns if c != ts],
                min_event_timestamp=times.min().to_pydatetime() if len(times) else datetime.min,
                max_event_timestamp=times.max().to_pydatetime() if len(times) else datetime.max,
            ),
        )
