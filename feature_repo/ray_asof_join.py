"""The point-in-time join as Ray tasks: the work `ray_offline_store.py` sends to the cluster.

Kept apart from the Feast store and free of Feast imports: Ray workers import
this module to run the tasks, and importing Feast would cost each new worker
seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray


@dataclass(frozen=True)
class ViewJoin:
    """How one feature view joins to the entity rows.

    Attributes:
        path: the view's parquet file or folder, readable from every node.
        timestamp: its event time column; `created` breaks ties (newest wins).
        keys: its join key columns, mapped to the entity rows' names for them.
        columns: the requested features, mapped to their names in the result.
        integers: the features of an integer type.
        ttl: a row older than this at the entity row's time is no value.
    """

    path: str
    timestamp: str
    created: str | None
    keys: dict[str, str]
    columns: dict[str, str]
    integers: frozenset[str]
    ttl: pd.Timedelta | None


@ray.remote
def _sorted_features(view: ViewJoin, entity_timestamp: str) -> pd.DataFrame:
    """The view's rows under the entity rows' column names, sorted by time as `merge_asof` needs."""
    created = [view.created] if view.created else []
    read = list(dict.fromkeys([*view.keys, view.timestamp, *created, *view.columns]))
    table = pq.read_table(view.path, columns=read).to_pandas()
    table[view.timestamp] = pd.to_datetime(table[view.timestamp], utc=True).astype("datetime64[ns, UTC]")
    # At equal times merge_asof takes the last row: the newest created one, as in Feast's stores.
    table = table.sort_values([view.timestamp, *created], kind="stable")
    table = table.rename(columns={**view.keys, view.timestamp: entity_timestamp})
    return table[[entity_timestamp, *view.keys.values(), *view.columns]].reset_index(drop=True)


@ray.remote
def _join_block(
    block: pd.DataFrame, timestamp: str, views: list[ViewJoin], *tables: pd.DataFrame
) -> pd.DataFrame:
    """One block of entity rows, in its order, with each view's features as of each row's time.

    The entity rows' columns are returned as they came (the join reads their
    time in nanoseconds, as the tables are); integer features are nullable
    Int64, so that every block has one schema.
    """
    block = block.reset_index(drop=True)
    times = block[timestamp].astype("datetime64[ns, UTC]")
    order = np.argsort(times.to_numpy(), kind="stable")
    for view, table in zip(views, tables, strict=True):
        keys = list(view.keys.values())
        joined = pd.merge_asof(
            block.iloc[order][keys].assign(**{timestamp: times.iloc[order]}),
            table,
            on=timestamp,
            by=keys,
            tolerance=view.ttl,
            direction="backward",
        )
        joined.index = order
        joined = joined.sort_index()
        for name, out in view.columns.items():
            block[out] = joined[name].astype("Int64") if name in view.integers else joined[name]
    return block


def asof_join(
    entity_df: pd.DataFrame, timestamp: str, views: list[ViewJoin], timeout: float | None = None
) -> pa.Table:
    """Each view's features joined to every entity row as of its `timestamp` (tz-aware), on the cluster.

    One task per view reads and sorts its table once; the entity rows are split
    into one block per cluster CPU, spread over the nodes, one task each.
    """
    tables = [_sorted_features.remote(view, timestamp) for view in views]
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    size = max(1, -(-len(entity_df) // cpus))
    blocks = [entity_df.iloc[i : i + size] for i in range(0, len(entity_df), size)] or [entity_df]
    join = _join_block.options(scheduling_strategy="SPREAD")
    frames = ray.get([join.remote(block, timestamp, views, *tables) for block in blocks], timeout=timeout)
    # Without the blocks' pandas metadata, dtypes follow the values as with Feast's other stores.
    frame = pd.concat(frames, ignore_index=True)
    return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
