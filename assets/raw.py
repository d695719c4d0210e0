"""Typed views of landed raw tables, for assets downstream of the blocking checks.

The lake keeps values as received; once the checks have passed, these casts
cannot fail, and every consumer reads the same dtypes.
"""

import pandas as pd

from orchestration.resources import LakeResource

TRANSACTION_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT")
REPORT_COLUMNS = ("TRANSACTION_ID", "REPORT_DATETIME")


def typed_transactions(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "TRANSACTION_ID": frame["TRANSACTION_ID"].astype("int64"),
            "TX_DATETIME": pd.to_datetime(frame["TX_DATETIME"], utc=True, format="ISO8601"),
            "CUSTOMER_ID": frame["CUSTOMER_ID"].astype("int64"),
            "TERMINAL_ID": frame["TERMINAL_ID"].astype("int64"),
            "TX_AMOUNT": pd.to_numeric(frame["TX_AMOUNT"]).astype("float64"),
        }
    )


def typed_reports(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "TRANSACTION_ID": frame["TRANSACTION_ID"].astype("int64"),
            "REPORT_DATETIME": pd.to_datetime(frame["REPORT_DATETIME"], utc=True, format="ISO8601"),
        }
    )


def load_transactions(lake: LakeResource) -> pd.DataFrame:
    """Every landed transaction, typed, in time order."""
    frame = typed_transactions(lake.read_partitions("transactions"))
    return frame.sort_values(["TX_DATETIME", "TRANSACTION_ID"], ignore_index=True)


def load_reports(lake: LakeResource) -> pd.DataFrame:
    """Every landed fraud report, typed, in report order."""
    frame = typed_reports(lake.read_partitions("fraud_reports"))
    return frame.sort_values(["REPORT_DATETIME", "TRANSACTION_ID"], ignore_index=True)
