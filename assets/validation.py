"""Blocking data-quality checks: Great Expectations suites from `expectations/`.

The raw checks run inside the landing step (the raw rows are landed as
received, then judged), so a failure stops everything downstream in the run;
the training-set check stands between the training set and the model.
"""

import dagster as dg
import pandas as pd

from assets.raw import load_transactions
from expectations import suites
from expectations.runner import Report, validate
from feature_repo.windows import FEATURE_GROUPS
from orchestration.resources import LakeResource

RAW_TRANSACTIONS_CHECK = dg.AssetCheckSpec(
    "check_raw_transactions",
    asset="raw_transactions",
    blocking=True,
    description="Great Expectations suite `raw_transactions`: fields present, typed, in range, known ids.",
)
FRAUD_REPORTS_CHECK = dg.AssetCheckSpec(
    "check_fraud_reports",
    asset="fraud_reports",
    blocking=True,
    description="Great Expectations suite `fraud_reports`: one well-formed report per transaction.",
)


def check_result(report: Report, check_name: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=report.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=report.summary(),
        metadata=report.metadata(),
    )


def _window(days: list[str]) -> tuple[pd.Timestamp, pd.Timestamp]:
    return pd.Timestamp(min(days), tz="UTC"), pd.Timestamp(max(days), tz="UTC") + pd.Timedelta(days=1)


def validate_transactions(frame: pd.DataFrame, lake: LakeResource, days: list[str]) -> Report:
    """Judge a batch of raw transactions, also against the ids landed on other days."""
    start, end = _window(days)
    suite = suites.raw_transactions_suite(
        lake.read_table("customers")["CUSTOMER_ID"],
        lake.read_table("terminals")["TERMINAL_ID"],
        start,
        end,
        pd.Timestamp.now(tz="UTC"),
    )
    view = suites.validation_view(frame, suites.TRANSACTION_FIELDS, times=["TX_DATETIME"])
    if "TRANSACTION_ID" in view:
        landed = pd.to_numeric(lake.read_column("transactions", "TRANSACTION_ID", exclude_days=days))
        view[f"TRANSACTION_ID{suites.LANDED}"] = view["TRANSACTION_ID"].isin(landed)
    return validate(view, suite, suites.renames(suites.TRANSACTION_FIELDS))


def validate_reports(frame: pd.DataFrame, lake: LakeResource, days: list[str]) -> Report:
    """Judge a batch of fraud reports, also against the transactions they name."""
    start, end = _window(days)
    suite = suites.fraud_reports_suite(start, end, pd.Timestamp.now(tz="UTC"))
    view = suites.validation_view(frame, suites.REPORT_FIELDS, times=["REPORT_DATETIME"])
    if "TRANSACTION_ID" in view and "REPORT_DATETIME" in view:
        landed = load_transactions(lake).set_index("TRANSACTION_ID")["TX_DATETIME"]
        tx_time = view["TRANSACTION_ID"].map(landed)
        view[f"TRANSACTION_ID{suites.LANDED}"] = tx_time.notna()
        delay = pd.to_timedelta(view["REPORT_DATETIME"] - tx_time)
        view[f"REPORT_DATETIME{suites.DELAY_DAYS}"] = delay.dt.total_seconds() / 86_400
    return validate(view, suite, suites.renames(suites.REPORT_FIELDS))


@dg.asset_check(asset="training_set", blocking=True, name="check_training_set")
def check_training_set(lake: LakeResource) -> dg.AssetCheckResult:
    """Great Expectations suite `training_set`: features set and in range, both classes present."""
    report = validate(lake.read_table("training_set"), suites.training_set_suite(FEATURE_GROUPS))
    return check_result(report, "check_training_set")


checks = [check_training_set]
