"""The Ray Serve application, deployed by `serving.deploy` with the config it renders from the settings.

One deployment is ingress, batcher and scorer: a hop between deployments
would cost more than the whole scoring path. `reconfigure` applies the
`user_config` in place (pinned model versions, rollout, batching, cache),
which is how the champion moves without a redeploy; a replica serves only
what its `user_config` pins.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

from fastapi import FastAPI
from ray import serve

from serving.api import build_api
from serving.metrics import ServingMetrics
from serving.schemas import Score, Transaction
from serving.service import NotReadyError, ScoringService
from settings import ServingConfig, load_settings
from settings.logs import redact_handlers

logger = logging.getLogger(__name__)


@serve.deployment(
    name="FraudScoring",
    ray_actor_options={"num_cpus": 1},
)
@serve.ingress()
class FraudScoring:
    def __init__(self) -> None:
        # The versions come with the user_config (reconfigure, right after this): up, not ready, until then.
        redact_handlers(logging.getLogger(), logging.getLogger("ray.serve"))
        settings = load_settings()
        # Through Ray Serve's metrics API: every replica of a node in one scrape of its metrics agent.
        metrics = ServingMetrics.for_ray(settings.serving.ray_metrics_port)
        self.service = ScoringService.from_settings(settings, metrics)
        self.api_keys = settings.auth.keys()
        # The imports and the model are here for the replica's life: frozen, the
        # garbage collector stops rescanning them, which otherwise stalls large batches.
        gc.freeze()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.service, self.score_one, self.api_keys)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = ServingConfig.model_validate(user_config)
        try:
            await asyncio.to_thread(self.service.configure, config)
        except NotReadyError as exc:  # no version pinned yet: up, answering 503, until a deployment
            logger.warning("replica without a model: %s", exc)
        # Methods @serve.batch adds to the batched method.
        self.score_one.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]
        self.score_one.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def score_one(self, transactions: list[Transaction]) -> list[Score | Exception]:
        return await asyncio.to_thread(self.service.score_each, transactions)

    def __del__(self) -> None:
        self.service.close()


app = FraudScoring.bind()  # type: ignore[attr-defined]
