"""Ingestion: land raw transactions, fraud reports and reference data in the lake.

Each run's batch is judged by its Great Expectations suite before anything is
published: a batch that passes lands as received, one partition per day; one
that fails goes to the lake's quarantine, untouched, and the blocking check
fails the run. So a later run, even a separate one, never builds features on
rows a check rejected.
"""

from collections.abc import Callable

import dagster as dg
import pandas as pd

from assets import validation
from assets.partitions import daily_partitions, first_day
from expectations.runner import Report
from orchestration.resources import EventSourceResource, LakeResource


@dg.asset(group_name="ingestion", kinds={"parquet"})
def customers(source: EventSourceResource, lake: LakeResource) -> dg.MaterializeResult:
    """Card holders known to the bank: the only customer ids a transaction may name."""
    frame = source.read("customers")
    path = lake.write_table("customers", frame)
    return dg.MaterializeResult(metadata={"rows": len(frame), "path": str(path)})


@dg.asset(group_name="ingestion", kinds={"parquet"})
def terminals(source: EventSourceResource, lake: LakeResource) -> dg.MaterializeResult:
    """Payment terminals known to the bank: the only terminal ids a transaction may name."""
    frame = source.read("terminals")
    path = lake.write_table("terminals", frame)
    return dg.MaterializeResult(metadata={"rows": len(frame), "path": str(path)})


def _land_days(
    context: dg.AssetExecutionContext,
    source: EventSourceResource,
    lake: LakeResource,
    table: str,
    time_column: str,
    check: dg.AssetCheckSpec,
    validate: Callable[[pd.DataFrame, list[str]], Report],
) -> dg.MaterializeResult:
    days = context.partition_keys
    start = first_day(context.assets_def.partitions_def)
    by_day = source.read_days(table, time_column, days, first_day=start)
    frame = pd.concat(by_day.values(), ignore_index=True)
    report = validate(frame, days)
    publish = lake.write_partition if report.success else lake.quarantine
    for day, part in by_day.items():
        publish(table, day, part)
    outcome = "landed" if report.success else "quarantined"
    context.log.info(f"{outcome} {len(frame)} {table} rows over {len(days)} day(s); {report.summary()}")
    return dg.MaterializeResult(
        metadata={"rows": len(frame), "days": len(days), "outcome": outcome},
        check_results=[validation.check_result(report, check.name)],
    )


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="ingestion",
    kinds={"parquet"},
    deps=[customers, terminals],
    check_specs=[validation.RAW_TRANSACTIONS_CHECK],
)
def raw_transactions(
    context: dg.AssetExecutionContext, source: EventSourceResource, lake: LakeResource
) -> dg.MaterializeResult:
    """Card transactions as received, one parquet partition per day of transaction time."""
    return _land_days(
        context,
        source,
        lake,
        "transactions",
        "TX_DATETIME",
        validation.RAW_TRANSACTIONS_CHECK,
        lambda frame, days: validation.validate_transactions(frame, lake, days),
    )


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="ingestion",
    kinds={"parquet"},
    deps=[raw_transactions],
    check_specs=[validation.FRAUD_REPORTS_CHECK],
)
def fraud_reports(
    context: dg.AssetExecutionContext, source: EventSourceResource, lake: LakeResource
) -> dg.MaterializeResult:
    """Fraud reports (the labels) as received, one partition per day they were reported."""
    return _land_days(
        context,
        source,
        lake,
        "fraud_reports",
        "REPORT_DATETIME",
        validation.FRAUD_REPORTS_CHECK,
        lambda frame, days: validation.validate_reports(frame, lake, days),
    )
