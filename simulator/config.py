"""Configuration of the transaction simulator.

The defaults reproduce the published dataset of the Fraud Detection Handbook
(5,000 customers, 10,000 terminals, 183 days from 2018-04-01), so that the
book's statistics serve as a yardstick for ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import ClassVar


@dataclass(frozen=True)
class SimulatorConfig:
    """Parameters of one simulated dataset.

    Validated on construction, so that a bad value fails at the boundary with
    a message naming the field instead of deep inside the vectorised code.

    Attributes:
        n_customers: Number of customers (cards).
        n_terminals: Number of payment terminals.
        n_days: Number of simulated days.
        start_date: First simulated day, ISO format ``YYYY-MM-DD`` (UTC).
        radius: A customer uses the terminals closer than this distance.
        seed: Seed of every random draw; equal seeds give equal datasets.
        n_compromised_terminals_per_day: Terminals compromised each day
            (scenario 2).
        terminal_compromise_days: Days during which all transactions of a
            compromised terminal are fraudulent.
        n_compromised_customers_per_day: Customers whose credentials leak each
            day (scenario 3).
        customer_compromise_days: Days during which a third of a compromised
            customer's transactions are fraudulent.
        report_delay_min_days: Shortest delay between a fraud and its report.
        report_delay_max_days: Longest delay between a fraud and its report.
        max_report_delay_days: Upper bound of ``report_delay_max_days``: the
            feature label delay (terminal risk uses labels at least 7 days
            old), so every fraud is reported before its label is used.
    """

    max_report_delay_days: ClassVar[float] = 7.0

    n_customers: int = 5000
    n_terminals: int = 10000
    n_days: int = 183
    start_date: str = "2018-04-01"
    radius: float = 5.0
    seed: int = 0
    n_compromised_terminals_per_day: int = 2
    terminal_compromise_days: int = 28
    n_compromised_customers_per_day: int = 3
    customer_compromise_days: int = 14
    report_delay_min_days: float = 1.0
    report_delay_max_days: float = 7.0

    def __post_init__(self) -> None:
        """Reject values the simulator cannot honour.

        Raises:
            ValueError: If a field is out of range, naming the field.
        """
        for name in (
            "n_customers",
            "n_terminals",
            "n_days",
            "terminal_compromise_days",
            "customer_compromise_days",
        ):
            _require_int(name, getattr(self, name), minimum=1)
        _require_int("seed", self.seed, minimum=0)
        _require_int(
            "n_compromised_terminals_per_day",
            self.n_compromised_terminals_per_day,
            minimum=0,
            maximum=self.n_terminals,
        )
        _require_int(
            "n_compromised_customers_per_day",
            self.n_compromised_customers_per_day,
            minimum=0,
            maximum=self.n_customers,
        )
        try:
            date.fromisoformat(self.start_date)
        except (TypeError, ValueError):
            raise ValueError(
                f"start_date must be an ISO date 'YYYY-MM-DD', got {self.start_date!r}"
            ) from None
        if not _is_real(self.radius) or not self.radius > 0:
            raise ValueError(f"radius must be a positive finite number, got {self.radius!r}")
        low, high = self.report_delay_min_days, self.report_delay_max_days
        if not (_is_real(low) and _is_real(high) and 0 <= low <= high):
            raise ValueError(
                "report delays must satisfy 0 <= report_delay_min_days <= report_delay_max_days, "
                f"got min={low!r}, max={high!r}"
            )
        if high > self.max_report_delay_days:
            raise ValueError(
                f"report_delay_max_days={high!r} exceeds the feature label delay of "
                f"{self.max_report_delay_days:g} days: frauds reported later would be "
                "missing from the terminal-risk features"
            )


def _require_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    """Check that ``value`` is an integer in ``[minimum, maximum]``.

    ``bool`` is refused although it subclasses ``int``: ``True`` customers is
    a caller's mistake, not a size.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        # ValueError, not TypeError: callers handle one error for any bad config.
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}")


def _is_real(value: object) -> bool:
    """Tell whether ``value`` is a finite real number (``bool`` excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
