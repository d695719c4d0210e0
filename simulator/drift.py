"""Drift scenarios: the data changes from an onset day on, as it does in production.

A model trained before the onset meets data it has not seen after it. The two
scenarios pull in opposite directions, so that monitoring can be tested on
both:

* ``"card_testing"`` is concept drift, a new fraud pattern (scenario
  :data:`CARD_TESTING_SCENARIO`): fraudsters check stolen card numbers with
  quick bursts of small payments at a few terminals of their own. Nothing the
  model learned flags them, so its recall drops.
* ``"spending_shift"`` is covariate drift only: every customer's legitimate
  amounts change by a factor, and the fraud mechanisms are unchanged (scenario
  1 still flags amounts above 220, scenario 2 still takes a compromised
  terminal's traffic, scenario 3 still multiplies the victim's own amounts by
  five). Feature distributions move, but a model should keep its outcome
  metrics: an alert on this scenario's inputs must not be read as a failure.
  (A factor below one leaves fewer amounts above 220, so scenario 1 grows
  rarer: the rule is the same, its trigger less frequent.)

Pre-onset data is the same as without drift: the scenarios draw from their own
random stream and touch only what happens on or after the onset.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.config import SimulatorConfig
from simulator.profiles import generate_terminals
from simulator.scenarios import sample_daily
from simulator.transactions import SECONDS_PER_DAY

CARD_TESTING_SCENARIO = 4
"""``TX_FRAUD_SCENARIO`` of a card-testing payment."""

CARD_TESTING_AMOUNT_MIN = 0.50
CARD_TESTING_AMOUNT_MAX = 5.00
"""Card testers pay little: they only want to learn whether the card works."""


def shift_spending(transactions: pd.DataFrame, onset_day: int, factor: float) -> pd.DataFrame:
    """Scale the legitimate amounts of every payment from ``onset_day`` on.

    Applied before the fraud scenarios label the transactions, so that they
    see the new amounts as the customers' own: the fraud mechanisms stay what
    they were.

    Args:
        transactions: Legitimate transactions with ``TX_AMOUNT`` and ``TX_TIME_DAYS``.
        onset_day: First day (index) with the new spending.
        factor: Factor on the amounts.

    Returns:
        A copy, amounts on and after the onset scaled and rounded to cents.
    """
    amount = transactions["TX_AMOUNT"].to_numpy()
    after = transactions["TX_TIME_DAYS"].to_numpy() >= onset_day
    return transactions.assign(TX_AMOUNT=np.where(after, np.round(amount * factor, 2), amount))


def card_testing_terminals(config: SimulatorConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Place the card testers' terminals on the grid.

    Their ids follow the existing terminals' (``n_terminals ..``), so that
    the terminal table stays one id range and ingestion knows them. They are
    added after the customers' terminal lists are built, so no customer
    shops there: every payment they see is card testing.

    Args:
        config: ``n_terminals`` and ``card_testing_terminals``.
        rng: The drift scenario's random stream.

    Returns:
        Rows shaped like :func:`simulator.profiles.generate_terminals`'.
    """
    terminals = generate_terminals(config.card_testing_terminals, rng)
    return terminals.assign(TERMINAL_ID=terminals["TERMINAL_ID"] + config.n_terminals)


def card_testing_bursts(
    config: SimulatorConfig, terminal_ids: np.ndarray, rng: np.random.Generator
) -> pd.DataFrame:
    """Draw the card-testing bursts, labelled as fraud scenario 4.

    Each day from the onset, :attr:`SimulatorConfig.cards_tested_per_day`
    distinct cards are tested, each by one burst: a uniform number of payments
    in ``[card_testing_burst_min, card_testing_burst_max]`` at one tester
    terminal, starting at a uniform time of the day, at least a second apart
    and all within :attr:`SimulatorConfig.card_testing_window_seconds` of the
    first, so the burst never crosses midnight. All bursts are drawn at once:
    the payments of burst ``b`` are a contiguous slice.

    Args:
        config: Onset, days and burst settings.
        terminal_ids: The testers' terminals (:func:`card_testing_terminals`).
        rng: The drift scenario's random stream.

    Returns:
        ``CUSTOMER_ID``, ``TERMINAL_ID``, ``TX_AMOUNT``, ``TX_TIME_SECONDS``,
        ``TX_TIME_DAYS``, ``TX_FRAUD`` (1) and ``TX_FRAUD_SCENARIO`` (4), the
        columns and dtypes of the labelled legitimate transactions, in burst
        order (not time order).
    """
    window = config.card_testing_window_seconds
    per_day = config.cards_tested_per_day
    days = np.arange(config.drift_start_day, config.n_days, dtype=np.int64)
    cards = sample_daily(rng, config.n_customers, per_day, len(days)).ravel()
    burst_day = np.repeat(days, per_day)
    n_bursts = len(cards)
    size = rng.integers(config.card_testing_burst_min, config.card_testing_burst_max + 1, size=n_bursts)
    terminal = rng.choice(np.asarray(terminal_ids, dtype=np.int64), size=n_bursts)
    # The last payment is at most window - 2 s after the first, so it stays before midnight.
    start = rng.integers(1, SECONDS_PER_DAY - window + 2, size=n_bursts)

    burst = np.repeat(np.arange(n_bursts), size)
    rank = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
    # Sorted uniform offsets in [0, window - size), plus the rank: strictly
    # increasing, so the payments are at least a second apart within the window.
    spread = rng.integers(0, window - size[burst])
    offset = spread[np.lexsort((spread, burst))] + rank
    amount = np.round(rng.uniform(CARD_TESTING_AMOUNT_MIN, CARD_TESTING_AMOUNT_MAX, size=len(burst)), 2)

    day = burst_day[burst]
    return pd.DataFrame(
        {
            "CUSTOMER_ID": cards[burst],
            "TERMINAL_ID": terminal[burst],
            "TX_AMOUNT": amount,
            "TX_TIME_SECONDS": day * SECONDS_PER_DAY + start[burst] + offset,
            "TX_TIME_DAYS": day,
            "TX_FRAUD": np.ones(len(burst), dtype=np.int8),
            "TX_FRAUD_SCENARIO": np.full(len(burst), CARD_TESTING_SCENARIO, dtype=np.int8),
        }
    )


def add_card_testing(
    terminals: pd.DataFrame,
    transactions: pd.DataFrame,
    config: SimulatorConfig,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add the testers' terminals and their bursts to a labelled dataset.

    Args:
        terminals: The customers' terminals.
        transactions: Transactions labelled by the three handbook scenarios.
        config: Drift settings.
        rng: The drift scenario's random stream.

    Returns:
        The terminals with the testers' appended, and the transactions with
        the bursts appended (to be put in time order afterwards).
    """
    testers = card_testing_terminals(config, rng)
    bursts = card_testing_bursts(config, testers["TERMINAL_ID"].to_numpy(), rng)
    return (
        pd.concat([terminals, testers], ignore_index=True),
        pd.concat([transactions, bursts], ignore_index=True),
    )
