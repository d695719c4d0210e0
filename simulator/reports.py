"""Fraud reports: how and when the system learns that a transaction was fraud."""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.transactions import SECONDS_PER_DAY


def generate_reports(
    transactions: pd.DataFrame,
    min_delay_days: float,
    max_delay_days: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Report every fraudulent transaction once, some time after it happened.

    Labels do not arrive with the payment: a cardholder disputes it days
    later. The delay is uniform (continuous, in seconds) so that reports
    spread over the day instead of arriving at the payment's time of day.
    Legitimate transactions are never reported.

    Args:
        transactions: Labelled transactions with ``TRANSACTION_ID``,
            ``TX_DATETIME`` and ``TX_FRAUD``.
        min_delay_days: Shortest delay, in days.
        max_delay_days: Longest delay, in days.
        rng: Random stream reserved for reports.

    Returns:
        ``TRANSACTION_ID`` and ``REPORT_DATETIME``, sorted by report time (then
        transaction id), the order in which a consumer receives them.
    """
    fraud = transactions.loc[transactions["TX_FRAUD"] == 1]
    delay = rng.uniform(
        min_delay_days * SECONDS_PER_DAY,
        max_delay_days * SECONDS_PER_DAY,
        size=len(fraud),
    )
    reports = pd.DataFrame(
        {
            "TRANSACTION_ID": fraud["TRANSACTION_ID"].to_numpy(),
            "REPORT_DATETIME": pd.DatetimeIndex(fraud["TX_DATETIME"]) + pd.to_timedelta(delay, unit="s"),
        }
    )
    return reports.sort_values(["REPORT_DATETIME", "TRANSACTION_ID"], kind="stable", ignore_index=True)
