"""Configuration of the transaction simulator.

The defaults reproduce the published dataset of the Fraud Detection Handbook
(5,000 customers, 10,000 terminals, 183 days from 2018-04-01), so that the
book's statistics serve as a yardstick for ours. The drift scenarios are off by
default: a dataset without drift is the same whether or not they exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import ClassVar, Literal, get_args

Drift = Literal["none", "card_testing", "spending_shift"]
"""What changes in the data from the drift onset day on; see :mod:`simulator.drift`."""

DRIFT_SCENARIOS: tuple[Drift, ...] = get_args(Drift)
"""The drift scenarios, in declaration order."""


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
        drift: Drift scenario, one of :data:`DRIFT_SCENARIOS`: ``"none"``,
            ``"card_testing"`` (a new fraud pattern, scenario 4) or
            ``"spending_shift"`` (legitimate amounts change, fraud does not).
        drift_start_day: Day index (0 = ``start_date``) from which the drift
            applies; in ``[1, n_days - 1]`` when ``drift`` is not ``"none"``,
            so that both sides of the onset hold data.
        card_testing_cards_per_day: Cards hit by a card-testing burst each
            day; ``None`` means :attr:`card_testing_card_share` of the
            customers (see :attr:`cards_tested_per_day`).
        card_testing_burst_min: Fewest payments in one burst.
        card_testing_burst_max: Most payments in one burst.
        card_testing_terminals: New terminals the card testers use, appended
            to the terminal table; no customer shops there.
        spending_factor: Factor on every legitimate amount after the onset
            (``"spending_shift"``).
        max_report_delay_days: Upper bound of ``report_delay_max_days``: the
            feature label delay (terminal risk uses labels at least 7 days
            old), so every fraud is reported before its label is used.
        card_testing_card_share: Default share of the customers hit each day.
            3% with bursts of 8 to 20 payments (14 on average) against about
            two legitimate payments per customer and day makes bursts about
            18% of a day's transactions, whatever the population.
        card_testing_window_seconds: A burst's payments fall within this many
            seconds of its first one.
    """

    max_report_delay_days: ClassVar[float] = 7.0
    card_testing_card_share: ClassVar[float] = 0.03
    card_testing_window_seconds: ClassVar[int] = 1800

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
    drift: Drift = "none"
    drift_start_day: int = 0
    card_testing_cards_per_day: int | None = None
    card_testing_burst_min: int = 8
    card_testing_burst_max: int = 20
    card_testing_terminals: int = 10
    spending_factor: float = 0.6

    @property
    def cards_tested_per_day(self) -> int:
        """Cards hit by a card-testing burst each day, the default resolved.

        The default scales with the population so that bursts keep the same
        share of the traffic at any dataset size.
        """
        if self.card_testing_cards_per_day is not None:
            return self.card_testing_cards_per_day
        return max(1, round(self.card_testing_card_share * self.n_customers))

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
        self._check_drift()

    def _check_drift(self) -> None:
        """Reject drift settings the simulator cannot honour.

        The scenario parameters are checked even when their scenario is off,
        so that a typo fails now rather than when the scenario is switched on.
        """
        if self.drift not in DRIFT_SCENARIOS:
            raise ValueError(f"drift must be one of {', '.join(DRIFT_SCENARIOS)}, got {self.drift!r}")
        if self.drift == "none":
            _require_int("drift_start_day", self.drift_start_day, minimum=0)
        else:
            _require_int("drift_start_day", self.drift_start_day, minimum=1, maximum=self.n_days - 1)
        if self.card_testing_cards_per_day is not None:
            _require_int(
                "card_testing_cards_per_day",
                self.card_testing_cards_per_day,
                minimum=0,
                maximum=self.n_customers,
            )
        _require_int("card_testing_burst_min", self.card_testing_burst_min, minimum=1)
        # Payments of a burst are at least a second apart inside the window.
        _require_int(
            "card_testing_burst_max",
            self.card_testing_burst_max,
            minimum=self.card_testing_burst_min,
            maximum=self.card_testing_window_seconds - 1,
        )
        _require_int("card_testing_terminals", self.card_testing_terminals, minimum=1)
        if not _is_real(self.spending_factor) or not self.spending_factor > 0:
            raise ValueError(
                f"spending_factor must be a positive finite number, got {self.spending_factor!r}"
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
