"""Features: the offline feature tables and the Feast registry.

Serving reads the online event buffers (`feature_repo.online`), exact at each
request's time; nothing is materialised to Feast's online store.
"""

import dagster as dg

from assets.raw import load_reports, load_transactions
from feature_repo.definitions import feast_objects
from feature_repo.engine import FEATURE_TIMESTAMP, feature_table
from feature_repo.store import FeastStore
from feature_repo.windows import CUSTOMER_SPENDING, TERMINAL_RISK, FeatureGroup
from orchestration.resources import LakeResource


def _materialize_group(
    context: dg.AssetExecutionContext, lake: LakeResource, group: FeatureGroup
) -> dg.MaterializeResult:
    events = load_transactions(lake)
    reports = load_reports(lake) if group.uses_labels else None
    table = feature_table(group, events, reports)
    path = lake.write_table(group.name, table)
    context.log.info(f"{group.name}: {len(table)} rows from {len(events)} events")
    return dg.MaterializeResult(
        metadata={
            "rows": len(table),
            "entities": int(table[group.join_key].nunique()),
            "latest": str(table[FEATURE_TIMESTAMP].max()) if len(table) else "",
            "path": str(path),
        }
    )


@dg.asset(
    group_name="features",
    deps=["raw_transactions"],
    kinds={"parquet", "feast"},
)
def customer_spending(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Per card: number of transactions and mean amount over the last 1, 7 and 30 days,
    the current transaction included, as of each of its transactions."""
    return _materialize_group(context, lake, CUSTOMER_SPENDING)


@dg.asset(
    group_name="features",
    deps=["raw_transactions", "fraud_reports"],
    kinds={"parquet", "feast"},
)
def terminal_risk(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Per terminal: number of transactions and share reported as fraud over 1, 7 and 30
    days, ending 7 days back so that every fraud in the window has been reported."""
    return _materialize_group(context, lake, TERMINAL_RISK)


@dg.asset(group_name="features", deps=[customer_spending, terminal_risk], kinds={"feast"})
def feature_registry(feast: dg.ResourceParam[FeastStore]) -> dg.MaterializeResult:
    """The Feast registry: entities, feature views, on-demand features and the
    versioned feature service the model names (what `feast plan` compares against)."""
    objects, service = feast_objects(feast.tables())
    store = feast.store()
    store.apply(objects)
    return dg.MaterializeResult(
        metadata={
            "feature_service": service.name,
            "feature_views": [fv.name for fv in store.list_feature_views()],
            "project": store.project,
        }
    )
