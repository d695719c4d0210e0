"""What a running deployment can change without a restart: Ray Serve's `user_config`.

Every field here reaches the replicas through `reconfigure`, so moving the
champion, ramping a canary or resizing batches never redeploys. The deployer
(`serving.deploy`) writes the model versions; the Serve config YAML of the
profile holds the rest.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RolloutMode = Literal["champion", "ab", "shadow", "canary"]
Device = Literal["cpu", "cuda"]


class Rollout(BaseModel):
    """How traffic is split between the champion and the challenger.

    Attributes:
        mode: `champion` answers everything from the champion; `ab` sends a
            fixed share of customers to the challenger; `shadow` answers from
            the champion and scores the challenger on the side, logging both;
            `canary` grows the challenger's share step by step.
        challenger_share: the `ab` share of customers, sticky per customer.
        canary_start / canary_step / canary_every_s / canary_max: the canary
            share is `start + step * (whole periods since the config was applied)`,
            capped at `max`.
    """

    model_config = ConfigDict(extra="forbid")

    mode: RolloutMode = "champion"
    challenger_share: float = Field(default=0.0, ge=0.0, le=1.0)
    canary_start: float = Field(default=0.01, ge=0.0, le=1.0)
    canary_step: float = Field(default=0.05, ge=0.0, le=1.0)
    canary_every_s: float = Field(default=300.0, gt=0.0)
    canary_max: float = Field(default=0.5, ge=0.0, le=1.0)


class ServingConfig(BaseModel):
    """A deployment's runtime settings; unknown keys are refused so a typo fails the deploy.

    Attributes:
        threshold: probability at or above which the decision is `fraud`.
        max_batch_size / batch_wait_timeout_s: dynamic batching of single scores.
        max_transactions_per_call: the most transactions `/v1/score/batch` takes.
        cache_size / cache_ttl_s: the result cache (0 entries disables it).
        device: where XGBoost predicts; `cuda` needs `num_gpus` on the replica.
        champion_version / challenger_version: registry versions to serve;
            None resolves the alias when the replica configures.
        prediction_log: whether answers go to the predictions stream.
    """

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_batch_size: int = Field(default=64, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(default=0.002, ge=0.0, le=1.0)
    # About 125 bytes of JSON each: 5,000 stay well under the 1 MiB body limit.
    max_transactions_per_call: int = Field(default=5_000, ge=1, le=8_000)
    cache_size: int = Field(default=100_000, ge=0)
    cache_ttl_s: float = Field(default=300.0, gt=0.0)
    device: Device = "cpu"
    champion_version: str | None = None
    challenger_version: str | None = None
    rollout: Rollout = Rollout()
    prediction_log: bool = True
