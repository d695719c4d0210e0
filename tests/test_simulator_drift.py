"""Tests of the simulator's drift scenarios: what changes after the onset, and what must not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from simulator import SimulatedData, SimulatorConfig, read_dataset, simulate
from simulator.cli import app
from simulator.drift import CARD_TESTING_SCENARIO

SMALL = SimulatorConfig(n_customers=300, n_terminals=600, n_days=60, seed=5)
ONSET = 40
DAY = 86_400


@pytest.fixture(scope="module")
def plain() -> SimulatedData:
    return simulate(SMALL)


@pytest.fixture(scope="module")
def card_testing() -> SimulatedData:
    return simulate(dataclasses.replace(SMALL, drift="card_testing", drift_start_day=ONSET))


@pytest.fixture(scope="module")
def shifted() -> SimulatedData:
    return simulate(dataclasses.replace(SMALL, drift="spending_shift", drift_start_day=ONSET))


def _before_onset(transactions: pd.DataFrame) -> pd.DataFrame:
    return transactions.loc[transactions["TX_TIME_DAYS"] < ONSET].reset_index(drop=True)


def _reports_of(data: SimulatedData, ids: pd.Series) -> pd.DataFrame:
    reports = data.fraud_reports
    return reports.loc[reports["TRANSACTION_ID"].isin(ids)].reset_index(drop=True)


def _report_delay_days(data: SimulatedData) -> pd.Series:
    sent = data.transactions.set_index("TRANSACTION_ID").loc[
        data.fraud_reports["TRANSACTION_ID"], "TX_DATETIME"
    ]
    delay = pd.DatetimeIndex(data.fraud_reports["REPORT_DATETIME"]) - pd.DatetimeIndex(sent)
    return pd.Series(delay / pd.Timedelta(days=1))


def test_default_generation_is_unchanged() -> None:
    """Fingerprint of a dataset as generated before the drift scenarios existed.

    Each number depends on one random stream (amounts: transactions; fraud
    counts: scenarios 2 and 3; report times: reports), so spawning the drift
    stream anywhere but after the others would change them.
    """
    data = simulate(SimulatorConfig(n_customers=50, n_terminals=100, n_days=10, seed=3))
    tx = data.transactions
    assert len(tx) == 613
    assert np.round(tx["TX_AMOUNT"] * 100).sum() == 3_635_585
    assert tx["TX_TIME_SECONDS"].sum() == 270_099_332
    assert (tx["TERMINAL_ID"] * (tx["TRANSACTION_ID"] % 7)).sum() == 76_120
    assert tx["TX_FRAUD_SCENARIO"].value_counts().sort_index().to_dict() == {0: 521, 2: 61, 3: 31}
    assert (data.fraud_reports["REPORT_DATETIME"].astype("int64") // 10**9).sum() == 140_161_949_110


def test_no_drift_ignores_the_scenario_settings(plain: SimulatedData) -> None:
    """With ``drift="none"`` the scenario parameters draw nothing and change nothing."""
    config = dataclasses.replace(
        SMALL,
        drift="none",
        drift_start_day=7,
        card_testing_cards_per_day=50,
        card_testing_terminals=3,
        spending_factor=2.5,
    )
    again = simulate(config)
    for name in ("customers", "terminals", "transactions", "fraud_reports"):
        pd.testing.assert_frame_equal(getattr(again, name), getattr(plain, name))


def test_card_testing_leaves_the_days_before_onset_alone(
    plain: SimulatedData, card_testing: SimulatedData
) -> None:
    before = _before_onset(card_testing.transactions)
    pd.testing.assert_frame_equal(before, _before_onset(plain.transactions))
    pd.testing.assert_frame_equal(
        _reports_of(card_testing, before["TRANSACTION_ID"]),
        _reports_of(plain, before["TRANSACTION_ID"]),
    )
    pd.testing.assert_frame_equal(card_testing.customers, plain.customers)
    pd.testing.assert_frame_equal(card_testing.terminals.iloc[: SMALL.n_terminals], plain.terminals)


def test_card_testing_keeps_the_legitimate_traffic_after_onset(
    plain: SimulatedData, card_testing: SimulatedData
) -> None:
    tx = card_testing.transactions
    others = tx.loc[tx["TX_FRAUD_SCENARIO"] != CARD_TESTING_SCENARIO].drop(columns="TRANSACTION_ID")
    pd.testing.assert_frame_equal(
        others.reset_index(drop=True), plain.transactions.drop(columns="TRANSACTION_ID")
    )


def test_card_testing_terminals_are_new_and_only_used_by_bursts(card_testing: SimulatedData) -> None:
    config = card_testing.config
    assert config is not None
    terminals = card_testing.terminals
    added = terminals.iloc[SMALL.n_terminals :]
    assert added["TERMINAL_ID"].tolist() == list(
        range(SMALL.n_terminals, SMALL.n_terminals + config.card_testing_terminals)
    )
    assert terminals["TERMINAL_ID"].is_unique
    position = added[["x_terminal_id", "y_terminal_id"]].to_numpy()
    assert ((position >= 0) & (position <= 100)).all()
    tx = card_testing.transactions
    assert tx["TERMINAL_ID"].isin(terminals["TERMINAL_ID"]).all()
    at_added = tx["TERMINAL_ID"] >= SMALL.n_terminals
    assert (at_added == (tx["TX_FRAUD_SCENARIO"] == CARD_TESTING_SCENARIO)).all()
    assert tx.loc[at_added, "TX_TIME_DAYS"].min() == ONSET
    assert tx.loc[at_added, "TERMINAL_ID"].nunique() == config.card_testing_terminals


def test_card_testing_bursts_shape(card_testing: SimulatedData) -> None:
    config = card_testing.config
    assert config is not None
    tx = card_testing.transactions
    bursts = tx.loc[tx["TX_FRAUD_SCENARIO"] == CARD_TESTING_SCENARIO]
    assert (bursts["TX_FRAUD"] == 1).all()
    assert bursts["TX_AMOUNT"].between(0.5, 5.0).all()
    assert np.allclose(bursts["TX_AMOUNT"], bursts["TX_AMOUNT"].round(2), rtol=0, atol=1e-9)

    # Cards are distinct within a day, so (day, card) names one burst.
    per_burst = bursts.groupby(["TX_TIME_DAYS", "CUSTOMER_ID"])
    size = per_burst.size()
    assert size.between(config.card_testing_burst_min, config.card_testing_burst_max).all()
    assert size.mean() == pytest.approx(14, abs=1.5)
    assert (per_burst["TERMINAL_ID"].nunique() == 1).all()
    span = per_burst["TX_TIME_SECONDS"].agg(lambda s: s.max() - s.min())
    assert span.max() < config.card_testing_window_seconds
    assert (per_burst["TX_TIME_SECONDS"].agg(lambda s: s.diff().min()) >= 1).all()

    bursts_per_day = size.groupby(level="TX_TIME_DAYS").size()
    assert bursts_per_day.index.tolist() == list(range(ONSET, SMALL.n_days))
    assert (bursts_per_day == config.cards_tested_per_day).all()
    assert config.cards_tested_per_day == 9


def test_card_testing_clock_and_ids_stay_consistent(card_testing: SimulatedData) -> None:
    tx = card_testing.transactions
    assert tx["TRANSACTION_ID"].tolist() == list(range(len(tx)))
    assert tx["TX_TIME_SECONDS"].is_monotonic_increasing
    start = pd.Timestamp(SMALL.start_date, tz="UTC")
    assert (tx["TX_DATETIME"] == start + pd.to_timedelta(tx["TX_TIME_SECONDS"], unit="s")).all()
    assert (tx["TX_TIME_DAYS"] == tx["TX_TIME_SECONDS"] // DAY).all()
    assert (tx["TX_TIME_SECONDS"] % DAY).between(1, DAY - 1).all()
    assert dict(tx.dtypes.astype(str)) == {
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


def test_card_testing_frauds_are_reported_like_the_others(card_testing: SimulatedData) -> None:
    tx = card_testing.transactions
    reports = card_testing.fraud_reports
    assert reports["TRANSACTION_ID"].is_unique
    assert set(reports["TRANSACTION_ID"]) == set(tx.loc[tx["TX_FRAUD"] == 1, "TRANSACTION_ID"])
    bursts = tx.loc[tx["TX_FRAUD_SCENARIO"] == CARD_TESTING_SCENARIO, "TRANSACTION_ID"]
    assert bursts.isin(reports["TRANSACTION_ID"]).all()
    delay = _report_delay_days(card_testing)
    assert delay.min() >= SMALL.report_delay_min_days
    assert delay.max() <= SMALL.report_delay_max_days


def test_spending_shift_leaves_the_days_before_onset_alone(
    plain: SimulatedData, shifted: SimulatedData
) -> None:
    before = _before_onset(shifted.transactions)
    pd.testing.assert_frame_equal(before, _before_onset(plain.transactions))
    pd.testing.assert_frame_equal(
        _reports_of(shifted, before["TRANSACTION_ID"]),
        _reports_of(plain, before["TRANSACTION_ID"]),
    )
    pd.testing.assert_frame_equal(shifted.terminals, plain.terminals)
    labels = ["TX_AMOUNT", "TX_FRAUD", "TX_FRAUD_SCENARIO"]
    pd.testing.assert_frame_equal(
        shifted.transactions.drop(columns=labels), plain.transactions.drop(columns=labels)
    )


def test_spending_shift_scales_legitimate_amounts(plain: SimulatedData, shifted: SimulatedData) -> None:
    factor = SMALL.spending_factor
    old, new = plain.transactions, shifted.transactions
    after = new["TX_TIME_DAYS"] >= ONSET
    unmultiplied = after & (new["TX_FRAUD_SCENARIO"] != 3)
    assert (
        new.loc[unmultiplied, "TX_AMOUNT"] == (old.loc[unmultiplied, "TX_AMOUNT"] * factor).round(2)
    ).all()

    # Same rows: each shifted amount is rounded to the cent, so the means
    # differ by at most half a cent from the exact factor.
    legit = after & (old["TX_FRAUD"] == 0)
    assert new.loc[legit, "TX_AMOUNT"].mean() == pytest.approx(
        factor * old.loc[legit, "TX_AMOUNT"].mean(), abs=0.005
    )
    # Each dataset's own legitimate rows: the shift also clears the few
    # scenario-1 amounts (above 220, about 0.1% of the rows) that fall below
    # the threshold once scaled, which moves the mean by well under 1%.
    own = new.loc[after & (new["TX_FRAUD"] == 0), "TX_AMOUNT"].mean()
    assert own == pytest.approx(factor * old.loc[legit, "TX_AMOUNT"].mean(), rel=0.01)
    assert own < 0.7 * new.loc[~after & (new["TX_FRAUD"] == 0), "TX_AMOUNT"].mean()


def test_spending_shift_keeps_the_fraud_mechanisms(plain: SimulatedData, shifted: SimulatedData) -> None:
    """Scenarios 2 and 3 pick the same payments; 1 and 3 apply their rules to the new amounts."""
    old, new = plain.transactions, shifted.transactions
    for scenario in (2, 3):
        assert ((new["TX_FRAUD_SCENARIO"] == scenario) == (old["TX_FRAUD_SCENARIO"] == scenario)).all()
    after = new["TX_TIME_DAYS"] >= ONSET
    assert (new.loc[after, "TX_FRAUD_SCENARIO"] == 3).sum() > 50

    assert (new.loc[new["TX_FRAUD_SCENARIO"] == 1, "TX_AMOUNT"] > 220).all()
    assert (new.loc[new["TX_FRAUD_SCENARIO"] == 0, "TX_AMOUNT"] <= 220).all()

    config = shifted.config
    assert config is not None
    legitimate = simulate(dataclasses.replace(config, n_compromised_customers_per_day=0)).transactions
    scenario_3 = new["TX_FRAUD_SCENARIO"] == 3
    assert np.allclose(
        new.loc[scenario_3, "TX_AMOUNT"],
        (legitimate.loc[scenario_3, "TX_AMOUNT"] * 5).round(2),
        rtol=0,
        atol=1e-9,
    )


def test_default_cards_per_day_scales_with_customers() -> None:
    assert SimulatorConfig(n_customers=1000).cards_tested_per_day == 30
    assert SimulatorConfig(n_customers=10).cards_tested_per_day == 1
    assert SimulatorConfig(n_customers=1000, card_testing_cards_per_day=4).cards_tested_per_day == 4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"drift": "concept"}, "drift must be one of none, card_testing, spending_shift"),
        ({"drift": "card_testing"}, "drift_start_day"),
        ({"drift": "spending_shift", "drift_start_day": 60}, "drift_start_day"),
        ({"drift": "card_testing", "drift_start_day": 10.5}, "drift_start_day must be an integer"),
        ({"drift_start_day": -1}, "drift_start_day"),
        ({"card_testing_cards_per_day": 301}, "card_testing_cards_per_day"),
        ({"card_testing_burst_min": 0}, "card_testing_burst_min"),
        ({"card_testing_burst_min": 9, "card_testing_burst_max": 8}, "card_testing_burst_max"),
        ({"card_testing_burst_max": 1800}, "card_testing_burst_max"),
        ({"card_testing_terminals": 0}, "card_testing_terminals"),
        ({"spending_factor": 0.0}, "spending_factor"),
        ({"spending_factor": float("inf")}, "spending_factor"),
    ],
)
def test_drift_config_validation(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **changes)  # type: ignore[arg-type]


def test_cli_generates_a_drifted_dataset(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "source"
    args = ["generate", "--out", str(out), "--customers", "100", "--terminals", "200", "--days", "10"]
    result = runner.invoke(app, [*args, "--drift", "card_testing", "--drift-start-day", "6"])
    assert result.exit_code == 0, result.output
    data = read_dataset(out)
    assert data.config is not None
    assert (data.config.drift, data.config.drift_start_day) == ("card_testing", 6)
    bursts = data.transactions.loc[data.transactions["TX_FRAUD_SCENARIO"] == CARD_TESTING_SCENARIO]
    assert len(bursts) >= 4 * 3 * 8
    assert bursts["TX_TIME_DAYS"].min() == 6
    assert bursts["TERMINAL_ID"].isin(data.terminals["TERMINAL_ID"]).all()


def test_cli_rejects_bad_drift(tmp_path: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["generate", "--out", str(tmp_path), "--drift", "concept"])
    assert unknown.exit_code != 0
    no_onset = runner.invoke(app, ["generate", "--out", str(tmp_path), "--drift", "spending_shift"])
    assert no_onset.exit_code != 0
    assert "drift_start_day" in no_onset.output
