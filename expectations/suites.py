"""The expectation suites: raw transactions, fraud reports, training set.

Raw data arrives untyped (JSON off a bus, CSV exports), so a raw suite runs on
a *validation view*: the raw text of each field, for the rules about form
(numeric, timezone given), beside the field parsed leniently, for the rules
about value (non-negative, known id, inside the partition's day). A value
that does not parse is null in the parsed column and caught by a form rule,
so each bad value is counted under the rule it breaks (a missing timestamp
breaks two: it is missing, and it is no timestamp).
"""

from __future__ import annotations

from collections.abc import Iterable

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd

from expectations.runner import new_suite
from expectations.timestamps import lenient_utc
from feature_repo.contract import MAX_AMOUNT, MAX_FIELD_CHARS, REPORT_FIELDS, TRANSACTION_FIELDS
from feature_repo.windows import LABEL_DELAY_DAYS, MODEL_FEATURES, Aggregation, FeatureGroup

INTEGER_TEXT = r"^\d+$"
NUMBER_TEXT = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
AWARE_TIMESTAMP_TEXT = r"([+-]\d{2}:?\d{2}|Z|UTC)$"
RAW = "__raw"


def raw_name(column: str) -> str:
    return f"{column}{RAW}"


def _text(values: pd.Series) -> pd.Series:
    """Each value as text, nulls kept null: what the form rules read."""
    return values.astype("string").where(values.notna())


def validation_view(frame: pd.DataFrame, fields: Iterable[str], times: Iterable[str]) -> pd.DataFrame:
    """Raw text and leniently parsed value of each field present; absent fields stay absent."""
    view = {}
    times = set(times)
    for column in fields:
        if column not in frame.columns:
            continue
        values = frame[column]
        view[raw_name(column)] = _text(values)
        if column in times:
            view[column] = lenient_utc(values)
        else:
            view[column] = pd.to_numeric(values, errors="coerce")
    return pd.DataFrame(view, index=frame.index)


LANDED = "__landed"
DELAY_DAYS = "__delay_days"


def renames(fields: Iterable[str]) -> dict[str, str]:
    """Helper column -> the column a person knows it as, for failure messages."""
    return {
        **{raw_name(c): c for c in fields},
        f"TRANSACTION_ID{LANDED}": "TRANSACTION_ID",
        f"REPORT_DATETIME{DELAY_DAYS}": "REPORT_DATETIME",
    }


def _present(column: str) -> list[gxe.Expectation]:
    return [
        gxe.ExpectColumnToExist(column=raw_name(column), description=f"{column} must be present"),
        gxe.ExpectColumnValuesToNotBeNull(column=raw_name(column), description="must not be missing"),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column=raw_name(column),
            max_value=MAX_FIELD_CHARS,
            description=f"at most {MAX_FIELD_CHARS} characters",
        ),
    ]


def _identified_rows(fields: Iterable[str], unique: str) -> list[gxe.Expectation]:
    """Every field present and short; TRANSACTION_ID a non-negative integer, unique."""
    return [
        *(expectation for column in fields for expectation in _present(column)),
        gxe.ExpectColumnValuesToMatchRegex(
            column=raw_name("TRANSACTION_ID"),
            regex=INTEGER_TEXT,
            description="must be a non-negative integer",
        ),
        gxe.ExpectColumnValuesToBeUnique(column="TRANSACTION_ID", description=unique),
    ]


def _in_day(
    column: str, window_start: pd.Timestamp, window_end: pd.Timestamp, now: pd.Timestamp
) -> list[gxe.Expectation]:
    latest = min(window_end, now)
    return [
        gxe.ExpectColumnValuesToMatchRegex(
            column=raw_name(column), regex=AWARE_TIMESTAMP_TEXT, description="timestamp must carry a timezone"
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column=column, description="must be an ISO 8601 timestamp between 1677 and 2262"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=column,
            min_value=window_start.to_pydatetime(),
            max_value=latest.to_pydatetime(),
            strict_max=latest == window_end,
            description=(
                f"in [{window_start.isoformat()}, {latest.isoformat()}): the landed days, not the future"
            ),
        ),
    ]


def raw_transactions_suite(
    customers: Iterable[int],
    terminals: Iterable[int],
    window_start: pd.Timestamp,
    window_end: pd.Timestamp,
    now: pd.Timestamp,
) -> gx.ExpectationSuite:
    """Rules every landed transaction must meet before features are built on it."""
    suite = new_suite("raw_transactions")
    for expectation in (
        *_identified_rows(TRANSACTION_FIELDS, "must be unique"),
        gxe.ExpectColumnValuesToBeInSet(
            column=f"TRANSACTION_ID{LANDED}", value_set=[False], description="must not be landed already"
        ),
        *(
            gxe.ExpectColumnValuesToMatchRegex(
                column=raw_name(column), regex=INTEGER_TEXT, description="must be a non-negative integer"
            )
            for column in ("CUSTOMER_ID", "TERMINAL_ID")
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column=raw_name("TX_AMOUNT"), regex=NUMBER_TEXT, description="must be a finite number"
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="TX_AMOUNT", description="must parse to a finite number"),
        gxe.ExpectColumnValuesToBeBetween(
            column="TX_AMOUNT", min_value=0, description="must not be negative"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="TX_AMOUNT",
            max_value=MAX_AMOUNT,
            strict_max=True,
            description=f"must be less than {MAX_AMOUNT:,.0f}",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="CUSTOMER_ID", value_set=sorted(set(customers)), description="must be a known customer"
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="TERMINAL_ID", value_set=sorted(set(terminals)), description="must be a known terminal"
        ),
        *_in_day("TX_DATETIME", window_start, window_end, now),
    ):
        suite.add_expectation(expectation)
    return suite


def fraud_reports_suite(
    window_start: pd.Timestamp, window_end: pd.Timestamp, now: pd.Timestamp
) -> gx.ExpectationSuite:
    """Rules every landed fraud report must meet before it becomes a label."""
    suite = new_suite("fraud_reports")
    for expectation in (
        *_identified_rows(REPORT_FIELDS, "one report per transaction"),
        gxe.ExpectColumnValuesToBeInSet(
            column=f"TRANSACTION_ID{LANDED}", value_set=[True], description="must name a landed transaction"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=f"REPORT_DATETIME{DELAY_DAYS}",
            min_value=0,
            max_value=LABEL_DELAY_DAYS,
            description=f"must come 0 to {LABEL_DELAY_DAYS} days after its transaction",
        ),
        *_in_day("REPORT_DATETIME", window_start, window_end, now),
    ):
        suite.add_expectation(expectation)
    return suite


def training_set_suite(groups: Iterable[FeatureGroup]) -> gx.ExpectationSuite:
    """What the model may assume of its training rows."""
    suite = new_suite("training_set")
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1, description="must not be empty"))
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeUnique(column="TRANSACTION_ID", description="one row per transaction")
    )
    suite.add_expectation(
        gxe.ExpectColumnDistinctValuesToEqualSet(
            column="TX_FRAUD", value_set=[0, 1], description="both classes present"
        )
    )
    for column in MODEL_FEATURES:
        suite.add_expectation(
            gxe.ExpectColumnValuesToNotBeNull(column=column, description="feature must be set")
        )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(column="TX_AMOUNT", min_value=0, description="must not be negative")
    )
    for column in ("TX_DURING_WEEKEND", "TX_DURING_NIGHT"):
        suite.add_expectation(
            gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[0, 1], description="a 0/1 flag")
        )
    for group in groups:
        for feature in group.features:
            upper = 1 if feature.aggregation is Aggregation.RATE else None
            suite.add_expectation(
                gxe.ExpectColumnValuesToBeBetween(
                    column=feature.name,
                    min_value=0,
                    max_value=upper,
                    description="a rate in [0, 1]" if upper else "must not be negative",
                )
            )
    return suite
