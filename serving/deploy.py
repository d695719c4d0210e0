"""Deploying the Serve config of a profile, and keeping its model versions on the registry's aliases.

The config is applied declaratively (as `serve deploy` does): its code version
is the import path and runtime environment, so a later apply that changes only
`user_config` reconfigures the running replicas in place instead of replacing
them. The watcher turns every move of the `champion` or `challenger` alias
(a promotion, `make rollback`) into such an apply: a hot swap with no restart.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from modeling.registry import CHALLENGER, CHAMPION
from orchestration.profiles import DEFAULT_DATA_DIR, ProfileName

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "config"
APP_NAME = "fraud"
DEPLOYMENT = "FraudScoring"


def load_config(profile: ProfileName, path: Path | None = None) -> dict[str, Any]:
    """The Serve config of `profile` (or the file at `path`), with this process's profile settings passed on.

    Replicas build their resources like every other process, from
    FRAUDPIPE_PROFILE and FRAUDPIPE_DATA_DIR: both go into the application's
    runtime environment, the data directory made absolute.
    """
    config = yaml.safe_load((path or CONFIG_DIR / f"{profile}.yaml").read_text())
    env = application(config).setdefault("runtime_env", {}).setdefault("env_vars", {})
    env["FRAUDPIPE_PROFILE"] = profile
    env["FRAUDPIPE_DATA_DIR"] = str(Path(os.environ.get("FRAUDPIPE_DATA_DIR") or DEFAULT_DATA_DIR).resolve())
    ServeDeploySchema.model_validate(config)
    return config


def application(config: dict[str, Any]) -> dict[str, Any]:
    return next(app for app in config["applications"] if app["name"] == APP_NAME)


def user_config(config: dict[str, Any]) -> dict[str, Any]:
    deployment = next(d for d in application(config)["deployments"] if d["name"] == DEPLOYMENT)
    return deployment.setdefault("user_config", {})


def with_user_config(config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A copy of `config` with `fields` set in the scoring deployment's user_config."""
    updated = copy.deepcopy(config)
    user_config(updated).update(fields)
    return updated


def pin_versions(config: dict[str, Any], alias: Callable[[str], str | None]) -> dict[str, Any]:
    """`config` with the champion and challenger versions the aliases point at now.

    Versions written in the config file win: a pinned version stays pinned.
    """
    current = user_config(config)
    return with_user_config(
        config,
        champion_version=current.get("champion_version") or alias(CHAMPION),
        challenger_version=current.get("challenger_version") or alias(CHALLENGER),
    )


def start_local(config: dict[str, Any], num_cpus: int | None = None) -> None:
    """A Ray instance on this machine, bound to 127.0.0.1, with Serve's proxy as the config asks.

    Token authentication stays as Ray sets it for a new local cluster (on);
    the dashboard is left out: nothing here needs it and it would be one more port.
    """
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    http = config.get("http_options", {})
    serve.start(http_options={"host": http.get("host", "127.0.0.1"), **http}, proxy_location="HeadOnly")


def start_on_cluster(config: dict[str, Any], address: str) -> None:
    """Join the Ray cluster at `address` and start Serve's proxies where the config says (cluster profile).

    Serve outlives this driver: leaving (or crashing) stops the alias
    watcher, never the replicas. The proxies default to every node, so any
    node behind a load balancer answers.
    """
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    http = config.get("http_options", {})
    serve.start(
        http_options={"host": http.get("host", "127.0.0.1"), **http},
        proxy_location=config.get("proxy_location", "EveryNode"),
    )


def apply(config: dict[str, Any], timeout_s: float = 120) -> None:
    """Apply `config` to the Serve instance this process is connected to; returns once it runs it.

    "Runs it" means the application reports RUNNING for a deployment made
    after this call (its `last_deployed_time_s` moved), not for the one before.
    """
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running: start it first (start_local, or ray start + serve start)")
    previous = serve.status().applications.get(APP_NAME)
    client.deploy_apps(ServeDeploySchema.model_validate(config))
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(APP_NAME)
        fresh = status is not None and (
            previous is None or status.last_deployed_time_s > previous.last_deployed_time_s
        )
        if fresh and status is not None and status.status == "RUNNING":
            return
        if fresh and status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"{APP_NAME} failed to deploy: {status.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{APP_NAME} not running after {timeout_s}s: {status}")
        time.sleep(0.2)


class AliasWatcher:
    """Re-applies the config whenever the registry's aliases move (promotion, rollback)."""

    def __init__(self, config: dict[str, Any], alias: Callable[[str], str | None]) -> None:
        self._config = config
        self._alias = alias
        self.applied: dict[str, Any] | None = None

    def sync(self) -> bool:
        """Apply the config if the pinned versions changed since the last apply; True if it did."""
        wanted = pin_versions(self._config, self._alias)
        if self.applied is not None and user_config(wanted) == user_config(self.applied):
            return False
        previous = user_config(self.applied) if self.applied else {}
        apply(wanted)
        logger.info(
            "serving champion v%s (was %s), challenger v%s (was %s)",
            user_config(wanted)["champion_version"],
            previous.get("champion_version"),
            user_config(wanted)["challenger_version"],
            previous.get("challenger_version"),
        )
        self.applied = wanted
        return True
