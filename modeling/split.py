"""Time-based train/test splits that mimic how a fraud system is really evaluated.

A model is trained on a week of labelled transactions and judged on a later
week. Between the two lies a delay: investigators need days to confirm a
fraud, so the freshest labels are not yet known when the model goes live.
Cards already known compromised are blocked in production, so scoring them
would flatter the model; they are taken out of the test set.
"""

from dataclasses import dataclass

import pandas as pd

_REQUIRED_COLUMNS = ("TX_DATETIME", "CUSTOMER_ID", "TX_FRAUD")


@dataclass(frozen=True)
class SplitWindow:
    """A training period, a label delay, then a test period, in whole UTC days.

    Attributes:
        train_start: First training day, a UTC midnight.
        train_days: Length of the training period.
        delay_days: Days between training and test whose labels are not yet
            known when the model is trained, and the lag with which frauds
            become known during the test period.
        test_days: Length of the test period.
    """

    train_start: pd.Timestamp
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7

    def __post_init__(self) -> None:
        """Reject windows that would silently mis-split the data."""
        if self.train_start.tzinfo is None:
            raise ValueError("train_start must be timezone-aware (UTC midnight)")
        if self.train_start != self.train_start.tz_convert("UTC").normalize():
            raise ValueError(f"train_start must be a UTC midnight, got {self.train_start}")
        if self.train_days < 1 or self.test_days < 1:
            raise ValueError("train_days and test_days must be at least 1")
        if self.delay_days < 0:
            raise ValueError("delay_days must not be negative")

    @property
    def train_end(self) -> pd.Timestamp:
        """Exclusive end of the training period."""
        return self.train_start + pd.Timedelta(days=self.train_days)

    @property
    def test_start(self) -> pd.Timestamp:
        """Inclusive start of the test period, after the delay."""
        return self.train_end + pd.Timedelta(days=self.delay_days)

    @property
    def test_end(self) -> pd.Timestamp:
        """Exclusive end of the test period."""
        return self.test_start + pd.Timedelta(days=self.test_days)

    def shifted(self, periods: int) -> "SplitWindow":
        """Return the same window moved ``periods`` test periods earlier (later if negative).

        Prequential validation builds its folds this way, as the handbook's
        ``prequentialSplit`` does: each fold trains and tests on a stretch one
        assessment (test) period older than the last.
        """
        return self.earlier(periods * self.test_days)

    def earlier(self, days: int) -> "SplitWindow":
        """Return the same window moved ``days`` days earlier (later if negative)."""
        return SplitWindow(
            train_start=self.train_start - pd.Timedelta(days=days),
            train_days=self.train_days,
            delay_days=self.delay_days,
            test_days=self.test_days,
        )


HANDBOOK_SPLIT = SplitWindow(pd.Timestamp("2018-07-25", tz="UTC"))
"""The handbook's baseline: train 07-25..07-31, delay 7 days, test 08-08..08-14 (2018)."""


def utc_day(timestamps: pd.Series) -> pd.Series:
    """Map timestamps to the UTC midnight of their calendar day.

    Args:
        timestamps: Timezone-aware datetimes.

    Returns:
        The UTC midnights, same index.

    Raises:
        TypeError: If the datetimes are timezone-naive, since their day would
            be ambiguous.
    """
    if not isinstance(timestamps.dtype, pd.DatetimeTZDtype):
        raise TypeError(f"{timestamps.name} must be timezone-aware datetimes (UTC)")
    days: pd.Series = timestamps.dt.tz_convert("UTC").dt.normalize()
    return days


def train_test_split(df: pd.DataFrame, window: SplitWindow) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split labelled transactions into the window's training and test sets.

    Follows the handbook's ``get_train_test_set``. The training set is every
    transaction in [train_start, train_end). The test set is every transaction
    in [test_start, test_end), except that a transaction on test day ``t`` is
    dropped when its card (CUSTOMER_ID) had a fraud on any day in
    [train_start, t - delay_days): a fraud in training, or in the delay and
    test periods early enough to have been reported by day ``t``. With the
    default 7-day delay that is "a fraud in training or on any day up to
    t - 8". Frauds before train_start do not count, as in the book.

    Args:
        df: Labelled transactions with TX_DATETIME (UTC), CUSTOMER_ID and
            TX_FRAUD; other columns are carried through.
        window: The periods to cut.

    Returns:
        (train, test), each sorted by TRANSACTION_ID when that column exists,
        keeping the original index so callers can map rows back.

    Raises:
        ValueError: If a required column is missing, the training set is
            empty or has no fraud to learn from, or the test set is empty.
        TypeError: If TX_DATETIME is timezone-naive.
    """
    missing = [c for c in _REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"missing columns: {missing}")
    days = utc_day(df["TX_DATETIME"])
    fraud = df["TX_FRAUD"] == 1

    train = df[(days >= window.train_start) & (days < window.train_end)]
    if train.empty:
        raise ValueError(f"no transactions in training window [{window.train_start}, {window.train_end})")
    if not (train["TX_FRAUD"] == 1).any():
        raise ValueError(f"no fraud in training window [{window.train_start}, {window.train_end})")

    delay = pd.Timedelta(days=window.delay_days)
    reportable = fraud & (days >= window.train_start) & (days < window.test_end - delay)
    first_fraud_day = days[reportable].groupby(df.loc[reportable, "CUSTOMER_ID"]).min()

    in_test = (days >= window.test_start) & (days < window.test_end)
    known_since = df.loc[in_test, "CUSTOMER_ID"].map(first_fraud_day)
    # A never-defrauded card maps to NaT, which compares False: it is kept.
    compromised = known_since < days[in_test] - delay
    test = df[in_test][~compromised.to_numpy()]
    if test.empty:
        raise ValueError(f"no transactions left in test window [{window.test_start}, {window.test_end})")

    if "TRANSACTION_ID" in df.columns:
        train = train.sort_values("TRANSACTION_ID", kind="stable")
        test = test.sort_values("TRANSACTION_ID", kind="stable")
    return train, test


def prequential_folds(
    df: pd.DataFrame, window: SplitWindow, n_folds: int
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Cut ``n_folds`` train/test splits, each one test period older than the last.

    Fold k uses ``window.shifted(k)``, as the handbook's ``prequentialSplit``
    moves its training start back by k assessment periods. Fold 0 is ``window`` itself, so pass the
    window whose test period is the validation week. Averaging a model's score
    over the folds gives a steadier estimate than one week alone.

    Args:
        df: Labelled transactions, as for ``train_test_split``.
        window: The most recent fold's window.
        n_folds: Number of folds, at least 1.

    Returns:
        The (train, test) pairs, most recent first.

    Raises:
        ValueError: If n_folds < 1, or a fold cannot be split; the message
            names the fold.
    """
    if n_folds < 1:
        raise ValueError(f"n_folds must be at least 1, got {n_folds}")
    folds = []
    for k in range(n_folds):
        try:
            folds.append(train_test_split(df, window.shifted(k)))
        except ValueError as err:
            raise ValueError(f"fold {k}: {err}") from err
    return folds
