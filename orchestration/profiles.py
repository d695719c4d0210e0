"""The one place that decides which environment the pipeline runs against.

`FRAUDPIPE_PROFILE` picks `local` (default: files and SQLite, nothing to
install), `prod` (PostgreSQL and Redis) or `cluster` (the prod stores, with
serving and Feast's point-in-time joins on a Ray cluster reached by address).
Everything else is configured through the Dagster resources this module
builds, never read ad hoc.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, cast

import dagster as dg

from orchestration.resources import (
    EventSourceResource,
    FeastResource,
    LakeResource,
    MLflowResource,
    MonitoringResource,
    RayResource,
)
from streaming.resources import LOCAL_BROKER_SCHEME, StreamResource

ProfileName = Literal["local", "prod", "cluster"]
PROFILES: tuple[ProfileName, ...] = ("local", "prod", "cluster")
SOURCES = ("files", "stream")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"


def active_profile() -> ProfileName:
    """The profile named by FRAUDPIPE_PROFILE; an unknown name is an error, not a fallback."""
    name = os.environ.get("FRAUDPIPE_PROFILE", "local").strip().lower()
    if name not in PROFILES:
        raise ValueError(f"FRAUDPIPE_PROFILE={name!r} is not one of {', '.join(PROFILES)}")
    return cast(ProfileName, name)


def build_resources(
    profile: ProfileName, data_dir: Path | None = None, source: str | None = None
) -> dict[str, Any]:
    """The resources of a profile.

    Args:
        profile: `local`, `prod` or `cluster`.
        data_dir: where the lake, the simulator's source data and local stores
            live; FRAUDPIPE_DATA_DIR or `data/` by default.
        source: where ingestion reads raw events: `files` (the simulator's
            output, for batch runs) or `stream` (what the stream consumer
            landed); FRAUDPIPE_SOURCE or `files` by default.
    """
    data = Path(data_dir or os.environ.get("FRAUDPIPE_DATA_DIR") or DEFAULT_DATA_DIR).resolve()
    project = os.environ.get("FRAUDPIPE_FEAST_PROJECT", "fraudpipe")
    source = (source or os.environ.get("FRAUDPIPE_SOURCE", "files")).strip().lower()
    if source not in SOURCES:
        raise ValueError(f"FRAUDPIPE_SOURCE={source!r} is not one of {', '.join(SOURCES)}")
    landing = data / "stream" / "landing"
    common: dict[str, Any] = {
        "lake": LakeResource(root=str(data / "lake")),
        "source": EventSourceResource(
            path=str(data / "source"), stream_path=str(landing) if source == "stream" else ""
        ),
        "monitoring": MonitoringResource(),
    }
    if profile == "local":
        return {
            **common,
            "stream": StreamResource(
                bus_url=f"{LOCAL_BROKER_SCHEME}://{data / 'stream' / 'broker.json'}",
                online_url=f"sqlite:///{data / 'online' / 'event_buffers.db'}",
                landing_path=str(landing),
            ),
            "feast": FeastResource(profile="local", data_dir=str(data), project=project),
            "mlflow": MLflowResource(
                tracking_uri=f"sqlite:///{data / 'mlflow' / 'mlflow.db'}",
                artifact_root=str(data / "mlflow" / "artifacts"),
            ),
        }
    servers = {
        **common,
        "stream": StreamResource(
            bus_url=dg.EnvVar("FRAUDPIPE_BUS_URL"),
            online_url=dg.EnvVar("FRAUDPIPE_ONLINE_URL"),
            online_prefix="fraudpipe:online:",
            landing_path=str(landing),
        ),
        "feast": FeastResource(
            profile="prod",
            data_dir=str(data),
            registry_url=dg.EnvVar("FRAUDPIPE_FEAST_PG_URL"),
            redis_connection=dg.EnvVar("FRAUDPIPE_REDIS"),
            project=project,
        ),
        "mlflow": MLflowResource(
            tracking_uri=dg.EnvVar("FRAUDPIPE_MLFLOW_PG_URL"),
            artifact_root=str(data / "mlflow" / "artifacts"),
        ),
    }
    if profile == "prod":
        return servers
    return {
        **servers,
        "ray": RayResource(address=dg.EnvVar("FRAUDPIPE_RAY_ADDRESS")),
        "feast": FeastResource(
            profile="cluster",
            data_dir=str(data),
            registry_url=dg.EnvVar("FRAUDPIPE_FEAST_PG_URL"),
            redis_connection=dg.EnvVar("FRAUDPIPE_REDIS"),
            ray_address=dg.EnvVar("FRAUDPIPE_RAY_ADDRESS"),
            project=project,
        ),
    }


PROD_DATABASE_VARS = ("FRAUDPIPE_DAGSTER_PG_URL", "FRAUDPIPE_MLFLOW_PG_URL", "FRAUDPIPE_FEAST_PG_URL")


def prod_database_urls() -> dict[str, str]:
    """The prod profile's PostgreSQL URLs by variable name; all of them must be set."""
    missing = [var for var in PROD_DATABASE_VARS if not os.environ.get(var)]
    if missing:
        raise ValueError(f"not set: {', '.join(missing)} (see .env.prod.example)")
    return {var: os.environ[var] for var in PROD_DATABASE_VARS}
