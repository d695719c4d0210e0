"""The handbook's three fraud scenarios, applied to all transactions at once.

Scenarios are applied in the book's order (1, then 2, then 3); a later one
overrides the scenario label of an earlier one on the same transaction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.config import SimulatorConfig

AMOUNT_THRESHOLD = 220.0
"""Scenario 1: any payment above this amount is fraud."""

AMOUNT_FACTOR = 5
"""Scenario 3: fraudsters multiply the amounts of the payments they make."""

FRAUD_SHARE = 3
"""Scenario 3: one transaction in this many of a compromised customer is fraud."""


def sample_daily(rng: np.random.Generator, population: int, per_day: int, n_days: int) -> np.ndarray:
    """Choose ``per_day`` distinct ids out of ``population`` for each day.

    Args:
        rng: Random stream of the scenario.
        population: Number of ids to choose from (``0 .. population - 1``).
        per_day: Ids chosen each day, distinct within a day.
        n_days: Number of days with a choice.

    Returns:
        Array of shape ``(n_days, per_day)``; row ``d`` is compromised on day ``d``.
    """
    rows = [rng.choice(population, size=per_day, replace=False) for _ in range(n_days)]
    return np.array(rows, dtype=np.int64).reshape(n_days, per_day)


def compromise_days(n_days: int) -> int:
    """Number of days on which new compromises start.

    The handbook starts them on days ``0 .. last day - 1`` (its loop runs
    over ``range(max day)``); doing the same keeps our fraud counts
    comparable with its published ones.
    """
    return max(n_days - 1, 0)


def terminal_compromise_mask(
    terminal_ids: np.ndarray,
    days: np.ndarray,
    schedule: np.ndarray,
    duration: int,
    n_terminals: int,
    n_days: int,
) -> np.ndarray:
    """Tell which transactions happen at a terminal while it is compromised.

    A (terminal, day) table built from a difference array and a cumulative
    sum marks every compromised day of every terminal, so each transaction is
    a single table lookup, and overlapping compromises of one terminal merge.

    Args:
        terminal_ids: Terminal of each transaction.
        days: Day index of each transaction.
        schedule: ``schedule[d]`` holds the terminals compromised on day ``d``.
        duration: Days (the start day included) a compromise lasts.
        n_terminals: Number of terminals.
        n_days: Number of simulated days.

    Returns:
        Boolean mask over the transactions.
    """
    start = np.repeat(np.arange(len(schedule), dtype=np.int64), schedule.shape[1])
    compromised = schedule.ravel()
    change = np.zeros((n_terminals, n_days + 1), dtype=np.int32)
    np.add.at(change, (compromised, start), 1)
    np.add.at(change, (compromised, np.minimum(start + duration, n_days)), -1)
    active: np.ndarray = np.cumsum(change, axis=1)[:, :n_days] > 0
    return np.asarray(active[terminal_ids, days])


def customer_compromise_picks(
    customer_ids: np.ndarray,
    days: np.ndarray,
    schedule: np.ndarray,
    duration: int,
    n_days: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Pick the fraudulent transactions of compromised customers.

    For each compromise (customer, start day), a third (rounded down) of the
    customer's transactions in the next ``duration`` days is drawn without
    replacement, as the book does. All compromises are drawn together: each
    one's transactions are a contiguous slice, shuffled by random keys, and
    the head of each shuffled slice is kept.

    Args:
        customer_ids: Customer of each transaction, sorted by (customer, day).
        days: Day index of each transaction, sorted within a customer.
        schedule: ``schedule[d]`` holds the customers compromised on day ``d``.
        duration: Days (the start day included) a compromise lasts.
        n_days: Number of simulated days.
        rng: Random stream of scenario 3.

    Returns:
        Sorted, distinct positions of the picked transactions.
    """
    start = np.repeat(np.arange(len(schedule), dtype=np.int64), schedule.shape[1])
    victim = schedule.ravel()
    key = customer_ids * n_days + days
    first = np.searchsorted(key, victim * n_days + start)
    last = np.searchsorted(key, victim * n_days + np.minimum(start + duration, n_days))
    size = last - first
    compromise = np.repeat(np.arange(len(victim)), size)
    rank = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
    shuffled = np.lexsort((rng.random(len(compromise)), compromise))
    position = (np.repeat(first, size) + rank)[shuffled]
    return np.unique(position[rank < np.repeat(size // FRAUD_SHARE, size)])


def apply_scenarios(
    transactions: pd.DataFrame,
    config: SimulatorConfig,
    terminal_rng: np.random.Generator,
    customer_rng: np.random.Generator,
) -> pd.DataFrame:
    """Label the transactions with the three scenarios, in the book's order.

    Scenario 1 tests the amount the customer would have paid, so it runs
    before scenario 3 changes amounts. A picked scenario-3 transaction's
    amount is multiplied by :data:`AMOUNT_FACTOR` once, even when two
    compromises of one customer overlap (the book would multiply twice), so
    every scenario-3 amount is exactly five times the legitimate one.

    Args:
        transactions: Legitimate transactions in (customer, day) order.
        config: Scenario sizes and durations.
        terminal_rng: Random stream reserved for scenario 2.
        customer_rng: Random stream reserved for scenario 3.

    Returns:
        A copy with scenario-3 amounts and the ``TX_FRAUD`` (0/1) and
        ``TX_FRAUD_SCENARIO`` (0 for legitimate, else 1 to 3) columns.
    """
    amount = transactions["TX_AMOUNT"].to_numpy().copy()
    days = transactions["TX_TIME_DAYS"].to_numpy()
    scenario = np.zeros(len(transactions), dtype=np.int8)
    scenario[amount > AMOUNT_THRESHOLD] = 1

    n_starts = compromise_days(config.n_days)
    terminals = sample_daily(
        terminal_rng,
        config.n_terminals,
        config.n_compromised_terminals_per_day,
        n_starts,
    )
    at_compromised_terminal = terminal_compromise_mask(
        transactions["TERMINAL_ID"].to_numpy(),
        days,
        terminals,
        config.terminal_compromise_days,
        config.n_terminals,
        config.n_days,
    )
    scenario[at_compromised_terminal] = 2

    customers = sample_daily(
        customer_rng,
        config.n_customers,
        config.n_compromised_customers_per_day,
        n_starts,
    )
    picked = customer_compromise_picks(
        transactions["CUSTOMER_ID"].to_numpy(),
        days,
        customers,
        config.customer_compromise_days,
        config.n_days,
        customer_rng,
    )
    scenario[picked] = 3
    amount[picked] = np.round(amount[picked] * AMOUNT_FACTOR, 2)

    return transactions.assign(
        TX_AMOUNT=amount,
        TX_FRAUD=(scenario > 0).astype(np.int8),
        TX_FRAUD_SCENARIO=scenario,
    )
