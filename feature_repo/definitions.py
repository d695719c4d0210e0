"""Feast objects generated from the window definitions: entities, views, service.

Nothing here names a feature by hand: each feature view is built from a
`FeatureGroup`, so adding a window to `windows.py` adds it to the offline
engine, the registry and the feature service at once. `repo.py` puts the
same objects at module level for Feast's CLI.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, UnixTimestamp
from feast.value_type import ValueType

from feature_repo.engine import FEATURE_TIMESTAMP
from feature_repo.windows import (
    FEATURE_GROUPS,
    FEATURE_SERVICE_NAME,
    ON_DEMAND_FEATURES,
    Aggregation,
    FeatureGroup,
)

transaction_request = RequestSource(
    name="transaction_request",
    schema=[
        Field(name="TX_AMOUNT", dtype=Float64),
        Field(name="TX_DATETIME", dtype=UnixTimestamp),
    ],
)


@on_demand_feature_view(
    sources=[transaction_request],
    schema=[Field(name=name, dtype=Int64) for name in ON_DEMAND_FEATURES],
    mode="pandas",
)
def transaction_calendar(inputs: pd.DataFrame) -> pd.DataFrame:
    """Weekend and night flags of the transaction's own timestamp.

    Feast stores this function's source and runs it without this module's
    globals, hence the import inside.
    """
    from feature_repo.on_demand import calendar_features

    return calendar_features(inputs["TX_DATETIME"])


def entity_for(group: FeatureGroup) -> Entity:
    return Entity(name=group.entity, join_keys=[group.join_key], value_type=ValueType.INT64)


def feature_view_for(group: FeatureGroup, table: Path) -> FeatureView:
    """The group's view over its offline table; rows older than its horizon are stale.

    Offline only: serving reads the online event buffers, not Feast's online store.
    """
    return FeatureView(
        name=group.name,
        entities=[entity_for(group)],
        ttl=timedelta(days=group.horizon_days),
        schema=[
            Field(name=f.name, dtype=Int64 if f.aggregation is Aggregation.COUNT else Float64)
            for f in group.features
        ],
        source=FileSource(
            name=f"{group.name}_source",
            path=str(table.resolve()),
            timestamp_field=FEATURE_TIMESTAMP,
        ),
        online=False,
    )


def feast_objects(
    feature_tables: dict[str, Path],
) -> tuple[list[Any], FeatureService]:
    """Everything `FeatureStore.apply` needs, and the service the model names.

    Args:
        feature_tables: the offline parquet table of each feature group, by group name.
    """
    views = [feature_view_for(group, feature_tables[group.name]) for group in FEATURE_GROUPS]
    service = FeatureService(name=FEATURE_SERVICE_NAME, features=[*views, transaction_calendar])
    entities = [entity_for(group) for group in FEATURE_GROUPS]
    return [*entities, *views, transaction_calendar, service], service
