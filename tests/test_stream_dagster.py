"""Dagster over the stream: the sensor launches complete days once, ingestion lands what was streamed."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from assets import ingestion, stream
from orchestration import sensors
from orchestration.definitions import build_definitions
from orchestration.jobs import RANGE_END, RANGE_START
from orchestration.profiles import build_resources
from orchestration.resources import EventSourceResource
from orchestration.sensors import (
    LAUNCHED_BY,
    SENSOR_NAME,
    day_fingerprint,
    stream_landing_sensor,
)
from settings import StreamSettings
from simulator import SimulatedData, SimulatorConfig, simulate, write_dataset
from streaming.events import (
    Transaction,
    reports_from_frame,
    reports_to_frame,
    transactions_from_frame,
    transactions_to_frame,
)
from streaming.landing import ConsumerStatus, StreamLanding
from tests.conftest import local_settings

TINY = SimulatorConfig(n_customers=60, n_terminals=120, n_days=6, seed=11)
"""Six days, 2018-04-01 to 04-06, with a few frauds reported within them."""
DAYS = [f"2018-04-0{d}" for d in range(1, 7)]
NOW = datetime(2018, 4, 7, 12, tzinfo=UTC)


@dataclass
class Stream:
    data: SimulatedData
    landing: StreamLanding
    resources: dict[str, Any]
    transactions: pd.DataFrame
    reports: pd.DataFrame


@pytest.fixture(scope="module")
def tiny_data() -> SimulatedData:
    return simulate(TINY)


@pytest.fixture
def streamed(tiny_data: SimulatedData, tmp_path: Path) -> Stream:
    """Every event of TINY landed as the consumer would: typed off the wire, in overlapping batches."""
    write_dataset(tiny_data, tmp_path / "source")
    transactions = transactions_to_frame(list(transactions_from_frame(tiny_data.events())))
    reports = reports_to_frame(list(reports_from_frame(tiny_data.fraud_reports)))
    settings = local_settings(tmp_path, source="stream")
    landing = StreamLanding(settings.landing_path)
    half = len(transactions) // 2
    for batch in (transactions[: half + 20], transactions[half - 20 :], transactions[:10]):
        landing.land("transactions", batch)
    landing.land("fraud_reports", reports)
    resources = build_resources(settings)
    assert resources["source"].stream_path == str(landing.root)
    return Stream(tiny_data, landing, resources, transactions, reports)


def file_mode(streamed: Stream, tmp_path: Path) -> dict[str, Any]:
    """The streamed resources, but with the source in file mode (no stream landing)."""
    return {
        **streamed.resources,
        "source": build_resources(local_settings(tmp_path, source="files"))["source"],
    }


def status(name: str, table: str, watermark: datetime | None, landed: int = 0) -> ConsumerStatus:
    return ConsumerStatus(name, table, table, landed, 0, 0, watermark, 0, NOW)


def evaluate(
    streamed: Stream, instance: dg.DagsterInstance, cursor: str | None
) -> tuple[list[dg.RunRequest], str | None, str | None]:
    """One sensor tick: its run requests, the cursor it leaves, and why it skipped, if it did."""
    context = dg.build_sensor_context(instance=instance, resources=streamed.resources, cursor=cursor)
    result = stream_landing_sensor(context)
    if isinstance(result, dg.SkipReason):
        return [], cursor, result.skip_message
    assert isinstance(result, dg.SensorResult)
    skip = result.skip_reason.skip_message if result.skip_reason else None
    return list(result.run_requests or []), result.cursor, skip


def late_transaction(streamed: Stream, day: str) -> pd.DataFrame:
    """A new, valid transaction of `day`, arriving after the day was launched."""
    first = streamed.transactions.iloc[0]
    return transactions_to_frame(
        [
            Transaction(
                TRANSACTION_ID=int(streamed.transactions["TRANSACTION_ID"].max()) + 1,
                TX_DATETIME=datetime.fromisoformat(f"{day}T12:00:00+00:00"),
                CUSTOMER_ID=int(first["CUSTOMER_ID"]),
                TERMINAL_ID=int(first["TERMINAL_ID"]),
                TX_AMOUNT=12.5,
            )
        ]
    )


def test_sensor_launches_complete_days_once_and_again_after_late_files(streamed: Stream) -> None:
    landing = streamed.landing
    watermark = streamed.transactions["TX_DATETIME"].max().to_pydatetime()
    landing.write_status(status("tx-0", "transactions", watermark))
    landing.write_status(status("tx-1", "transactions", datetime(2018, 4, 3, 0, 30, tzinfo=UTC)))
    landing.write_status(status("reports-0", "fraud_reports", datetime(2018, 4, 1, tzinfo=UTC)))
    with dg.instance_for_test() as instance:
        # tx-1 is the slower consumer: 04-02 ends at 04-03 00:00, plus one hour of grace is past 00:30.
        (first,), cursor, _ = evaluate(streamed, instance, None)
        assert first.partition_key == "2018-04-01"
        assert first.run_key == f"stream-2018-04-01-{day_fingerprint(landing, '2018-04-01')}"
        assert first.tags[LAUNCHED_BY] == SENSOR_NAME
        assert evaluate(streamed, instance, None)[0] == [first], "same files, same key"

        landing.write_status(status("tx-1", "transactions", watermark))
        (catch_up,), caught_up, _ = evaluate(streamed, instance, cursor)
        # The last day (04-06) is not complete: its end plus the grace is after every watermark.
        assert (catch_up.tags[RANGE_START], catch_up.tags[RANGE_END]) == ("2018-04-02", "2018-04-05")
        assert catch_up.run_key is not None and catch_up.run_key.startswith("stream-2018-04-02..2018-04-05-")
        assert evaluate(streamed, instance, cursor)[0] == [catch_up]
        requests, cursor, skip = evaluate(streamed, instance, caught_up)
        assert requests == [] and skip is not None and "changed" in skip

        landing.land("transactions", late_transaction(streamed, "2018-04-03"))
        (late,), cursor, _ = evaluate(streamed, instance, cursor)
        assert late.partition_key == "2018-04-03"
        assert late.run_key == f"stream-2018-04-03-{day_fingerprint(landing, '2018-04-03')}"
        assert late.run_key not in {first.run_key, catch_up.run_key}
        assert evaluate(streamed, instance, cursor)[0] == []

        @dg.op
        def noop() -> None: ...

        @dg.job
        def busy() -> None:
            noop()

        instance.create_run_for_job(busy, status=dg.DagsterRunStatus.STARTED, tags={LAUNCHED_BY: SENSOR_NAME})
        landing.land("transactions", late_transaction(streamed, "2018-04-04"))
        requests, held, skip = evaluate(streamed, instance, cursor)
        assert requests == [] and held == cursor and skip is not None and "has not finished" in skip


def test_a_tick_skips_unchanged_days_without_listing_their_files(streamed: Stream, monkeypatch) -> None:
    landing = streamed.landing
    watermark = streamed.transactions["TX_DATETIME"].max().to_pydatetime()
    landing.write_status(status("tx-0", "transactions", watermark))
    day_dirs = [landing.day_dir(t, d) for t in ("transactions", "fraud_reports") for d in DAYS]
    with dg.instance_for_test() as instance:
        for changed in filter(Path.exists, day_dirs):
            os.utime(changed)
        _, fresh, _ = evaluate(streamed, instance, None)
        assert fresh is not None
        assert {day: stamp for day, (_, stamp) in json.loads(fresh).items()} == dict.fromkeys(DAYS[:-1]), (
            "directories changed a moment ago are not trusted to stay unchanged"
        )
        an_hour_ago = time.time() - 3600
        for settled_dir in filter(Path.exists, day_dirs):
            os.utime(settled_dir, (an_hour_ago, an_hour_ago))
        _, settled, _ = evaluate(streamed, instance, fresh)

        def listed(landing: StreamLanding, day: str) -> str:
            raise AssertionError(f"{day} was listed though its directories did not change")

        with monkeypatch.context() as patch:
            patch.setattr(sensors, "day_fingerprint", listed)
            requests, _, _ = evaluate(streamed, instance, settled)
            assert requests == []
        landing.land("transactions", late_transaction(streamed, "2018-04-02"))
        (late,), _, _ = evaluate(streamed, instance, settled)
        assert late.partition_key == "2018-04-02"


def test_sensor_skips_until_there_is_a_stream_and_a_watermark(streamed: Stream, tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=file_mode(streamed, tmp_path))
        skipped = stream_landing_sensor(context)
        assert isinstance(skipped, dg.SkipReason) and "file mode" in str(skipped.skip_message)
        streamed.landing.write_status(status("reports-0", "fraud_reports", NOW))
        assert "watermark" in str(evaluate(streamed, instance, None)[2])
        streamed.landing.write_status(status("tx-0", "transactions", None))
        assert "watermark" in str(evaluate(streamed, instance, None)[2])


def test_stream_mode_reads_landed_days_and_flags_rows_before_history(streamed: Stream) -> None:
    source: EventSourceResource = streamed.resources["source"]
    early = late_transaction(streamed, "2018-03-15")
    streamed.landing.land("transactions", early)
    by_day = source.read_days("transactions", "TX_DATETIME", ["2018-04-01", "2018-04-02"], "2018-04-01")
    pd.testing.assert_frame_equal(
        by_day["2018-04-01"], streamed.landing.read_day("transactions", "2018-04-01")
    )
    assert early["TRANSACTION_ID"].iloc[0] in set(by_day["2018-04-02"]["TRANSACTION_ID"]), (
        "a row before the history goes with the last day asked, where the check flags it"
    )
    assert len(by_day["2018-04-02"]) == len(of_day(streamed.transactions, "TX_DATETIME", "2018-04-02")) + 1
    with pytest.raises(ValueError, match="REPORT_DATETIME"):
        source.read_days("fraud_reports", "TX_DATETIME", ["2018-04-01"], "2018-04-01")
    assert len(source.read("customers")) == TINY.n_customers, "reference data still comes from files"


def lake_day(resources: dict[str, Any], table: str, day: str) -> pd.DataFrame:
    frame = pd.read_parquet(resources["lake"].partition_path(table, day))
    time_column = "TX_DATETIME" if table == "transactions" else "REPORT_DATETIME"
    return frame.sort_values([time_column, "TRANSACTION_ID"], ignore_index=True)


def of_day(frame: pd.DataFrame, column: str, day: str) -> pd.DataFrame:
    rows = frame[frame[column].dt.strftime("%Y-%m-%d") == day]
    return rows.sort_values([column, "TRANSACTION_ID"], ignore_index=True)


def test_ingestion_lands_the_streamed_days(streamed: Stream) -> None:
    """The sensor's run lands every complete day as streamed; a late file re-lands its day alone."""
    landing, resources = streamed.landing, streamed.resources
    watermark = streamed.transactions["TX_DATETIME"].max().to_pydatetime()
    landing.write_status(status("tx-0", "transactions", watermark))
    defs = build_definitions(resources)
    with dg.instance_for_test() as instance:
        (request,), cursor, _ = evaluate(streamed, instance, None)
        result = defs.resolve_job_def("ingestion_job").execute_in_process(
            instance=instance, tags=request.tags
        )
        assert result.success
        assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {
            "check_raw_transactions": True,
            "check_fraud_reports": True,
        }
        for day in DAYS[:-1]:
            landed = lake_day(resources, "transactions", day)
            pd.testing.assert_frame_equal(landed, of_day(streamed.transactions, "TX_DATETIME", day))
            pd.testing.assert_frame_equal(landed, landing.read_day("transactions", day))
            reports = lake_day(resources, "fraud_reports", day)
            pd.testing.assert_frame_equal(reports, of_day(streamed.reports, "REPORT_DATETIME", day))
        assert not resources["lake"].partition_path("transactions", DAYS[-1]).exists()

        late = late_transaction(streamed, "2018-04-03")
        landing.land("transactions", late)
        (relaunch,), _, _ = evaluate(streamed, instance, cursor)
        assert relaunch.partition_key == "2018-04-03"
        again = dg.materialize(
            [ingestion.raw_transactions, ingestion.fraud_reports],
            resources=resources,
            instance=instance,
            partition_key=relaunch.partition_key,
        )
        assert again.success
        expected = pd.concat([of_day(streamed.transactions, "TX_DATETIME", "2018-04-03"), late])
        pd.testing.assert_frame_equal(
            lake_day(resources, "transactions", "2018-04-03"),
            expected.sort_values(["TX_DATETIME", "TRANSACTION_ID"], ignore_index=True),
        )


def observe(resources: dict[str, Any]) -> dg.AssetObservation:
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [stream.event_stream], resources=resources, instance=instance, selection=[stream.event_stream]
        )
    (event,) = result.get_asset_observation_events()
    observation = event.asset_observation_data.asset_observation
    assert observation.asset_key == dg.AssetKey("event_stream")
    return observation


def test_observation_reports_what_has_landed(streamed: Stream, tmp_path: Path) -> None:
    landing = streamed.landing
    watermark = streamed.transactions["TX_DATETIME"].max().to_pydatetime()
    landing.write_status(status("tx-0", "transactions", watermark, landed=len(streamed.transactions)))
    landing.write_status(status("reports-0", "fraud_reports", None))
    observed = observe(streamed.resources)
    meta: dict[str, Any] = {key: value.value for key, value in observed.metadata.items()}
    assert meta["transactions_landed"] == len(streamed.transactions) == landing.count("transactions")
    assert meta["fraud_reports_landed"] == len(streamed.reports)
    assert meta["transactions_days"] == len(DAYS)
    assert meta["tx-0.events_landed"] == len(streamed.transactions)
    assert meta["tx-0.watermark"] == watermark.timestamp()
    assert meta["tx-0.freshness_s"] > 0
    assert "reports-0.watermark" not in meta and "reports-0.lag" in meta
    assert "| tx-0 |" in meta["consumers"]
    version = observed.tags["dagster/data_version"]
    landing.write_status(status("tx-0", "transactions", watermark, landed=1))
    assert observe(streamed.resources).tags["dagster/data_version"] == version, (
        "a status alone is no new data"
    )
    landing.land("transactions", late_transaction(streamed, "2018-04-02"))
    assert observe(streamed.resources).tags["dagster/data_version"] != version

    unconfigured = observe(file_mode(streamed, tmp_path))
    assert "not configured" in str(unconfigured.metadata["stream"].value)
    assert unconfigured.tags["dagster/data_version"] == "no-stream"


def test_definitions_wire_the_sensor_and_the_stream(tmp_path: Path) -> None:
    resources = build_resources(local_settings(tmp_path))
    defs = build_definitions(resources)
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    assert sensor.job_name == "ingestion_job"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("event_stream"))
    assert node.is_observable and not node.is_materializable and node.group_name == "ingestion"
    job = defs.resolve_job_def("ingestion_job")
    assert {key.to_user_string() for key in job.asset_layer.selected_asset_keys} == {
        "customers",
        "terminals",
        "raw_transactions",
        "fraud_reports",
    }
    assert timedelta(minutes=StreamSettings().complete_after_minutes) == timedelta(hours=1)
    assert resources["source"].stream_grace_minutes == StreamSettings().complete_after_minutes
