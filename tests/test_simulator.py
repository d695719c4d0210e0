"""Tests of the transaction simulator: determinism, schema, statistics, I/O, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from simulator import (
    SimulatedData,
    SimulatorConfig,
    read_dataset,
    simulate,
    write_dataset,
)
from simulator.cli import app
from simulator.scenarios import customer_compromise_picks, terminal_compromise_mask

SMALL = SimulatorConfig(n_customers=500, n_terminals=1000, n_days=60, seed=7)
DAY = 86_400


@pytest.fixture(scope="module")
def small() -> SimulatedData:
    """A small dataset shared by the read-only tests."""
    return simulate(SMALL)


@pytest.fixture(scope="module")
def medium() -> SimulatedData:
    """Enough compromises for the fraud statistics to be stable."""
    return simulate(SimulatorConfig(n_customers=2000, n_terminals=4000, n_days=90, seed=3))


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_same_seed_same_data_and_other_seed_differs(small: SimulatedData) -> None:
    again = simulate(SMALL)
    for name in ("customers", "terminals", "transactions", "fraud_reports"):
        pd.testing.assert_frame_equal(getattr(small, name), getattr(again, name))
    other = simulate(dataclasses.replace(SMALL, seed=8))
    assert not small.transactions["TX_AMOUNT"].equals(other.transactions["TX_AMOUNT"])


def test_schema_and_dtypes(small: SimulatedData) -> None:
    assert dict(small.customers.dtypes.astype(str)) == {
        "CUSTOMER_ID": "int64",
        "x_customer_id": "float64",
        "y_customer_id": "float64",
        "mean_amount": "float64",
        "std_amount": "float64",
        "mean_nb_tx_per_day": "float64",
    }
    assert dict(small.terminals.dtypes.astype(str)) == {
        "TERMINAL_ID": "int64",
        "x_terminal_id": "float64",
        "y_terminal_id": "float64",
    }
    assert dict(small.transactions.dtypes.astype(str)) == {
        "TRANSACTION_ID": "int64",
        "TX_DATETIME": "datetime64[ns, UTC]",
        "CUSTOMER_ID": "int64",
        "TERMINAL_ID": "int64",
        "TX_AMOUNT": "float64",
        "TX_TIME_SECONDS": "int64",
        "TX_TIME_DAYS": "int64",
        "TX_FRAUD": "int8",
        "TX_FRAUD_SCENARIO": "int8",
    }
    assert dict(small.fraud_reports.dtypes.astype(str)) == {
        "TRANSACTION_ID": "int64",
        "REPORT_DATETIME": "datetime64[ns, UTC]",
    }


def test_transactions_ordered_and_consistent(small: SimulatedData) -> None:
    tx = small.transactions
    assert len(tx) > 10_000
    assert tx["TRANSACTION_ID"].to_numpy().tolist() == list(range(len(tx)))
    assert tx["TX_DATETIME"].is_monotonic_increasing
    start = pd.Timestamp(SMALL.start_date, tz="UTC")
    assert (tx["TX_DATETIME"] == start + pd.to_timedelta(tx["TX_TIME_SECONDS"], unit="s")).all()
    time_of_day = tx["TX_TIME_SECONDS"] - tx["TX_TIME_DAYS"] * DAY
    assert time_of_day.between(1, DAY - 1).all()
    assert tx["TX_TIME_DAYS"].between(0, SMALL.n_days - 1).all()
    assert tx["CUSTOMER_ID"].between(0, SMALL.n_customers - 1).all()
    assert tx["TERMINAL_ID"].between(0, SMALL.n_terminals - 1).all()
    amounts = tx["TX_AMOUNT"]
    assert (amounts >= 0).all()
    assert np.allclose(amounts, amounts.round(2), rtol=0, atol=1e-9)
    assert ((tx["TX_FRAUD"] == 1) == (tx["TX_FRAUD_SCENARIO"] > 0)).all()
    assert set(tx["TX_FRAUD_SCENARIO"].unique()) <= {0, 1, 2, 3}


def test_customers_only_use_terminals_within_radius(small: SimulatedData) -> None:
    tx = small.transactions
    customer = small.customers.set_index("CUSTOMER_ID").loc[tx["CUSTOMER_ID"]]
    terminal = small.terminals.set_index("TERMINAL_ID").loc[tx["TERMINAL_ID"]]
    dx = customer["x_customer_id"].to_numpy() - terminal["x_terminal_id"].to_numpy()
    dy = customer["y_customer_id"].to_numpy() - terminal["y_terminal_id"].to_numpy()
    assert (np.hypot(dx, dy) < SMALL.radius).all()


def test_transaction_volume_matches_profiles(small: SimulatedData) -> None:
    customers, terminals = small.customers, small.terminals
    cx = customers[["x_customer_id", "y_customer_id"]].to_numpy()
    tx_xy = terminals[["x_terminal_id", "y_terminal_id"]].to_numpy()
    has_terminal = (np.linalg.norm(cx[:, None] - tx_xy[None], axis=2) < SMALL.radius).any(axis=1)
    kept = _normal_cdf(43_200 / 20_000) - _normal_cdf((1 - 43_200) / 20_000)
    expected = customers["mean_nb_tx_per_day"][has_terminal].sum() * SMALL.n_days * kept
    assert len(small.transactions) == pytest.approx(expected, rel=0.02)
    assert has_terminal[small.transactions["CUSTOMER_ID"].unique()].all()


def test_scenarios_against_a_run_without_compromises() -> None:
    """Scenario 1 uses the original amount; scenario 3 multiplies it by five.

    Scenario 2 and 3 draw from their own random streams, so switching them off
    leaves the legitimate transactions, and their ids, unchanged.
    """
    config = dataclasses.replace(SMALL, seed=11)
    full = simulate(config).transactions
    base = simulate(
        dataclasses.replace(config, n_compromised_terminals_per_day=0, n_compromised_customers_per_day=0)
    ).transactions
    assert base["TX_FRAUD_SCENARIO"].isin([0, 1]).all()
    assert (base["TX_FRAUD"] == (base["TX_AMOUNT"] > 220)).all()
    pd.testing.assert_frame_equal(
        full.drop(columns=["TX_AMOUNT", "TX_FRAUD", "TX_FRAUD_SCENARIO"]),
        base.drop(columns=["TX_AMOUNT", "TX_FRAUD", "TX_FRAUD_SCENARIO"]),
    )
    assert (full.loc[base["TX_AMOUNT"] > 220, "TX_FRAUD"] == 1).all()
    scenario_3 = full["TX_FRAUD_SCENARIO"] == 3
    assert scenario_3.sum() > 100
    assert np.allclose(
        full.loc[scenario_3, "TX_AMOUNT"],
        (base.loc[scenario_3, "TX_AMOUNT"] * 5).round(2),
    )
    assert (full.loc[~scenario_3, "TX_AMOUNT"] == base.loc[~scenario_3, "TX_AMOUNT"]).all()
    assert (full.loc[base["TX_FRAUD"] == 1, "TX_FRAUD"] == 1).all()


def test_scenario_2_frauds_cover_whole_terminal_days(medium: SimulatedData) -> None:
    tx = medium.transactions
    hit = tx.loc[tx["TX_FRAUD_SCENARIO"] == 2, ["TERMINAL_ID", "TX_TIME_DAYS"]].drop_duplicates()
    same_day = tx.merge(hit, on=["TERMINAL_ID", "TX_TIME_DAYS"])
    assert same_day["TX_FRAUD_SCENARIO"].isin([2, 3]).all()


def test_terminal_compromise_mask_windows() -> None:
    schedule = np.array([[1, 2], [3, 1], [0, 4]])
    terminals = np.array([1, 1, 1, 1, 2, 2, 3, 3, 0, 0, 4])
    days = np.array([0, 3, 4, 5, 3, 4, 1, 5, 1, 2, 5])
    mask = terminal_compromise_mask(terminals, days, schedule, duration=4, n_terminals=5, n_days=6)
    # terminal 1: compromised day 0 and again day 1, so days 0..4
    # terminal 2: days 0..3; terminal 3: days 1..4; terminal 0 and 4: days 2..5
    expected = [True, True, True, False, True, False, True, False, False, True, True]
    assert mask.tolist() == expected


def test_customer_compromise_picks_a_third_within_window() -> None:
    rng = np.random.default_rng(0)
    customers = np.repeat([0, 1, 2], 30)
    days = np.tile(np.repeat(np.arange(10), 3), 3)
    schedule = np.array([[1], [2]])
    picked = customer_compromise_picks(customers, days, schedule, 5, 10, rng)
    # customer 1 from day 0: days 0..4, 15 tx -> 5; customer 2 from day 1: days 1..5, 15 -> 5
    assert len(picked) == 10
    assert np.sum(customers[picked] == 1) == 5
    assert days[picked][customers[picked] == 1].max() <= 4
    assert days[picked][customers[picked] == 2].min() >= 1
    assert days[picked][customers[picked] == 2].max() <= 5


def test_fraud_mix_is_the_books(medium: SimulatedData) -> None:
    """Each scenario's share matches the number of victims it keeps compromised.

    A victim compromised on day ``s`` stays so for ``min(duration, n_days - s)``
    days; scenario 2 takes all of a terminal's traffic, scenario 3 a third of a
    customer's, so the shares follow from the mean victim-days.
    """
    tx = medium.transactions
    n_days, starts = 90, np.arange(89)
    share = tx["TX_FRAUD_SCENARIO"].value_counts(normalize=True)
    terminal_days = 2 * np.minimum(28, n_days - starts).sum()
    customer_days = 3 * np.minimum(14, n_days - starts).sum()
    assert share[2] == pytest.approx(terminal_days / (4000 * n_days), rel=0.2)
    assert share[3] == pytest.approx(customer_days / 3 / (2000 * n_days), rel=0.2)
    assert 0 < share[1] < 0.002


def test_one_report_per_fraud_within_delay(small: SimulatedData) -> None:
    tx = small.transactions.set_index("TRANSACTION_ID")
    reports = small.fraud_reports
    assert reports["REPORT_DATETIME"].is_monotonic_increasing
    assert reports["TRANSACTION_ID"].is_unique
    assert set(reports["TRANSACTION_ID"]) == set(tx.index[tx["TX_FRAUD"] == 1])
    delay = (
        reports["REPORT_DATETIME"].to_numpy() - tx.loc[reports["TRANSACTION_ID"], "TX_DATETIME"].to_numpy()
    )
    days = pd.to_timedelta(delay) / pd.Timedelta(days=1)
    assert days.min() >= SMALL.report_delay_min_days
    assert days.max() <= SMALL.report_delay_max_days
    assert days.max() - days.min() > 4


def test_report_delays_follow_config() -> None:
    config = dataclasses.replace(SMALL, report_delay_min_days=2.0, report_delay_max_days=2.5)
    data = simulate(config)
    tx = data.transactions.set_index("TRANSACTION_ID")
    sent = tx.loc[data.fraud_reports["TRANSACTION_ID"], "TX_DATETIME"].to_numpy()
    delay = data.fraud_reports["REPORT_DATETIME"].to_numpy() - sent
    days = pd.to_timedelta(delay) / pd.Timedelta(days=1)
    assert days.min() >= 2.0
    assert days.max() <= 2.5


def test_events_hide_labels(small: SimulatedData) -> None:
    events = small.events()
    assert list(events.columns) == [
        "TRANSACTION_ID",
        "TX_DATETIME",
        "CUSTOMER_ID",
        "TERMINAL_ID",
        "TX_AMOUNT",
    ]
    assert len(events) == len(small.transactions)


def test_write_read_round_trip(small: SimulatedData, tmp_path: Path) -> None:
    paths = write_dataset(small, tmp_path / "out")
    assert {path.name for path in paths.values()} == {
        "customers.parquet",
        "terminals.parquet",
        "transactions.parquet",
        "fraud_reports.parquet",
        "ground_truth.parquet",
        "config.json",
    }
    assert "TX_FRAUD" not in pd.read_parquet(paths["transactions"]).columns
    assert json.loads(paths["config"].read_text()) == dataclasses.asdict(SMALL)
    back = read_dataset(tmp_path / "out")
    assert back.config == SMALL
    for name in ("customers", "terminals", "transactions", "fraud_reports"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(small, name))


def test_round_trip_without_config(small: SimulatedData, tmp_path: Path) -> None:
    """Hand-assembled data has no config: the clock restarts at the first day."""
    bare = dataclasses.replace(small, config=None)
    write_dataset(bare, tmp_path)
    back = read_dataset(tmp_path)
    assert back.config is None
    pd.testing.assert_frame_equal(back.transactions, small.transactions)


def test_read_names_the_missing_file(small: SimulatedData, tmp_path: Path) -> None:
    write_dataset(small, tmp_path)
    (tmp_path / "ground_truth.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"ground_truth\.parquet"):
        read_dataset(tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_customers": 0}, "n_customers"),
        ({"n_terminals": -5}, "n_terminals"),
        ({"n_days": 1.5}, "n_days must be an integer"),
        ({"seed": -1}, "seed"),
        ({"radius": 0.0}, "radius"),
        ({"radius": float("nan")}, "radius"),
        ({"start_date": "01/04/2018"}, "start_date"),
        (
            {"n_compromised_terminals_per_day": 20_000},
            "n_compromised_terminals_per_day",
        ),
        ({"customer_compromise_days": 0}, "customer_compromise_days"),
        ({"report_delay_min_days": -1.0}, "report delays"),
        ({"report_delay_min_days": 5.0, "report_delay_max_days": 3.0}, "report delays"),
        ({"report_delay_max_days": 8.0}, "feature label delay"),
    ],
)
def test_config_validation(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulatorConfig(**changes)  # type: ignore[arg-type]


def test_cli_generate_and_stats(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "source"
    args = ["generate", "--out", str(out), "--customers", "100", "--terminals", "200"]
    result = runner.invoke(app, [*args, "--days", "10", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "fraud rate" in result.output
    assert (out / "ground_truth.parquet").is_file()
    result = runner.invoke(app, ["stats", "--data", str(out)])
    assert result.exit_code == 0, result.output
    assert "transactions" in result.output


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_delay = runner.invoke(app, ["generate", "--out", str(tmp_path), "--report-delay-max", "9"])
    assert bad_delay.exit_code != 0
    assert "exceeds" in bad_delay.output
    assert runner.invoke(app, ["generate", "--customers", "0"]).exit_code != 0
    missing = runner.invoke(app, ["stats", "--data", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1
    assert "missing" in missing.output
