"""Tests for the handbook's evaluation protocol: splits, card precision, metrics."""

import numpy as np
import pandas as pd
import pytest

from modeling.metrics import card_precision_top_k, fraud_metrics
from modeling.split import (
    HANDBOOK_SPLIT,
    SplitWindow,
    prequential_folds,
    train_test_split,
    utc_day,
)


def _utc(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


def _transactions(rows: list[tuple[str, int, int]]) -> pd.DataFrame:
    """Build transactions from (day, customer, fraud), at noon UTC, ids in row order."""
    days, customers, frauds = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(len(rows), dtype="int64"),
            "TX_DATETIME": pd.to_datetime(list(days)).tz_localize("UTC") + pd.Timedelta(hours=12),
            "CUSTOMER_ID": np.array(customers, dtype="int64"),
            "TX_AMOUNT": 10.0,
            "TX_FRAUD": np.array(frauds, dtype="int64"),
        }
    )


def _daily(customers: list[int], start: str, end: str, frauds: dict[int, set[str]]) -> pd.DataFrame:
    """One transaction per customer per day in [start, end], fraud on the given days."""
    rows = [
        (
            day.strftime("%Y-%m-%d"),
            c,
            int(day.strftime("%Y-%m-%d") in frauds.get(c, set())),
        )
        for day in pd.date_range(start, end)
        for c in customers
    ]
    return _transactions(rows)


def _book_test_set(df: pd.DataFrame, window: SplitWindow) -> set[int]:
    """Transaction ids of the test set, computed day by day as the book's loop does."""
    days = utc_day(df["TX_DATETIME"])
    in_train = (days >= window.train_start) & (days < window.train_end)
    known = set(df.loc[in_train & (df["TX_FRAUD"] == 1), "CUSTOMER_ID"])
    kept: set[int] = set()
    for d in range(window.test_days):
        report_day = window.train_end + pd.Timedelta(days=d - 1)
        known |= set(df.loc[(days == report_day) & (df["TX_FRAUD"] == 1), "CUSTOMER_ID"])
        test_day = window.test_start + pd.Timedelta(days=d)
        today = df[(days == test_day) & ~df["CUSTOMER_ID"].isin(known)]
        kept |= set(today["TRANSACTION_ID"])
    return kept


def test_handbook_split_dates() -> None:
    assert HANDBOOK_SPLIT.train_start == _utc("2018-07-25")
    assert HANDBOOK_SPLIT.train_end == _utc("2018-08-01")
    assert HANDBOOK_SPLIT.test_start == _utc("2018-08-08")
    assert HANDBOOK_SPLIT.test_end == _utc("2018-08-15")


def test_shifted_moves_whole_test_periods() -> None:
    earlier = HANDBOOK_SPLIT.shifted(2)
    assert earlier.train_start == _utc("2018-07-11")
    assert earlier.test_start == _utc("2018-07-25")
    assert HANDBOOK_SPLIT.shifted(-1).test_end == _utc("2018-08-22")
    assert SplitWindow(_utc("2018-07-25"), 3, 0, 2).shifted(1) == SplitWindow(_utc("2018-07-23"), 3, 0, 2)
    assert HANDBOOK_SPLIT.earlier(14).test_end == _utc("2018-08-01")


@pytest.mark.parametrize(
    ("start", "days"),
    [
        (pd.Timestamp("2018-07-25"), (7, 7, 7)),
        (pd.Timestamp("2018-07-25 06:00", tz="UTC"), (7, 7, 7)),
        (pd.Timestamp("2018-07-25", tz="Europe/Brussels"), (7, 7, 7)),
        (_utc("2018-07-25"), (0, 7, 7)),
        (_utc("2018-07-25"), (7, -1, 7)),
        (_utc("2018-07-25"), (7, 7, 0)),
    ],
)
def test_invalid_windows_are_rejected(start: pd.Timestamp, days: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        SplitWindow(start, *days)


def test_split_periods_and_order() -> None:
    df = _daily([1, 2], "2018-07-20", "2018-08-20", {1: {"2018-07-20"}, 2: {"2018-07-26"}})
    train, test = train_test_split(df.iloc[::-1], HANDBOOK_SPLIT)

    train_days = utc_day(train["TX_DATETIME"])
    assert train_days.min() == _utc("2018-07-25")
    assert train_days.max() == _utc("2018-07-31")
    assert len(train) == 14
    test_days = utc_day(test["TX_DATETIME"])
    assert test_days.min() == _utc("2018-08-08")
    assert test_days.max() == _utc("2018-08-14")
    assert train["TRANSACTION_ID"].is_monotonic_increasing
    assert test["TRANSACTION_ID"].is_monotonic_increasing
    assert (df.loc[test.index, "TRANSACTION_ID"] == test["TRANSACTION_ID"]).all()


def test_known_compromised_cards_leave_the_test_set() -> None:
    frauds = {
        1: {"2018-07-28"},  # in training: known before the test starts
        2: {"2018-08-03"},  # in the delay: reported 7 days later, gone from 08-11
        3: {"2018-08-06"},  # in the delay: gone from 08-14
        4: {"2018-08-08"},  # in the test: not yet reported in the test week
        5: {"2018-07-20"},  # before training: the book ignores it
    }
    df = _daily([1, 2, 3, 4, 5, 6], "2018-07-20", "2018-08-20", frauds)
    _, test = train_test_split(df, HANDBOOK_SPLIT)

    test_days = pd.date_range("2018-08-08", "2018-08-14", tz="UTC")
    last_day = {
        2: _utc("2018-08-10"),
        3: _utc("2018-08-13"),
        4: test_days[-1],
        5: test_days[-1],
        6: test_days[-1],
    }
    kept = test.groupby("CUSTOMER_ID")["TX_DATETIME"].agg(["min", "max", "size"])
    assert 1 not in kept.index
    for card, last in last_day.items():
        assert utc_day(kept["min"])[card] == test_days[0]
        assert utc_day(kept["max"])[card] == last
        assert kept.loc[card, "size"] == (last - test_days[0]).days + 1
    assert test.loc[test["CUSTOMER_ID"] == 4, "TX_FRAUD"].sum() == 1


@pytest.mark.parametrize("window", [HANDBOOK_SPLIT, SplitWindow(_utc("2018-07-27"), 5, 0, 4)])
def test_removal_matches_the_books_day_by_day_loop(window: SplitWindow) -> None:
    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(n, dtype="int64"),
            "TX_DATETIME": _utc("2018-07-15") + pd.to_timedelta(rng.integers(0, 40 * 86400, n), unit="s"),
            "CUSTOMER_ID": rng.integers(0, 60, n).astype("int64"),
            "TX_FRAUD": (rng.random(n) < 0.05).astype("int64"),
        }
    )
    _, test = train_test_split(df, window)
    assert set(test["TRANSACTION_ID"]) == _book_test_set(df, window)
    assert (
        len(test)
        < (
            (utc_day(df["TX_DATETIME"]) >= window.test_start) & (utc_day(df["TX_DATETIME"]) < window.test_end)
        ).sum()
    )


def test_split_errors() -> None:
    df = _daily([1, 2], "2018-07-25", "2018-08-14", {1: {"2018-07-26"}})
    with pytest.raises(ValueError, match="no transactions in training"):
        train_test_split(df, HANDBOOK_SPLIT.shifted(-10))
    with pytest.raises(ValueError, match="no fraud in training"):
        train_test_split(df.assign(TX_FRAUD=0), HANDBOOK_SPLIT)
    with pytest.raises(ValueError, match="no transactions left in test"):
        train_test_split(df[df["CUSTOMER_ID"] == 1], HANDBOOK_SPLIT)
    with pytest.raises(ValueError, match="missing columns"):
        train_test_split(df.drop(columns="CUSTOMER_ID"), HANDBOOK_SPLIT)
    with pytest.raises(TypeError, match="timezone-aware"):
        train_test_split(
            df.assign(TX_DATETIME=df["TX_DATETIME"].dt.tz_localize(None)),
            HANDBOOK_SPLIT,
        )


def test_prequential_folds_step_back_a_week_each() -> None:
    df = _daily(
        [1, 2],
        "2018-07-01",
        "2018-08-20",
        {1: {"2018-07-04", "2018-07-12", "2018-07-19", "2018-07-27"}},
    )
    folds = prequential_folds(df, HANDBOOK_SPLIT, n_folds=3)

    assert len(folds) == 3
    for k, (train, test) in enumerate(folds):
        window = HANDBOOK_SPLIT.shifted(k)
        assert utc_day(train["TX_DATETIME"]).min() == window.train_start
        assert utc_day(train["TX_DATETIME"]).max() == window.train_end - pd.Timedelta(days=1)
        assert utc_day(test["TX_DATETIME"]).min() == window.test_start
        assert utc_day(test["TX_DATETIME"]).max() == window.test_end - pd.Timedelta(days=1)
    assert utc_day(folds[2][1]["TX_DATETIME"]).min() == _utc("2018-07-25")


def test_prequential_folds_errors() -> None:
    df = _daily([1, 2], "2018-07-18", "2018-08-20", {1: {"2018-07-27"}})
    with pytest.raises(ValueError, match="n_folds"):
        prequential_folds(df, HANDBOOK_SPLIT, n_folds=0)
    with pytest.raises(ValueError, match="fold 1: no fraud in training"):
        prequential_folds(df, HANDBOOK_SPLIT, n_folds=2)


def _scored(rows: list[tuple[int, int, int, float]]) -> pd.DataFrame:
    """Build predictions from (day index, customer, fraud, score)."""
    day, customer, fraud, score = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "TX_DATETIME": _utc("2018-08-08")
            + pd.to_timedelta(np.array(day), unit="D")
            + pd.Timedelta(hours=9),
            "CUSTOMER_ID": np.array(customer, dtype="int64"),
            "TX_FRAUD": np.array(fraud, dtype="int64"),
            "prediction": np.array(score, dtype=float),
        }
    )


def test_card_precision_takes_each_cards_max_score_and_label() -> None:
    predictions = _scored(
        [
            (0, 1, 0, 0.9),
            (0, 1, 1, 0.1),  # card 1: max score 0.9, max label 1
            (0, 2, 0, 0.8),
            (0, 3, 1, 0.7),
            (0, 4, 1, 0.2),
        ]
    )
    assert card_precision_top_k(predictions, top_k=2) == pytest.approx(0.5)
    assert card_precision_top_k(predictions, top_k=3) == pytest.approx(2 / 3)
    # Fewer cards than k: still divided by k, as in the book.
    assert card_precision_top_k(predictions, top_k=10) == pytest.approx(3 / 10)


def test_card_precision_drops_only_detected_cards_on_later_days() -> None:
    predictions = _scored(
        [
            (0, 1, 1, 0.9),  # day 0 alerts {1, 2}: card 1 detected
            (0, 2, 0, 0.8),  # false alert: stays in later days
            (1, 1, 0, 0.9),
            (1, 2, 0, 0.85),
            (1, 3, 1, 0.8),
            (1, 4, 1, 0.1),
        ]
    )
    # Day 1 without card 1: {2, 3} -> 1/2. Keeping card 1 would give {1, 2} -> 0;
    # dropping the false alert too would give {3, 4} -> 1.
    assert card_precision_top_k(predictions, top_k=2) == pytest.approx(0.5)


def test_card_precision_keeps_missed_frauded_cards() -> None:
    predictions = _scored(
        [
            (0, 1, 1, 0.9),
            (0, 2, 0, 0.8),
            (0, 3, 1, 0.1),  # compromised but not in day 0's alerts
            (1, 3, 1, 0.9),
            (1, 4, 0, 0.8),
        ]
    )
    # Day 1: {3, 4} -> 1/2; card 3 was never detected, so it still counts.
    assert card_precision_top_k(predictions, top_k=2) == pytest.approx(0.5)


def test_card_precision_day_with_only_detected_cards_scores_zero() -> None:
    predictions = _scored([(0, 1, 1, 0.9), (1, 1, 1, 0.9)])
    assert card_precision_top_k(predictions, top_k=1) == pytest.approx(0.5)


def test_card_precision_breaks_ties_by_customer_id() -> None:
    predictions = _scored([(0, 5, 0, 0.5), (0, 7, 1, 0.5), (0, 3, 1, 0.5), (0, 9, 1, 0.9)])
    # Top 2: card 9, then the tie at 0.5 goes to card 3 (fraud).
    assert card_precision_top_k(predictions, top_k=2) == pytest.approx(1.0)
    # Top 3 adds card 5 (genuine) before card 7.
    assert card_precision_top_k(predictions, top_k=3) == pytest.approx(2 / 3)


def test_card_precision_groups_by_utc_day_or_day_keys() -> None:
    late = _scored([(0, 1, 1, 0.9), (0, 2, 1, 0.8)])
    late["TX_DATETIME"] = late["TX_DATETIME"].dt.tz_convert("Asia/Tokyo") + pd.Timedelta(hours=14.5)
    # 09:00 + 14:30 is 23:30 UTC: same UTC day, so card 1 and 2 compete for one slot.
    assert card_precision_top_k(late, top_k=1) == pytest.approx(1.0)
    keyed = late.drop(columns="TX_DATETIME").assign(TX_TIME_DAYS=[130, 131])
    assert card_precision_top_k(keyed, top_k=1, day_column="TX_TIME_DAYS") == pytest.approx(1.0)
    keyed["TX_TIME_DAYS"] = [130, 130]
    assert card_precision_top_k(keyed, top_k=2, day_column="TX_TIME_DAYS") == pytest.approx(1.0)


def test_card_precision_errors() -> None:
    predictions = _scored([(0, 1, 1, 0.9)])
    with pytest.raises(ValueError, match="top_k"):
        card_precision_top_k(predictions, top_k=0)
    with pytest.raises(ValueError, match="missing columns"):
        card_precision_top_k(predictions.drop(columns="prediction"))
    with pytest.raises(ValueError, match="no predictions"):
        card_precision_top_k(predictions.iloc[:0])
    naive = predictions.assign(TX_DATETIME=predictions["TX_DATETIME"].dt.tz_localize(None))
    with pytest.raises(TypeError, match="timezone-aware"):
        card_precision_top_k(naive)


def _random_test_set(seed: int, n_days: int = 7, cards_per_day: int = 2000) -> pd.DataFrame:
    """Fresh cards each day, 10 % of them compromised."""
    rng = np.random.default_rng(seed)
    n = n_days * cards_per_day
    return pd.DataFrame(
        {
            "TX_DATETIME": _utc("2018-08-08")
            + pd.to_timedelta(np.repeat(np.arange(n_days), cards_per_day), unit="D"),
            "CUSTOMER_ID": np.arange(n, dtype="int64"),
            "TX_FRAUD": (rng.random(n) < 0.1).astype("int64"),
        }
    )


def test_perfect_scorer() -> None:
    test = _random_test_set(seed=1)
    scores = test["TX_FRAUD"] + np.random.default_rng(2).random(len(test)) * 0.5
    result = fraud_metrics(test["TX_FRAUD"], scores, test)
    assert result == {
        "roc_auc": 1.0,
        "average_precision": 1.0,
        "card_precision_at_100": 1.0,
    }


def test_random_scorer() -> None:
    test = _random_test_set(seed=3)
    scores = np.random.default_rng(4).random(len(test))
    result = fraud_metrics(test["TX_FRAUD"].to_numpy(), scores, test, top_k=500)
    assert set(result) == {"roc_auc", "average_precision", "card_precision_at_500"}
    assert result["roc_auc"] == pytest.approx(0.5, abs=0.03)
    assert result["average_precision"] == pytest.approx(0.1, abs=0.02)
    assert result["card_precision_at_500"] == pytest.approx(0.1, abs=0.02)


def test_fraud_metrics_without_predictions_df_skips_card_precision() -> None:
    result = fraud_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert result == {
        "roc_auc": pytest.approx(0.75),
        "average_precision": pytest.approx(5 / 6),
    }


def test_fraud_metrics_errors() -> None:
    with pytest.raises(ValueError, match="both fraud"):
        fraud_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0/1 labels"):
        fraud_metrics([1, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="shape"):
        fraud_metrics([0, 1, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="rows"):
        fraud_metrics([0, 1], [0.1, 0.2], _scored([(0, 1, 1, 0.9)]))


def _plain_card_precision(rows: pd.DataFrame, top_k: int) -> float:
    """Card precision written with plain dicts, as a second opinion."""
    detected: set[int] = set()
    daily = []
    for _, day_rows in sorted(rows.groupby(utc_day(rows["TX_DATETIME"]))):
        cards: dict[int, tuple[float, int]] = {}
        for card, fraud, score in zip(
            day_rows["CUSTOMER_ID"], day_rows["TX_FRAUD"], day_rows["prediction"], strict=True
        ):
            if card not in detected:
                best = cards.get(card, (-np.inf, 0))
                cards[card] = (max(best[0], score), max(best[1], fraud))
        ranked = sorted(cards.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top_k]
        caught = {card for card, (_, fraud) in ranked if fraud == 1}
        daily.append(len(caught) / top_k)
        detected |= caught
    return float(np.mean(daily))


def test_card_precision_matches_a_plain_implementation() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    rows = _scored(
        list(
            zip(
                rng.integers(0, 7, n).tolist(),
                rng.integers(0, 300, n).tolist(),
                (rng.random(n) < 0.2).astype(int).tolist(),
                rng.integers(0, 50, n).astype(float).tolist(),  # many ties
                strict=True,
            )
        )
    )
    for top_k in (1, 20, 100):
        assert card_precision_top_k(rows, top_k) == pytest.approx(_plain_card_precision(rows, top_k))
