"""Feast's Ray compute engine, materialising the window it is asked for.

Feast 0.67's Ray engine (`batch_engine: {type: ray.engine}`) filters the rows it
materialises by the feature view's TTL counted back from the wall clock
(`RayFilterNode`: rows older than now - ttl are dropped). Materialising a past
window (a replay, a backfill, the simulated demo data) then writes nothing,
where Feast's local engine writes each entity's newest row in [start, end]
whatever its age. `FeatureStore.materialize_incremental` already starts its
first window at now - ttl (later ones where the last ended), so the engine's
own filter adds nothing there.

This subclass hands the engine a copy of the view without TTL for
materialisation; reading, deduplication and the distributed online writes are
Feast's. Select it in feature_store.yaml with
`batch_engine: {type: feature_repo.ray_compute_engine.RayWindowComputeEngine, ray_address: ...}`.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import timedelta
from typing import Any, Literal

from feast.infra.common.materialization_job import MaterializationJob, MaterializationTask
from feast.infra.compute_engines.ray.compute import RayComputeEngine
from feast.infra.compute_engines.ray.config import RayComputeEngineConfig
from feast.infra.registry.base_registry import BaseRegistry


class RayWindowComputeEngineConfig(RayComputeEngineConfig):
    type: Literal["feature_repo.ray_compute_engine.RayWindowComputeEngine"] = (
        "feature_repo.ray_compute_engine.RayWindowComputeEngine"  # type: ignore[assignment]
    )


class RayWindowComputeEngine(RayComputeEngine):
    """Feast's Ray compute engine without the wall-clock TTL filter (see the module docstring)."""

    def _materialize_one(
        self,
        registry: BaseRegistry,
        task: MaterializationTask,
        from_offline_store: bool = False,
        **kwargs: Any,
    ) -> MaterializationJob:
        view = copy.copy(task.feature_view)
        view.ttl = timedelta(0)
        return super()._materialize_one(
            registry, dataclasses.replace(task, feature_view=view), from_offline_store, **kwargs
        )
