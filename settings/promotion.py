"""When a challenger may replace the champion: the promotion gate's rule, one place."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PromotionSettings(BaseModel):
    """`FRAUDPIPE_PROMOTION__<FIELD>`.

    The gate judges challenger and champion on the same test days: the
    challenger must beat the champion on the model's selection metric, and may
    fall behind it on no other metric by more than that metric's margin. The
    first model, with no champion to beat, must beat the handbook's first
    model, a depth-2 decision tree trained on the same split, on the selection
    metric. (Logistic regression was tried as that floor: on the test suite's
    week of 59 frauds it beat every first XGBoost model on average precision
    by noise, and on the default dataset the two tie.)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_roc_auc_drop: float = Field(0.02, ge=0, le=1, description="ROC AUC the challenger may lose")
    max_card_precision_drop: float = Field(
        0.03, ge=0, le=1, description="card precision@100 the challenger may lose"
    )
    max_average_precision_drop: float = Field(
        0.03,
        ge=0,
        le=1,
        description="average precision the challenger may lose (when not the selection metric)",
    )
