"""Feast's Ray offline store with a point-in-time join that is correct and scales.

Feast 0.67's Ray store (`offline_store: {type: ray}`) connects to the cluster,
reads sources and materialises through Ray, but its `get_historical_features`
cannot build our training set (`RayDataProcessor` in its source):

* it sorts each feature table by (entity, time) and gives it to
  `pandas.merge_asof`, which needs it sorted by time alone; the merge raises
  ("right keys must be sorted") and the store falls back to a Python loop over
  the entity rows, each scanning the whole table. On the tests' 77,000-row
  training set it had not finished after 10 minutes;
* it ignores the feature view's TTL, where Feast's other stores and ours
  (`asof_offline_store.py`) return null for a row older than the TTL;
* above `broadcast_join_threshold_mb` it switches to a join that matches only
  rows falling in the same one-hour window of the same block.

This subclass replaces only that method, with Ray tasks
(`ray_asof_join.py`): one per feature view reads its table on the cluster and
sorts it by time, once; the entity rows are split into one block per cluster
CPU, spread over the nodes, and one task per block joins every view to it with
`merge_asof` by entity key: the newest row at or before the row's time, the
view's TTL as tolerance. A feature table must fit in a worker's memory, as in
Feast's broadcast join. Everything else (connecting to the cluster, the reads
that materialisation makes) is Feast's own Ray store.

Select it in feature_store.yaml with
`offline_store: {type: feature_repo.ray_offline_store.RayAsofOfflineStore, ray_address: ...}`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from feast.feature_view import FeatureView
from feast.infra.offline_stores.contrib.ray_offline_store.ray import RayOfflineStore, RayOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.offline_stores.offline_utils import infer_event_timestamp_from_entity_df
from feast.infra.ray_initializer import ensure_ray_initialized
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.types import Int32, Int64

from feature_repo.asof_offline_store import ComputedRetrievalJob
from feature_repo.ray_asof_join import ViewJoin, asof_join


class RayAsofOfflineStoreConfig(RayOfflineStoreConfig):
    type: Literal["feature_repo.ray_offline_store.RayAsofOfflineStore"] = (
        "feature_repo.ray_offline_store.RayAsofOfflineStore"  # type: ignore[assignment]
    )


class RayAsofRetrievalJob(ComputedRetrievalJob):
    """The join's Ray tasks, submitted when the rows are asked for."""

    def __init__(
        self,
        entity_df: pd.DataFrame,
        timestamp: str,
        views: list[ViewJoin],
        on_demand_feature_views: list[OnDemandFeatureView],
        full_feature_names: bool,
        metadata: RetrievalMetadata,
    ) -> None:
        super().__init__(on_demand_feature_views, full_feature_names, metadata)
        self._entity_df = entity_df
        self._timestamp = timestamp
        self._views = views

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return asof_join(self._entity_df, self._timestamp, self._views, timeout)


def _view_join(config: RepoConfig, view: FeatureView, names: list[str], full_feature_names: bool) -> ViewJoin:
    source = view.batch_source
    if not isinstance(source, FileSource):
        raise TypeError(
            f"{view.name}: the Ray ASOF store reads parquet FileSources, not {type(source).__name__}"
        )
    if source.field_mapping:
        raise ValueError(f"{view.name}: field_mapping is not supported by the Ray ASOF store")
    base = view.projection.name_alias or view.name
    return ViewJoin(
        path=str(FileSource.get_uri_for_file_path(config.repo_path, source.path)),
        timestamp=source.timestamp_field,
        created=source.created_timestamp_column or None,
        keys=dict(view.projection.join_key_map or {e.name: e.name for e in view.entity_columns}),
        columns={name: f"{base}__{name}" if full_feature_names else name for name in names},
        integers=frozenset(f.name for f in view.features if f.dtype in (Int32, Int64)),
        ttl=pd.Timedelta(view.ttl) if view.ttl and view.ttl.total_seconds() > 0 else None,
    )


class RayAsofOfflineStore(RayOfflineStore):
    """Feast's Ray offline store with the point-in-time join described in the module docstring."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        **kwargs: Any,
    ) -> RetrievalJob:
        if not isinstance(entity_df, pd.DataFrame):
            raise TypeError("the Ray ASOF store takes the entity rows as a pandas DataFrame")
        if kwargs.get("filter_by_created_timestamp"):
            raise NotImplementedError("filter_by_created_timestamp is not supported by the Ray ASOF store")
        ensure_ray_initialized(config)
        ts = infer_event_timestamp_from_entity_df(dict(zip(entity_df.columns, entity_df.dtypes, strict=True)))
        times = pd.to_datetime(entity_df[ts], utc=True)
        views = []
        for view in feature_views:
            prefix = view.projection.name_to_use()
            names = [ref.split(":", 1)[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
            if names:
                views.append(_view_join(config, view, names, full_feature_names))
        return RayAsofRetrievalJob(
            entity_df.assign(**{ts: times}),
            ts,
            views,
            OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry),
            full_feature_names,
            RetrievalMetadata(
                features=feature_refs,
                keys=[c for c in entity_df.columns if c != ts],
                min_event_timestamp=times.min().to_pydatetime() if len(times) else datetime.min,
                max_event_timestamp=times.max().to_pydatetime() if len(times) else datetime.max,
            ),
        )
