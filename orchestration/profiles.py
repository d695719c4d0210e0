"""The code location's resources, built from the settings (`settings/`): the one place they are assembled.

`FRAUDPIPE_PROFILE` picks `local` (files and SQLite, nothing to install),
`prod` (PostgreSQL, Redis, a bus) or `cluster` (the prod stores, with
serving and Feast's point-in-time joins on a Ray cluster); the settings read
it with everything else, once per process, and these resources adapt them
for Dagster.
"""

from __future__ import annotations

from typing import Any

from feature_repo.store import FeastStore
from modeling.registry import ModelRegistry
from orchestration.resources import EventSourceResource, LakeResource
from settings import Settings
from streaming.config import StreamConfig


def build_resources(settings: Settings) -> dict[str, Any]:
    """The resources of the settings' profile, by the names assets ask for."""
    return {
        "settings": settings,
        "lake": LakeResource(root=str(settings.lake_root)),
        "source": EventSourceResource(
            path=str(settings.source_path),
            stream_path=str(settings.landing_path) if settings.source == "stream" else "",
            stream_grace_minutes=settings.stream.complete_after_minutes,
        ),
        "stream": StreamConfig.from_settings(settings),
        "feast": FeastStore.from_settings(settings),
        "mlflow": ModelRegistry.from_settings(settings),
        "monitoring": settings.monitoring,
    }
