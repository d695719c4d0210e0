"""Bad raw input is stopped by the blocking checks, named, counted, and goes no further."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
import pytest

from assets.validation import validate_reports, validate_transactions
from orchestration.definitions import build_definitions
from orchestration.profiles import build_resources
from orchestration.resources import LakeResource
from orchestration.runner import run_pipeline
from simulator import SimulatedData, write_dataset
from tests.conftest import local_settings

DAYS = ["2018-04-01", "2018-04-02", "2018-04-03"]


def as_json_text(events: pd.DataFrame) -> pd.DataFrame:
    """Events as a JSON producer would send them: every field a string, ISO times with offset."""
    return pd.DataFrame(
        {
            "TRANSACTION_ID": events["TRANSACTION_ID"].astype(str),
            "TX_DATETIME": events["TX_DATETIME"].map(lambda t: t.isoformat()),
            "CUSTOMER_ID": events["CUSTOMER_ID"].astype(str),
            "TERMINAL_ID": events["TERMINAL_ID"].astype(str),
            "TX_AMOUNT": events["TX_AMOUNT"].map(repr),
        }
    ).astype(object)


@pytest.fixture
def lake(small_data: SimulatedData, tmp_path: Path) -> LakeResource:
    lake = LakeResource(root=str(tmp_path))
    lake.write_table("customers", small_data.customers)
    lake.write_table("terminals", small_data.terminals)
    return lake


@pytest.fixture
def first_days(small_data: SimulatedData) -> pd.DataFrame:
    events = small_data.events()
    return as_json_text(
        events[events["TX_DATETIME"] < pd.Timestamp(DAYS[-1], tz="UTC") + pd.Timedelta(days=1)]
    )


def test_clean_text_events_pass(lake: LakeResource, first_days: pd.DataFrame) -> None:
    report = validate_transactions(first_days, lake, DAYS)
    assert report.success, report.summary()


BAD_CASES = {
    "missing field": ("CUSTOMER_ID", None, "must not be missing"),
    "negative amount": ("TX_AMOUNT", "-12.50", "must not be negative"),
    "non-numeric amount": ("TX_AMOUNT", "12,50 EUR", "must be a finite number"),
    "NaN amount": ("TX_AMOUNT", "nan", "must be a finite number"),
    "infinite amount": ("TX_AMOUNT", "inf", "must be a finite number"),
    "unknown customer": ("CUSTOMER_ID", "987654", "must be a known customer"),
    "unknown terminal": ("TERMINAL_ID", "987654", "must be a known terminal"),
    "naive timestamp": ("TX_DATETIME", "2018-04-02T10:00:00", "timestamp must carry a timezone"),
    "future timestamp": ("TX_DATETIME", "2031-01-01T00:00:00+00:00", "the landed days, not the future"),
    "timestamp out of range": ("TX_DATETIME", "2999-01-01T00:00:00+00:00", "must be an ISO 8601 timestamp"),
    "not a timestamp": ("TX_DATETIME", "yesterday", "must be an ISO 8601 timestamp"),
    "oversized field": ("TERMINAL_ID", "7" * 500, "at most 64 characters"),
    "fractional id": ("CUSTOMER_ID", "83.0", "must be a non-negative integer"),
    "overflowing amount": ("TX_AMOUNT", "1e400", "must parse to a finite number"),
    "absurd amount": ("TX_AMOUNT", "123456789", "must be less than 10,000,000"),
    "amount at the limit": ("TX_AMOUNT", "10000000", "must be less than 10,000,000"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_each_bad_value_is_named_with_its_rule_and_count(
    case: str, lake: LakeResource, first_days: pd.DataFrame
) -> None:
    column, value, rule = BAD_CASES[case]
    bad = first_days.copy()
    rows = bad.sample(3, random_state=1).index
    bad.loc[rows, column] = value
    report = validate_transactions(bad, lake, DAYS)
    assert not report.success
    failure = next(f for f in report.failures if rule in f.rule)
    assert failure.column == column
    assert failure.unexpected == 3, report.summary()
    assert f"{column}: " in report.summary() and "3 of" in report.summary()


def test_duplicated_ids_are_counted(lake: LakeResource, first_days: pd.DataFrame) -> None:
    bad = pd.concat([first_days, first_days.head(4)], ignore_index=True)
    report = validate_transactions(bad, lake, DAYS)
    failure = next(f for f in report.failures if f.rule == "must be unique")
    assert failure.column == "TRANSACTION_ID"
    assert failure.unexpected == 8  # both copies of each of the 4 ids


def test_ids_are_compared_as_numbers(lake: LakeResource, first_days: pd.DataFrame) -> None:
    bad = pd.concat(
        [first_days, first_days.head(1).assign(TRANSACTION_ID=lambda f: "0" + f["TRANSACTION_ID"])]
    )
    report = validate_transactions(bad.reset_index(drop=True), lake, DAYS)
    assert any(f.rule == "must be unique" and f.unexpected == 2 for f in report.failures), report.summary()


def test_ids_landed_on_other_days_are_duplicates(lake: LakeResource, first_days: pd.DataFrame) -> None:
    day1 = first_days[first_days["TX_DATETIME"].str.startswith(DAYS[0])]
    lake.write_partition("transactions", DAYS[0], day1)
    replay = day1.head(5).assign(TX_DATETIME=lambda f: f["TX_DATETIME"].str.replace(DAYS[0], DAYS[1]))
    report = validate_transactions(replay, lake, DAYS[1:2])
    failure = next(f for f in report.failures if f.rule == "must not be landed already")
    assert (failure.column, failure.unexpected) == ("TRANSACTION_ID", 5)
    assert validate_transactions(day1, lake, DAYS[:1]).success, "re-landing a day replaces it"


def test_bad_reports_are_named(small_data: SimulatedData, lake: LakeResource) -> None:
    events = small_data.events()
    lake.write_partition("transactions", "2018-04-01", events[events["TX_DATETIME"] < "2018-04-02"])
    tx = events.iloc[0]
    reports = pd.DataFrame(
        {
            "TRANSACTION_ID": [int(tx["TRANSACTION_ID"]), 99_999_999, int(events.iloc[1]["TRANSACTION_ID"])],
            "REPORT_DATETIME": [
                tx["TX_DATETIME"] - pd.Timedelta(hours=1),
                tx["TX_DATETIME"] + pd.Timedelta(days=1),
                tx["TX_DATETIME"] + pd.Timedelta(days=8),
            ],
        }
    )
    days = ["2018-03-31", "2018-04-01", "2018-04-02", "2018-04-08", "2018-04-09"]
    summary = validate_reports(reports, lake, days).summary()
    assert "TRANSACTION_ID: must name a landed transaction: 1 of 3 rows" in summary
    assert "REPORT_DATETIME: must come 0 to 7 days after its transaction: 2 of 3 rows" in summary


def test_missing_column_is_reported(lake: LakeResource, first_days: pd.DataFrame) -> None:
    report = validate_transactions(first_days.drop(columns=["TX_AMOUNT"]), lake, DAYS)
    assert any(f.column == "TX_AMOUNT" and "present" in f.rule for f in report.failures)


def test_bad_rows_stop_the_pipeline(small_data: SimulatedData, tmp_path: Path) -> None:
    """The blocking check fails the run: no feature, training set or model comes after it."""
    source = tmp_path / "source"
    write_dataset(small_data, source)
    events = as_json_text(small_data.events())
    events.loc[10, "TX_AMOUNT"] = "-3.00"
    events.loc[20, "TX_AMOUNT"] = "abc"
    events.loc[30, "CUSTOMER_ID"] = "424242"
    events.loc[40, "TX_DATETIME"] = "2018-04-02 09:00:00"
    events = pd.concat([events, events.iloc[[50]]], ignore_index=True)
    events.to_parquet(source / "transactions.parquet", index=False)
    resources = build_resources(local_settings(tmp_path))

    with dg.instance_for_test() as instance:
        with pytest.raises(dg.DagsterError):
            run_pipeline(resources, instance)
        (run,) = instance.get_runs()
        evaluations = [
            entry.dagster_event.asset_check_evaluation_data
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            if entry.dagster_event is not None
        ]
        check = next(ev for ev in evaluations if ev.check_name == "check_raw_transactions")
        assert not check.passed
        for expected in (
            "TX_AMOUNT: must not be negative: 1 of",
            "TX_AMOUNT: must be a finite number: 1 of",
            "CUSTOMER_ID: must be a known customer: 1 of",
            "TX_DATETIME: timestamp must carry a timezone: 1 of",
            "TRANSACTION_ID: must be unique: 2 of",
        ):
            assert expected in check.description, check.description
        downstream = [
            "customer_spending",
            "terminal_risk",
            "training_set",
            "fraud_model",
            "registered_model",
            "champion",
            "deployment",
        ]
        for key in downstream:
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is None, key

        # The rejected batch is quarantined, not published: a separate training run finds nothing to use.
        lake = resources["lake"]
        assert not list((Path(lake.root) / "transactions").glob("date=*"))
        assert list((Path(lake.root) / "quarantine" / "transactions").glob("date=*"))
        training = build_definitions(resources).resolve_job_def("training_job")
        with pytest.raises(FileNotFoundError, match="no partition landed"):
            training.execute_in_process(instance=instance)
    mlflow_store = resources["mlflow"]
    mlflow_store.activate()
    assert mlflow.MlflowClient().search_registered_models() == []
