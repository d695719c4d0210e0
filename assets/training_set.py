"""The point-in-time training set, built through Feast from the feature service."""

import hashlib

import dagster as dg
import pandas as pd

from assets.raw import load_reports, load_transactions
from feature_repo.engine import FEATURE_TIMESTAMP
from feature_repo.store import FeastStore
from feature_repo.windows import FEATURE_SERVICE_NAME, LABEL, LABEL_DELAY_DAYS, MODEL_FEATURES
from orchestration.resources import LakeResource

KEY_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID")


class TrainingSetConfig(dg.Config):
    """Which transactions become training rows (UTC days, inclusive; empty = all settled)."""

    start_day: str = ""
    end_day: str = ""


def settled_transactions(
    transactions: pd.DataFrame, reports: pd.DataFrame, start_day: str = "", end_day: str = ""
) -> pd.DataFrame:
    """Transactions whose label is final, with that label.

    A fraud is reported at most LABEL_DELAY_DAYS after it happens, so only
    transactions at least that old at the last landed report can be trusted to
    be legitimate when no report names them.
    """
    frame = transactions
    if len(reports):
        horizon = reports["REPORT_DATETIME"].max() - pd.Timedelta(days=LABEL_DELAY_DAYS)
        frame = frame[frame["TX_DATETIME"] <= horizon]
    if start_day:
        frame = frame[frame["TX_DATETIME"] >= pd.Timestamp(start_day, tz="UTC")]
    if end_day:
        frame = frame[frame["TX_DATETIME"] < pd.Timestamp(end_day, tz="UTC") + pd.Timedelta(days=1)]
    frame = frame.copy()
    frame[LABEL] = frame["TRANSACTION_ID"].isin(reports["TRANSACTION_ID"]).astype("int8")
    return frame.reset_index(drop=True)


def build_training_set(feast: FeastStore, labelled: pd.DataFrame) -> pd.DataFrame:
    """Join the feature service's features to each labelled transaction, as of its time.

    Returns:
        KEY_COLUMNS, the MODEL_FEATURES in order and the label, sorted by time.
    """
    store = feast.store()
    entity_df = labelled[[*KEY_COLUMNS, "TX_AMOUNT"]].assign(**{FEATURE_TIMESTAMP: labelled["TX_DATETIME"]})
    joined = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(FEATURE_SERVICE_NAME)
    ).to_df()
    missing = [c for c in MODEL_FEATURES if c not in joined.columns]
    if missing:
        raise ValueError(f"the feature service returned no {missing}")
    labels = labelled.set_index("TRANSACTION_ID")[LABEL]
    joined[LABEL] = joined["TRANSACTION_ID"].map(labels).astype("int8")
    joined["TX_DATETIME"] = pd.to_datetime(joined["TX_DATETIME"], utc=True)
    return joined[[*KEY_COLUMNS, *MODEL_FEATURES, LABEL]].sort_values(
        ["TX_DATETIME", "TRANSACTION_ID"], ignore_index=True
    )


def snapshot_id(frame: pd.DataFrame) -> str:
    """A content hash of a table: its columns, dtypes and every row in order."""
    digest = hashlib.sha256(repr([(c, str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


@dg.asset(group_name="training", deps=["feature_registry"], kinds={"feast", "parquet"})
def training_set(
    context: dg.AssetExecutionContext,
    config: TrainingSetConfig,
    lake: LakeResource,
    feast: dg.ResourceParam[FeastStore],
) -> dg.MaterializeResult:
    """Every settled transaction with its 15 model features as of its own timestamp
    (Feast point-in-time join on the `fraud_model_v1` service) and its fraud label."""
    reports = load_reports(lake)
    labelled = settled_transactions(load_transactions(lake), reports, config.start_day, config.end_day)
    if labelled.empty:
        raise ValueError("no settled transaction in the requested days: nothing to train on")
    frame = build_training_set(feast, labelled)
    path = lake.write_table("training_set", frame)
    snapshot = snapshot_id(frame)
    context.log.info(f"training set: {len(frame)} rows, snapshot {snapshot}")
    return dg.MaterializeResult(
        metadata={
            "rows": len(frame),
            "fraud_rate": float(frame[LABEL].mean()),
            "first": str(frame["TX_DATETIME"].min()),
            "last": str(frame["TX_DATETIME"].max()),
            "snapshot_id": snapshot,
            # The last label this set could know of: label_volume_sensor counts reports after it.
            "label_horizon": str(reports["REPORT_DATETIME"].max()) if len(reports) else "",
            "feature_service": FEATURE_SERVICE_NAME,
            "path": str(path),
        }
    )
