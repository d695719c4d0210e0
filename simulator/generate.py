"""End-to-end generation of a dataset from a configuration."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from simulator.config import SimulatorConfig
from simulator.data import SimulatedData
from simulator.drift import add_card_testing, shift_spending
from simulator.profiles import (
    generate_customers,
    generate_terminals,
    terminals_within_radius,
)
from simulator.reports import generate_reports
from simulator.scenarios import apply_scenarios
from simulator.transactions import generate_transactions

STAGES = (
    "profiles",
    "terminal lists",
    "transactions",
    "frauds",
    "time order",
    "reports",
)
"""Generation stages, in order; the progress bar advances once per stage."""

DEFAULT_CONFIG = SimulatorConfig()
"""The handbook's published dataset."""

_STREAMS = (
    "customers",
    "terminals",
    "transactions",
    "scenario 2",
    "scenario 3",
    "reports",
    "drift",
)
"""Random streams, one per stage, in spawn order. A new stream goes at the end:
child ``i`` of a seed sequence depends on ``i`` only, so the existing streams,
and the data of a run without drift, stay what they were."""


def simulate(config: SimulatorConfig = DEFAULT_CONFIG, progress: bool = False) -> SimulatedData:
    """Simulate customers, terminals, transactions, frauds and fraud reports.

    Each stage draws from its own random stream, spawned from ``config.seed``
    in a fixed order, so a change to one stage's settings (say the report
    delays) leaves what the other stages draw unchanged.

    A drift scenario (``config.drift``, see :mod:`simulator.drift`) changes
    the data from ``config.drift_start_day`` on and leaves the days before it
    as they are without drift: a spending shift scales the legitimate
    amounts before the fraud scenarios label them; card testing adds its
    terminals and bursts after, so the handbook's scenarios never pick a
    burst payment.

    Args:
        config: What to simulate.
        progress: Show a progress bar over the generation stages.

    Returns:
        The dataset, transactions in time order with ids ``0 .. n-1``.
    """
    rng = dict(
        zip(
            _STREAMS,
            np.random.default_rng(config.seed).spawn(len(_STREAMS)),
            strict=True,
        )
    )
    with tqdm(total=len(STAGES), desc="simulate", unit="stage", disable=not progress) as bar:
        bar.set_postfix_str(STAGES[0])
        customers = generate_customers(config.n_customers, rng["customers"])
        terminals = generate_terminals(config.n_terminals, rng["terminals"])
        _advance(bar)
        terminal_lists = terminals_within_radius(customers, terminals, config.radius)
        _advance(bar)
        transactions = generate_transactions(customers, terminal_lists, config.n_days, rng["transactions"])
        if config.drift == "spending_shift":
            transactions = shift_spending(transactions, config.drift_start_day, config.spending_factor)
        _advance(bar)
        transactions = apply_scenarios(transactions, config, rng["scenario 2"], rng["scenario 3"])
        if config.drift == "card_testing":
            terminals, transactions = add_card_testing(terminals, transactions, config, rng["drift"])
        _advance(bar)
        transactions = _in_time_order(transactions, config.start_date)
        _advance(bar)
        reports = generate_reports(
            transactions,
            config.report_delay_min_days,
            config.report_delay_max_days,
            rng["reports"],
        )
        _advance(bar)
    return SimulatedData(customers, terminals, transactions, reports, config)


def _in_time_order(transactions: pd.DataFrame, start_date: str) -> pd.DataFrame:
    """Sort by time, number the transactions, and add their UTC timestamps.

    The sort is stable, so payments at the same second keep the (customer,
    day) generation order and the ids stay deterministic.
    """
    order = np.argsort(transactions["TX_TIME_SECONDS"].to_numpy(), kind="stable")
    ordered = transactions.iloc[order].reset_index(drop=True)
    seconds = ordered["TX_TIME_SECONDS"].to_numpy()
    ordered.insert(0, "TRANSACTION_ID", np.arange(len(ordered), dtype=np.int64))
    ordered.insert(
        1,
        "TX_DATETIME",
        pd.Timestamp(start_date, tz="UTC") + pd.to_timedelta(seconds, unit="s"),
    )
    return ordered


def _advance(bar: tqdm[Any]) -> None:
    """Count one more stage done and name the next one on the bar."""
    bar.update()
    done = int(bar.n)
    if done < len(STAGES):
        bar.set_postfix_str(STAGES[done])
