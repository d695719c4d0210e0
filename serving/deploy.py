"""The Serve config of a profile, rendered from the settings, and its declarative deployment.

The config pins the champion and challenger versions in the deployment's
`user_config`; it is applied through Serve's REST API (`PUT
/api/serve/applications/` on Ray's dashboard, what `serve deploy` does), so a
later apply that changes only `user_config` reconfigures the running replicas
in place, and a replica added later (autoscaling, a crash) starts with the same
pinned versions. No replica resolves a registry alias itself.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import ray
import yaml
from ray._private import ray_constants
from ray.serve.schema import ServeDeploySchema

from modeling.registry import Deployment
from settings import Settings
from settings.serving import ServingSettings

logger = logging.getLogger(__name__)

APP_NAME = "fraud"
DEPLOYMENT = "FraudScoring"
IMPORT_PATH = "serving.app:app"
SERVE_API = "/api/serve/applications/"


def autoscaled(settings: Settings) -> bool:
    """Whether the profile's deployment autoscales: `serving.autoscale`, or unset, the cluster profile."""
    autoscale = settings.serving.autoscale
    return settings.profile == "cluster" if autoscale is None else autoscale


def autoscaling_config(serving: ServingSettings) -> dict[str, Any]:
    """Serve's `autoscaling_config` from the settings; knobs left unset take Serve's defaults."""
    config: dict[str, Any] = {
        "min_replicas": serving.min_replicas,
        "max_replicas": serving.max_replicas,
        "target_ongoing_requests": serving.target_ongoing_requests,
        "upscale_delay_s": serving.upscale_delay_s,
        "downscale_delay_s": serving.downscale_delay_s,
    }
    if serving.autoscaling_metrics_interval_s is not None:
        config["metrics_interval_s"] = serving.autoscaling_metrics_interval_s
    if serving.autoscaling_look_back_s is not None:
        config["look_back_period_s"] = serving.autoscaling_look_back_s
    return config


def serve_config(settings: Settings, deployment: Deployment | None = None) -> dict[str, Any]:
    """The profile's Serve config (`ServeDeploySchema`), with `deployment`'s versions pinned.

    Replicas read the same settings as every process: the profile and the
    data directory go into the application's runtime environment, the rest
    comes from the nodes' environment (`FRAUDPIPE_*`).
    """
    serving = settings.serving
    runtime = serving.runtime.model_dump(mode="json")
    if deployment is not None:
        runtime.update(champion_version=deployment.champion, challenger_version=deployment.challenger)
    scaling: dict[str, Any] = (
        {"autoscaling_config": autoscaling_config(serving)}
        if autoscaled(settings)
        else {"num_replicas": serving.replicas}
    )
    config = {
        "proxy_location": "EveryNode" if settings.profile == "cluster" else "HeadOnly",
        "http_options": {
            "host": serving.host,
            "port": serving.port,
            "request_timeout_s": serving.request_timeout_s,
        },
        "logging_config": {"enable_access_log": serving.access_log},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "runtime_env": {
                    "env_vars": {
                        "FRAUDPIPE_PROFILE": settings.profile,
                        "FRAUDPIPE_DATA_DIR": str(settings.data),
                    }
                },
                "deployments": [
                    {
                        "name": DEPLOYMENT,
                        **scaling,
                        "max_ongoing_requests": serving.max_ongoing_requests,
                        "max_queued_requests": serving.max_queued_requests,
                        "backpressure_config": {
                            "status_code": 503,
                            "retry_after_s": serving.runtime.retry_after_s,
                        },
                        "ray_actor_options": {"num_cpus": serving.num_cpus, "num_gpus": serving.num_gpus},
                        "user_config": runtime,
                    }
                ],
            }
        ],
    }
    ServeDeploySchema.model_validate(config)
    return config


def pinned(config: dict[str, Any]) -> Deployment | None:
    """The versions a Serve config pins; None when it pins no champion."""
    application = next(app for app in config["applications"] if app["name"] == APP_NAME)
    user_config = next(d for d in application["deployments"] if d["name"] == DEPLOYMENT).get(
        "user_config", {}
    )
    champion = user_config.get("champion_version")
    return Deployment(champion, user_config.get("challenger_version")) if champion else None


def rayservice_patch(config: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch of a KubeRay `RayService` that makes it deploy `config` (its `serveConfigV2`).

    KubeRay owns the Serve application on Kubernetes: it applies `serveConfigV2`
    to the cluster whenever it changes, a `user_config` change in place.
    """
    return {"spec": {"serveConfigV2": yaml.safe_dump(config, sort_keys=False)}}


def patch_rayservice(settings: Settings, config: dict[str, Any]) -> None:
    """Apply `rayservice_patch(config)` to the settings' RayService through the in-cluster Kubernetes API."""
    from kubernetes import client
    from kubernetes import config as kube_config

    if settings.serving.rayservice is None:
        raise ValueError("FRAUDPIPE_SERVING__RAYSERVICE names no RayService to patch")
    kube_config.load_incluster_config()
    client.CustomObjectsApi().patch_namespaced_custom_object(
        group="ray.io",
        version="v1",
        namespace=settings.serving.namespace,
        plural="rayservices",
        name=settings.serving.rayservice,
        body=rayservice_patch(config),
    )


def _private_token_file(settings: Settings) -> None:
    """Make the token file a local Ray reads owner-only (0600), creating it when missing.

    Ray writes a missing token with the umask's mode (0644: any user of the machine could
    read it and drive the cluster). Nothing to do when the token comes in RAY_AUTH_TOKEN.
    """
    if settings.ray_auth_token is not None:
        return
    path = settings.ray_auth_token_path.expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        path.chmod(0o600)
    else:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32))


@contextmanager
def _single_node() -> Iterator[None]:
    """Ray's multi-node mode off while a local Ray starts, in its processes and in this one.

    With the mode on, Ray turns 127.0.0.1 into the machine's address wherever it meets it
    (`resolve_ip_for_localhost` in ray/_private/services.py): in ray.init's `_node_ip_address`,
    which puts the node's servers, agents and metrics endpoints on every interface, and in the
    GCS address the dashboard connects its own driver to, which then finds no GCS there.
    Restored after: a later driver of a multi-node cluster from this process, or a
    `ray start --address` it runs (the tests do), needs the mode on.
    """
    # Ray's processes read the variable as they start; this one read it on importing Ray.
    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_variable, saved_mode = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_mode
        if saved_variable is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_variable


def start_local(settings: Settings, num_cpus: int | None = None) -> None:
    """A Ray instance on this machine for the local and prod profiles, token authentication on.

    Its node address is 127.0.0.1, so its servers, agents and metrics endpoints listen there
    only; the one exception is the Serve replicas' inter-deployment gRPC server, which Ray
    binds on every interface (docs/security.md, "Ray on this machine"). The dashboard is where
    the deployer reaches Serve's REST API.
    """
    _private_token_file(settings)
    with _single_node():
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=settings.serving.ray_dashboard_port,
            # Where Prometheus (and `serving_health`) read every replica's metrics in one scrape.
            _metrics_export_port=settings.serving.ray_metrics_port,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=True,
        )


class ServeApi:
    """Serve's REST API on Ray's dashboard, authenticated with the cluster's token."""

    def __init__(self, settings: Settings, timeout_s: float = 60.0) -> None:
        # The first PUT starts Serve's controller and proxy before it answers: tens of seconds here.
        token = settings.ray_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=settings.ray_dashboard_url, headers=headers, timeout=timeout_s)

    def status(self) -> dict[str, Any] | None:
        """The application's details (status, deployed config); None when Serve runs no such app."""
        response = self._client.get(SERVE_API)
        response.raise_for_status()
        return response.json().get("applications", {}).get(APP_NAME)

    def running(self) -> Deployment | None:
        """The versions the running application pins; None when it is not running or pins none."""
        app = self.status()
        if app is None or app.get("status") != "RUNNING" or not app.get("deployed_app_config"):
            return None
        return pinned({"applications": [{**app["deployed_app_config"], "name": APP_NAME}]})

    def deploy(self, config: dict[str, Any], timeout_s: float = 180) -> None:
        """Apply `config` and return once the application runs it (status RUNNING after this apply).

        Raises:
            RuntimeError: the application failed to deploy.
            TimeoutError: it was not running after `timeout_s`.
            httpx.HTTPError: Ray's dashboard did not answer, or refused the token.
        """
        before = self.status()
        previous = before.get("last_deployed_time_s", 0) if before else 0
        self._client.put(SERVE_API, json=config).raise_for_status()
        deadline = time.monotonic() + timeout_s
        while True:
            app = self.status()
            fresh = app is not None and app.get("last_deployed_time_s", 0) > previous
            if fresh and app is not None and app.get("status") == "RUNNING":
                return
            if fresh and app is not None and app.get("status") == "DEPLOY_FAILED":
                raise RuntimeError(f"{APP_NAME} failed to deploy: {app.get('message', '')[:2000]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{APP_NAME} not running {timeout_s:.0f} s after the deploy")
            time.sleep(0.2)

    def close(self) -> None:
        self._client.close()
