"""The daily partitions are the data's days, and the pipeline runs on a directory of one's own data."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from assets.partitions import data_partitions
from orchestration.cli import app
from orchestration.definitions import build_definitions
from orchestration.profiles import build_resources
from orchestration.resources import EventSourceResource
from simulator import SimulatorConfig, simulate, write_dataset
from tests.conftest import local_settings


@pytest.fixture(scope="module")
def ten_days(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("ten_days")
    config = SimulatorConfig(n_customers=50, n_terminals=100, n_days=10, start_date="2019-02-01", seed=1)
    write_dataset(simulate(config), source)
    return source


def test_historical_data_bounds_the_partitions_and_live_data_follows_the_clock() -> None:
    today = date(2026, 12, 7)
    past = data_partitions(("2018-04-01", "2018-07-05"), today=today)
    keys = past.get_partition_keys()
    assert (keys[0], keys[-1], len(keys)) == ("2018-04-01", "2018-07-05", 96)
    live = data_partitions(("2026-11-01", "2026-12-06"), today=today)
    assert live.end is None
    assert data_partitions(None, today=today).end is None


def test_the_code_location_lists_the_days_of_the_data(tmp_path: Path, ten_days: Path) -> None:
    """Reports arrive up to a week after the last transaction: their days are the data's too."""
    settings = local_settings(tmp_path)
    resources = build_resources(settings)
    resources["source"] = EventSourceResource(path=str(ten_days), stream_path="", stream_grace_minutes=0)
    partitions_def = build_definitions(resources).resolve_assets_def("raw_transactions").partitions_def
    assert partitions_def is not None
    keys = partitions_def.get_partition_keys()
    times = pd.concat(
        [
            pd.read_parquet(ten_days / "transactions.parquet")["TX_DATETIME"],
            pd.read_parquet(ten_days / "fraud_reports.parquet")["REPORT_DATETIME"],
        ]
    )
    expected = pd.date_range(times.min().normalize(), times.max().normalize(), freq="D").strftime("%Y-%m-%d")
    assert keys == list(expected)
    assert keys[0] == "2019-02-01"


def test_times_stored_as_text_bound_the_partitions_too(tmp_path: Path, ten_days: Path) -> None:
    """Without timestamp statistics in the file, the times themselves are read."""
    source = tmp_path / "text"
    source.mkdir()
    for file in ten_days.glob("*.parquet"):
        frame = pd.read_parquet(file)
        for column in ("TX_DATETIME", "REPORT_DATETIME"):
            if column in frame:
                frame[column] = frame[column].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        frame.to_parquet(source / file.name, index=False)
    resource = EventSourceResource(path=str(source), stream_path="", stream_grace_minutes=0)
    original = EventSourceResource(path=str(ten_days), stream_path="", stream_grace_minutes=0)
    days = resource.data_days()
    assert days == original.data_days()
    assert days is not None and days[0] == "2019-02-01"


def test_pipeline_command_refuses_too_short_data(
    tmp_path: Path, ten_days: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAUDPIPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["pipeline", "--source", str(ten_days)])
    assert result.exit_code == 2, result.output
    assert "training needs at least 56" in result.output
    assert not (tmp_path / "data" / "lake").exists()


def test_the_five_minute_schedule_is_off_locally_and_on_in_prod(tmp_path: Path) -> None:
    """A run every 5 minutes is a cost a laptop should opt into; a deployment runs it unattended."""
    from dagster import DefaultScheduleStatus

    from settings import Settings

    local = local_settings(tmp_path)
    prod = Settings.model_construct(**{**dict(local), "profile": "prod"})
    status = {}
    for settings in (local, prod):
        resources = build_resources(local)
        resources["settings"] = settings
        (schedule,) = build_definitions(resources).schedules or ()
        status[settings.profile] = schedule.default_status
    assert status == {"local": DefaultScheduleStatus.STOPPED, "prod": DefaultScheduleStatus.RUNNING}
