"""The HTTP contract: what `/v1/score` takes and answers; published as OpenAPI."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from feature_repo.contract import MAX_AMOUNT, MAX_ID

Route = Literal["champion", "challenger"]

_ID = Field(ge=0, le=MAX_ID)


class Transaction(BaseModel):
    """One card payment to score, as the stream carries it.

    `timestamp` is when the payment happened: features are read as of that
    instant, so a replayed or delayed request scores exactly as it would have live.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    transaction_id: int = _ID
    customer_id: int = _ID
    terminal_id: int = _ID
    amount: float = Field(ge=0.0, lt=MAX_AMOUNT)
    timestamp: AwareDatetime


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transactions: list[Transaction] = Field(min_length=1, max_length=8_000)


class ModelRef(BaseModel):
    name: str
    version: str


class ColdStart(BaseModel):
    """Entities with no history in their longest window: scored on the defaults training saw for them."""

    customer: bool
    terminal: bool


class Latency(BaseModel):
    """Milliseconds; features and model are the batch's own, which this answer shared."""

    features_ms: float
    model_ms: float
    total_ms: float


class Score(BaseModel):
    transaction_id: int
    request_id: str
    probability: float
    fraud: bool
    threshold: float
    model: ModelRef
    route: Route
    cached: bool
    cold_start: ColdStart
    latency: Latency


class BatchScores(BaseModel):
    scores: list[Score]
