"""The promotion gate's rule: a better selection metric is not enough when another metric falls."""

from __future__ import annotations

from assets.training import judge
from settings import PromotionSettings

CHAMPION = {"average_precision": 0.60, "roc_auc": 0.87, "card_precision_at_100": 0.25}


def test_a_challenger_with_better_average_precision_but_roc_auc_0518_is_refused() -> None:
    """The issue's promotion: average precision up, ROC AUC at chance."""
    challenger = {"average_precision": 0.62, "roc_auc": 0.518, "card_precision_at_100": 0.25}
    (reason,) = judge(challenger, CHAMPION, "average_precision", PromotionSettings())
    assert reason.startswith("roc_auc 0.5180 is more than 0.02 below 0.8700")


def test_card_precision_drop_beyond_its_margin_is_refused_within_it_passes() -> None:
    promotion = PromotionSettings()
    worse = {**CHAMPION, "average_precision": 0.62, "card_precision_at_100": 0.25 - 0.031}
    assert [r.split()[0] for r in judge(worse, CHAMPION, "average_precision", promotion)] == [
        "card_precision_at_100"
    ]
    within = {**CHAMPION, "average_precision": 0.62, "card_precision_at_100": 0.25 - 0.029}
    assert judge(within, CHAMPION, "average_precision", promotion) == []


def test_the_selection_metric_must_improve() -> None:
    same = dict(CHAMPION)
    (reason,) = judge(same, CHAMPION, "average_precision", PromotionSettings())
    assert "does not beat" in reason
