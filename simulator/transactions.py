"""Legitimate transactions: every customer's daily payments, drawn at once."""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.profiles import TerminalLists

SECONDS_PER_DAY = 86_400
TIME_OF_DAY_MEAN = SECONDS_PER_DAY / 2
TIME_OF_DAY_STD = 20_000.0


def generate_transactions(
    customers: pd.DataFrame,
    terminal_lists: TerminalLists,
    n_days: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Draw the transactions of all customers over ``n_days`` days.

    Follows the handbook's per-customer, per-day recipe, vectorised over all
    (customer, day) pairs: a Poisson number of payments, each at a normal
    time of day (discarded, not redrawn, outside the day), a normal amount
    (redrawn uniformly if negative) and a terminal drawn uniformly from the
    customer's list. A customer without terminals makes no payment.

    Args:
        customers: Customer profiles, one row per ``CUSTOMER_ID`` in id order.
        terminal_lists: Usable terminals of each customer.
        n_days: Number of simulated days.
        rng: Random stream reserved for the transactions.

    Returns:
        ``CUSTOMER_ID``, ``TERMINAL_ID``, ``TX_AMOUNT``, ``TX_TIME_SECONDS``,
        ``TX_TIME_DAYS``, in (customer, day) order so that a customer's
        transactions over a span of days are one contiguous slice.
    """
    mean_nb = customers["mean_nb_tx_per_day"].to_numpy()
    nb_tx = rng.poisson(mean_nb[:, None], size=(len(customers), n_days))
    nb_tx[terminal_lists.counts == 0] = 0
    customer_day = np.repeat(np.arange(nb_tx.size, dtype=np.int64), nb_tx.ravel())
    customer, day = np.divmod(customer_day, n_days)

    time_of_day = np.trunc(rng.normal(TIME_OF_DAY_MEAN, TIME_OF_DAY_STD, size=len(customer)))
    kept = (time_of_day > 0) & (time_of_day < SECONDS_PER_DAY)
    customer, day, time_of_day = (
        customer[kept],
        day[kept],
        time_of_day[kept].astype(np.int64),
    )

    mean_amount = customers["mean_amount"].to_numpy()[customer]
    amount = rng.normal(mean_amount, customers["std_amount"].to_numpy()[customer])
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean_amount[negative])

    pick = rng.integers(0, terminal_lists.counts[customer])
    terminal = terminal_lists.terminal_ids[terminal_lists.offsets[customer] + pick]

    return pd.DataFrame(
        {
            "CUSTOMER_ID": customer,
            "TERMINAL_ID": terminal,
            "TX_AMOUNT": np.round(amount, 2),
            "TX_TIME_SECONDS": day * SECONDS_PER_DAY + time_of_day,
            "TX_TIME_DAYS": day,
        }
    )
