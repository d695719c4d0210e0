"""The simulated dataset, as one object."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from simulator.config import SimulatorConfig

EVENT_COLUMNS = [
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
]
"""What a payment carries when it reaches the system: no label, no simulation clock."""

LABEL_COLUMNS = ["TRANSACTION_ID", "TX_FRAUD", "TX_FRAUD_SCENARIO"]
"""The ground truth, known only to the simulator."""


@dataclass
class SimulatedData:
    """Profiles, transactions with their ground truth, and fraud reports.

    Attributes:
        customers: ``CUSTOMER_ID`` (int64), ``x_customer_id``,
            ``y_customer_id``, ``mean_amount``, ``std_amount``,
            ``mean_nb_tx_per_day`` (float64).
        terminals: ``TERMINAL_ID`` (int64), ``x_terminal_id``,
            ``y_terminal_id`` (float64).
        transactions: Ground truth sorted by ``TX_DATETIME`` then
            ``TRANSACTION_ID`` (0 .. n-1 in time order): ``TX_DATETIME``
            (UTC), ``CUSTOMER_ID``, ``TERMINAL_ID``, ``TX_AMOUNT`` (cents),
            ``TX_TIME_SECONDS`` and ``TX_TIME_DAYS`` (since the start date),
            ``TX_FRAUD`` and ``TX_FRAUD_SCENARIO`` (int8, scenario 0 is legitimate,
            4 is card testing: :mod:`simulator.drift`).
        fraud_reports: ``TRANSACTION_ID`` and ``REPORT_DATETIME`` (UTC), one
            per fraud, sorted by ``REPORT_DATETIME``.
        config: The configuration that generated the data; ``None`` for data
            assembled by hand.
    """

    customers: pd.DataFrame
    terminals: pd.DataFrame
    transactions: pd.DataFrame
    fraud_reports: pd.DataFrame
    config: SimulatorConfig | None = None

    def events(self) -> pd.DataFrame:
        """Return the transactions as the system sees them arrive.

        The labels and the simulation clock columns are dropped, so that no
        consumer of raw events can leak the ground truth into features.

        Returns:
            A new frame with :data:`EVENT_COLUMNS`, in time order.
        """
        return self.transactions[EVENT_COLUMNS].copy()
