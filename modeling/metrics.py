"""Fraud-detection metrics: threshold-free ranking quality and card precision@k.

ROC AUC and average precision judge the whole ranking of transactions. Card
precision@k judges what investigators actually see: each day they can check
only k cards, so what matters is how many of the day's k most suspicious
cards are really compromised.
"""

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import (
    average_precision_score,
    roc_auc_score,
)

from modeling.split import utc_day


def card_precision_top_k(
    predictions: pd.DataFrame,
    top_k: int = 100,
    *,
    score_column: str = "prediction",
    day_column: str = "TX_DATETIME",
) -> float:
    """Mean daily share of truly compromised cards among the k most suspicious.

    Follows the handbook's ``card_precision_top_k``. Days are taken in order.
    On each day, transactions of cards already detected on an earlier day are
    dropped, since an investigated card is blocked; each remaining card gets
    its highest score and its highest label; the k highest-scoring cards are
    the day's alerts; the fraudulent ones among them count as detected, and the
    day's precision is their number divided by k (even when fewer than k cards
    remain, as in the book). The result is the mean over the days present.

    Ties in score are broken by ascending CUSTOMER_ID. The book leaves them to
    an unstable sort, so its result on tied scores is arbitrary; a fixed order
    keeps ours reproducible.

    Args:
        predictions: One row per scored transaction, with CUSTOMER_ID,
            TX_FRAUD, the score column and the day column.
        top_k: Cards investigated per day.
        score_column: Column holding the fraud score.
        day_column: Either timezone-aware datetimes, grouped by UTC calendar
            day, or ready-made day keys (for instance the book's TX_TIME_DAYS).

    Returns:
        The mean card precision@k over days.

    Raises:
        ValueError: If top_k < 1, a column is missing or there are no rows.
        TypeError: If the day column holds timezone-naive datetimes.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    missing = [
        c for c in ("CUSTOMER_ID", "TX_FRAUD", score_column, day_column) if c not in predictions.columns
    ]
    if missing:
        raise ValueError(f"missing columns: {missing}")
    if predictions.empty:
        raise ValueError("no predictions to assess")

    day_values = predictions[day_column]
    days = utc_day(day_values) if pd.api.types.is_datetime64_any_dtype(day_values) else day_values
    cards = predictions[["CUSTOMER_ID", "TX_FRAUD", score_column]]

    detected: list[int] = []
    daily_precisions = []
    for day in days.drop_duplicates().sort_values():
        today = cards[(days == day).to_numpy() & ~cards["CUSTOMER_ID"].isin(detected).to_numpy()]
        per_card = today.groupby("CUSTOMER_ID", as_index=False).max()
        alerts = per_card.sort_values(
            [score_column, "CUSTOMER_ID"], ascending=[False, True], kind="stable"
        ).head(top_k)
        caught = alerts.loc[alerts["TX_FRAUD"] == 1, "CUSTOMER_ID"].tolist()
        daily_precisions.append(len(caught) / top_k)
        detected.extend(caught)
    return float(np.mean(daily_precisions))


def fraud_metrics(
    y_true: ArrayLike,
    y_score: ArrayLike,
    predictions_df: pd.DataFrame | None = None,
    top_k: int = 100,
) -> dict[str, float]:
    """Score a model on a test set with the handbook's three metrics.

    Args:
        y_true: 0/1 fraud labels of the test transactions.
        y_score: Fraud scores, same order.
        predictions_df: The same test transactions in the same order, with
            TX_DATETIME and CUSTOMER_ID. Card precision needs to know which
            card and day each row belongs to; labels and scores are taken from
            ``y_true`` and ``y_score`` so the three metrics cannot disagree on
            them. When omitted, card precision is left out.
        top_k: Cards investigated per day for card precision.

    Returns:
        ``roc_auc`` and ``average_precision`` over all transactions, plus
        ``card_precision_at_{top_k}`` when ``predictions_df`` is given.

    Raises:
        ValueError: If the inputs differ in length, or ``y_true`` is not made
            of both 0 and 1: with a single class neither AUC nor precision is
            defined.
    """
    labels = np.asarray(y_true)
    scores = np.asarray(y_score, dtype=float)
    if labels.shape != scores.shape:
        raise ValueError(f"y_true has shape {labels.shape} but y_score has {scores.shape}")
    if not np.array_equal(np.unique(labels), [0, 1]):
        raise ValueError("y_true must hold 0/1 labels with both fraud (1) and genuine (0) present")

    results = {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
    }
    if predictions_df is not None:
        if len(predictions_df) != len(labels):
            raise ValueError(f"predictions_df has {len(predictions_df)} rows but y_true has {len(labels)}")
        scored = predictions_df[["TX_DATETIME", "CUSTOMER_ID"]].assign(TX_FRAUD=labels, prediction=scores)
        results[f"card_precision_at_{top_k}"] = card_precision_top_k(scored, top_k)
    return results
