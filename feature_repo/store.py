"""Feast's configuration of a profile: its `feature_store.yaml`, filled in from the settings.

One yaml per profile (`feature_repo/profiles/<profile>/`) holds `${FRAUDPIPE_*}`
placeholders: Feast's own CLI expands them from the environment, and this
module from the settings, so the CLI and the pipeline read the same file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from feature_repo.windows import FEATURE_GROUPS
from settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig

FEATURE_REPO = Path(__file__).resolve().parent


def lake_tables(data_dir: Path) -> dict[str, Path]:
    """Each feature group's offline table in the lake, by group name."""
    return {group.name: data_dir / "lake" / f"{group.name}.parquet" for group in FEATURE_GROUPS}


@dataclass(frozen=True)
class FeastStore:
    """The profile's Feast store: registry, offline store (and, cluster profile, Ray)."""

    profile: str
    data_dir: Path
    project: str
    registry_url: str
    ray_address: str

    @classmethod
    def from_settings(cls, settings: Settings) -> FeastStore:
        return cls(
            profile=settings.profile,
            data_dir=settings.data,
            project=settings.feast_project,
            registry_url=settings.feast_pg_url.get_secret_value() if settings.feast_pg_url else "",
            ray_address=settings.ray_address or "",
        )

    def yaml_path(self) -> Path:
        return FEATURE_REPO / "profiles" / self.profile / "feature_store.yaml"

    def repo_config(self) -> RepoConfig:
        from feast import RepoConfig

        values = {
            "FRAUDPIPE_FEAST_PROJECT": self.project,
            "FRAUDPIPE_DATA_DIR": str(self.data_dir),
            "FRAUDPIPE_FEAST_PG_URL": self.registry_url,
            "FRAUDPIPE_RAY_ADDRESS": self.ray_address,
        }
        # ${NAME} only, as Feast's CLI expands it; an unknown name is a KeyError, not left in place.
        text = re.sub(r"\$\{(\w+)\}", lambda match: values[match[1]], self.yaml_path().read_text())
        config = RepoConfig(**yaml.safe_load(text))
        config.repo_path = FEATURE_REPO
        return config

    def store(self) -> FeatureStore:
        from feast import FeatureStore

        (self.data_dir / "feast").mkdir(parents=True, exist_ok=True)
        return FeatureStore(config=self.repo_config())

    def tables(self) -> dict[str, Path]:
        return lake_tables(self.data_dir)
