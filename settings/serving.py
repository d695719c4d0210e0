"""Knobs of the scoring service: its HTTP listener, its Ray Serve deployment and its runtime config.

`ServingConfig` is what a running deployment can change without a restart
(Ray Serve's `user_config`, applied by `reconfigure`); the rest takes a
redeploy. The Serve config of each profile is rendered from these
(`serving.deploy.serve_config`), not kept in a second file.
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

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: RolloutMode = Field("champion", description="champion, ab, shadow or canary")
    challenger_share: float = Field(
        0.0, ge=0.0, le=1.0, description="ab: share of customers to the challenger"
    )
    canary_start: float = Field(0.01, ge=0.0, le=1.0, description="canary: first share")
    canary_step: float = Field(0.05, ge=0.0, le=1.0, description="canary: share added each period")
    canary_every_s: float = Field(300.0, gt=0.0, description="canary: s per period")
    canary_max: float = Field(0.5, ge=0.0, le=1.0, description="canary: largest share")


class ServingConfig(BaseModel):
    """A deployment's runtime settings; unknown keys are refused so a typo fails the deploy.

    Attributes:
        threshold: probability at or above which the decision is `fraud`.
        max_batch_size / batch_wait_timeout_s: dynamic batching of single scores.
        max_transactions_per_call: the most transactions `/v1/score/batch` takes.
        cache_size / cache_ttl_s: the result cache (0 entries disables it).
        device: where XGBoost predicts; `cuda` needs `num_gpus` on the replica.
        champion_version / challenger_version: registry versions to serve,
            pinned by the deployment (`deployment` asset); a replica without a
            pinned champion answers 503, it never resolves an alias itself.
        prediction_log: whether answers go to the predictions stream.
        max_in_flight: admission control, by Little's law: a replica answering X
            requests/s keeps an admitted request at most about max_in_flight / X s;
            the rest is refused at once with 503 and `Retry-After: retry_after_s`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="probability at or above which a score is fraud"
    )
    max_batch_size: int = Field(64, ge=1, le=4096, description="single scores batched into one model call")
    batch_wait_timeout_s: float = Field(0.002, ge=0.0, le=1.0, description="s a batch waits to fill")
    # About 125 bytes of JSON each: 5,000 stay well under the 1 MiB body limit.
    max_transactions_per_call: int = Field(
        5_000, ge=1, le=8_000, description="most transactions a batch call takes"
    )
    cache_size: int = Field(100_000, ge=0, description="result cache entries (0: off)")
    cache_ttl_s: float = Field(300.0, gt=0.0, description="s a cached score lives")
    device: Device = Field("cpu", description="where XGBoost predicts: cpu or cuda")
    champion_version: str | None = Field(
        None, description="pinned by the `deployment` asset, not set by hand"
    )
    challenger_version: str | None = Field(None, description="pinned by the `deployment` asset")
    rollout: Rollout = Rollout()
    prediction_log: bool = Field(True, description="send every answer to the predictions stream")
    max_in_flight: int = Field(
        16, ge=1, description="scoring requests a replica works on at once; beyond: 503 at once"
    )
    retry_after_s: int = Field(1, ge=0, description="s a refused or not-ready client is told to wait")


class ServingSettings(BaseModel):
    """`FRAUDPIPE_SERVING__<FIELD>` (nested: `FRAUDPIPE_SERVING__RUNTIME__THRESHOLD=0.6`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address the HTTP proxy binds")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the scoring API")
    request_timeout_s: float = Field(10.0, gt=0, description="s before Serve answers 408")
    replicas: int = Field(1, ge=1, description="replicas of the scoring deployment when not autoscaled")
    # Unset: the cluster profile autoscales, local and prod run `replicas`. Set, it holds for any profile.
    autoscale: bool | None = Field(
        None,
        description="autoscale between min_replicas and max_replicas (unset: in the cluster profile only)",
    )
    min_replicas: int = Field(
        2, ge=1, description="autoscaling floor (cluster: >= 2 for failover across nodes)"
    )
    max_replicas: int = Field(16, ge=1, description="autoscaling ceiling")
    # Little's law, L = throughput x latency, with one replica's measured saturation (docs/scaling.md):
    # what a replica may hold and a proxy may queue bounds an accepted request's wait; the rest is
    # refused at once (503 + Retry-After) instead of timing out after the work was queued. The
    # autoscaler's target is the same law at the planned rate: that rate x the latency it holds.
    target_ongoing_requests: float = Field(
        2, gt=0, description="autoscaling: requests in flight per replica the autoscaler keeps"
    )
    upscale_delay_s: int = Field(
        10, ge=0, description="autoscaling: s a scale-up decision must hold before a replica is added"
    )
    downscale_delay_s: int = Field(
        300, ge=0, description="autoscaling: s a scale-down decision must hold before a replica goes"
    )
    # Unset, Serve's defaults (30 s and 10 s): a step in load reaches the autoscaler up to a push
    # interval late, averaged over the look-back. Short values make a seconds-long demo react.
    autoscaling_look_back_s: float | None = Field(
        None, gt=0, description="autoscaling: s of in-flight counts averaged per decision (unset: Serve's 30)"
    )
    autoscaling_metrics_interval_s: float | None = Field(
        None,
        gt=0,
        description="autoscaling: s between in-flight counts sent to Serve's controller (unset: Serve's 10)",
    )
    # Serve's own limit stays above `runtime.max_in_flight`: at it, Serve's router holds requests in
    # backoff sleeps instead of refusing them, and goodput collapsed (docs/scaling.md).
    max_ongoing_requests: int = Field(128, ge=1, description="requests Serve routes to a replica at once")
    max_queued_requests: int = Field(
        64, ge=-1, description="requests a proxy queues when every replica is at max_ongoing; beyond: 503"
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs a replica asks Ray for")
    num_gpus: float = Field(0.0, ge=0, description="GPUs a replica asks Ray for (device: cuda)")
    access_log: bool = Field(False, description="one log line per request: about 7% of a replica's time")
    ray_dashboard_port: int = Field(
        8265, ge=1, le=65535, description="local Ray's dashboard: Serve's REST API"
    )
    ray_metrics_port: int = Field(
        8080,
        ge=1,
        le=65535,
        description="Ray's per-node Prometheus endpoint: every replica's metrics, one scrape",
    )
    rayservice: str | None = Field(
        None, description="on Kubernetes: the KubeRay RayService the `deployment` asset patches (name)"
    )
    namespace: str = Field("fraudpipe", description="on Kubernetes: the RayService's namespace")
    runtime: ServingConfig = ServingConfig()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"
