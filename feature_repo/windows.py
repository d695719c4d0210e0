"""Declarative window features: the one definition both feature paths read.

A window feature is written once as data (entity, window length, label delay,
aggregation). The offline engine (`feature_repo.engine`) evaluates it for
point-in-time training sets and the Feast feature views are generated from it,
so training and serving cannot drift apart by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Aggregation(StrEnum):
    """How a window is reduced; `rate` is the share of labelled-positive events."""

    COUNT = "count"
    MEAN = "mean"
    RATE = "rate"


@dataclass(frozen=True)
class WindowFeature:
    """One feature: `aggregation` of the entity's events in (t - delay - window, t - delay].

    Attributes:
        name: the column name, also the Feast field name.
        window_days: window length n.
        aggregation: count, mean of `value_column`, or rate of the label.
        value_column: the event column averaged by `mean`.
    """

    name: str
    window_days: int
    aggregation: Aggregation
    value_column: str | None = None

    def __post_init__(self) -> None:
        if self.window_days <= 0:
            raise ValueError(f"{self.name}: window_days must be positive, got {self.window_days}")
        if (self.aggregation is Aggregation.MEAN) != (self.value_column is not None):
            raise ValueError(f"{self.name}: value_column is required by, and only by, a mean")


@dataclass(frozen=True)
class FeatureGroup:
    """Window features of one entity sharing a delay: one Feast feature view.

    Attributes:
        name: the feature view name.
        entity: the Feast entity name.
        join_key: the event column that identifies the entity.
        delay_days: d; windows end at t - d. A group that reads labels needs
            d at least the longest label (fraud report) delay, or it would read
            labels that are not known yet at t.
        features: the window features, evaluated together.
    """

    name: str
    entity: str
    join_key: str
    delay_days: int
    features: tuple[WindowFeature, ...]

    @property
    def uses_labels(self) -> bool:
        return any(f.aggregation is Aggregation.RATE for f in self.features)

    @property
    def horizon_days(self) -> int:
        """How far back any feature of the group looks: older rows are stale."""
        return self.delay_days + max(f.window_days for f in self.features)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


# --- Fraud use case (docs/use_case.md): the only fraud-specific part of this module.

WINDOWS_DAYS = (1, 7, 30)
LABEL_DELAY_DAYS = 7

CUSTOMER_SPENDING = FeatureGroup(
    name="customer_spending",
    entity="customer",
    join_key="CUSTOMER_ID",
    delay_days=0,
    features=tuple(
        feature
        for n in WINDOWS_DAYS
        for feature in (
            WindowFeature(f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW", n, Aggregation.COUNT),
            WindowFeature(f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW", n, Aggregation.MEAN, "TX_AMOUNT"),
        )
    ),
)

TERMINAL_RISK = FeatureGroup(
    name="terminal_risk",
    entity="terminal",
    join_key="TERMINAL_ID",
    delay_days=LABEL_DELAY_DAYS,
    features=tuple(
        feature
        for n in WINDOWS_DAYS
        for feature in (
            WindowFeature(f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW", n, Aggregation.COUNT),
            WindowFeature(f"TERMINAL_ID_RISK_{n}DAY_WINDOW", n, Aggregation.RATE),
        )
    ),
)

FEATURE_GROUPS: tuple[FeatureGroup, ...] = (CUSTOMER_SPENDING, TERMINAL_RISK)

REQUEST_FEATURES = ("TX_AMOUNT",)
ON_DEMAND_FEATURES = ("TX_DURING_WEEKEND", "TX_DURING_NIGHT")

MODEL_FEATURES: tuple[str, ...] = (
    *REQUEST_FEATURES,
    *ON_DEMAND_FEATURES,
    *CUSTOMER_SPENDING.feature_names,
    *TERMINAL_RISK.feature_names,
)
"""The model's 15 inputs, in the column order it is trained and served with."""

FEATURE_SERVICE_NAME = "fraud_model_v1"

LABEL = "TX_FRAUD"
"""The training target: 1 when the transaction was reported as fraud."""
