"""The HTTP contract: what `/v1/score` takes and answers; published as OpenAPI."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from streaming.contract import Amount, Identifier, Timestamp

Route = Literal["champion", "challenger"]

MAX_TRANSACTIONS = 8_000
"""The most transactions a batch body holds; the runtime config's `max_transactions_per_call` may cut it."""


class Transaction(BaseModel):
    """One card payment to score, as the stream carries it.

    `timestamp` is when the payment happened: features are read as of that
    instant, so a replayed or delayed request scores exactly as it would have live.

    Every field is checked by the event contract's own code (`streaming.contract`),
    the rules the bus and the push endpoint apply: ids are JSON integers (not
    `true`, `"42"` or `42.0`), the amount a finite JSON number in [0, 10,000,000),
    `-0.0` refused, the timestamp ISO 8601 text with an offset, from 1970 to five
    minutes past the server's clock. A refusal names the field (and, in a batch,
    its index) in the 422's `loc`.
    """

    model_config = ConfigDict(extra="forbid")

    transaction_id: Identifier
    customer_id: Identifier
    terminal_id: Identifier
    amount: Amount
    timestamp: Timestamp


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transactions: list[Transaction] = Field(min_length=1, max_length=MAX_TRANSACTIONS)


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
