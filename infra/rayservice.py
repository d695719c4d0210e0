"""The KubeRay `RayService`: the cluster profile's Serve config on an autoscaling Ray cluster.

`serveConfigV2` is the cluster profile's Serve config as `serving.deploy.serve_config`
renders it from the settings, with one change: every node's proxy binds 0.0.0.0
(all of the pod's addresses), so that KubeRay's serve Service answers from any
node; who may connect is network-policies.yaml's business. Its runtime
environment names the profile and the shared data directory. The `deployment`
asset patches its pinned versions (`serving.deploy.rayservice_patch`). Serve
scales replicas on requests in flight (`autoscaling_config`); the in-tree Ray
autoscaler adds and removes worker pods to fit them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from infra.cluster import (
    PROFILE,
    ClusterSettings,
    WorkerGroup,
    container_security,
    pod_security,
)
from serving import deploy
from settings import ServingSettings, Settings

RAY_UID = 1000  # the `ray` user of the rayproject/ray images
RAY_GID = 100  # its group, `users`
NAME = "fraudpipe"
# The head's ports (Ray's defaults, which KubeRay's head Service names): drivers join at the GCS,
# the KubeRay operator deploys Serve through the dashboard, Ray Client (unused here) at the client port.
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
# Every node's Serve proxy binds the pod IP: KubeRay's serve Service sends to any node's proxy, and
# network-policies.yaml, not the bind address, decides who reaches it. The local and prod profiles
# keep settings.serving.host (127.0.0.1).
PROXY_HOST = "0.0.0.0"


def profile_settings(settings: ClusterSettings) -> Settings:
    """The settings the cluster's pods run with, as far as the Serve config needs them.

    Built without reading this machine's environment (`model_construct`: defaults and these fields
    only), so the rendered manifests are the same wherever they are rendered.
    """
    return Settings.model_construct(
        profile=PROFILE,
        data_dir=Path(settings.data_dir),
        serving=ServingSettings(host=PROXY_HOST),
    )


def serve_config(settings: ClusterSettings) -> dict[str, Any]:
    """The Serve config as the cluster runs it (no versions pinned: the `deployment` asset patches them)."""
    return deploy.serve_config(profile_settings(settings))


def serve_port(settings: ClusterSettings) -> int:
    """The port every node's Serve proxy listens on."""
    return int(serve_config(settings)["http_options"]["port"])


def metrics_port(settings: ClusterSettings) -> int:
    """Ray's per-node metrics endpoint (KubeRay's default, the setting's default): what Prometheus scrapes."""
    return profile_settings(settings).serving.ray_metrics_port


def driver_env(settings: ClusterSettings) -> list[dict[str, Any]]:
    """What a pod needs to join the RayService's cluster as a driver (the `cluster` profile's RayResource).

    KubeRay's head Service of a RayService follows the active cluster across upgrades.
    """
    return [
        {"name": "FRAUDPIPE_RAY_ADDRESS", "value": f"{NAME}-head-svc:{GCS_PORT}"},
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": settings.ray_token_secret, "key": "auth_token"}},
        },
    ]


def render(settings: ClusterSettings) -> dict[str, Any]:
    config = serve_config(settings)
    head_ports = [
        {"name": "gcs-server", "containerPort": GCS_PORT},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT},
        {"name": "client", "containerPort": CLIENT_PORT},
        {"name": "serve", "containerPort": serve_port(settings)},
    ]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": NAME,
            "namespace": settings.namespace,
            "labels": settings.component_labels("serving"),
        },
        "spec": {
            "serveConfigV2": yaml.safe_dump(config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": settings.ray_version,
                # KubeRay sets RAY_AUTH_MODE / RAY_AUTH_TOKEN in every Ray container from this Secret
                # and uses the token for its own dashboard calls (secretName: KubeRay >= 1.6). A Secret
                # of our own, not one generated per RayCluster, so the Dagster pods can present it too.
                "authOptions": {"mode": "token", "secretName": settings.ray_token_secret},
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {
                    "upscalingMode": "Default",
                    "idleTimeoutSeconds": settings.ray_idle_timeout_s,
                    "resources": settings.ray_autoscaler.resources(),
                    "securityContext": {**container_security(), "runAsNonRoot": True, "runAsUser": RAY_UID},
                },
                "headGroupSpec": {
                    # No replica on the head: it runs the GCS, the Serve controller and a proxy,
                    # and an overloaded head stalls the whole cluster. KubeRay's operator deploys
                    # the Serve config through the dashboard, so it listens on the pod IP;
                    # network-policies.yaml lets the operator and the cluster's own pods reach it.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": _pod(settings, "ray-head", settings.ray_head.resources(), head_ports),
                },
                "workerGroupSpecs": [_worker_group(settings, group) for group in settings.ray_workers],
            },
        },
    }


def _worker_group(settings: ClusterSettings, group: WorkerGroup) -> dict[str, Any]:
    template = _pod(settings, "ray-worker", group.size.resources(), [])
    spec: dict[str, Any] = {
        "groupName": group.name,
        "replicas": group.min_replicas,
        "minReplicas": group.min_replicas,
        "maxReplicas": group.max_replicas,
        "rayStartParams": {},
        "template": template,
    }
    if group.size.gpus:
        spec["rayStartParams"] = {"num-gpus": str(group.size.gpus)}
        # GPU nodes are usually tainted so that only pods asking for a GPU land there.
        template["spec"]["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return spec


def _pod(
    settings: ClusterSettings, container: str, resources: dict[str, Any], ports: list[dict[str, Any]]
) -> dict[str, Any]:
    main: dict[str, Any] = {
        "name": container,
        "image": settings.ray_image,
        "imagePullPolicy": "IfNotPresent",
        # The FRAUDPIPE_* URLs: Ray's worker processes, hence the replicas, inherit the container's env.
        "envFrom": [{"secretRef": {"name": settings.env_secret}}],
        "resources": resources,
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": settings.data_dir},
            {"name": "shared-mem", "mountPath": "/dev/shm"},
        ],
    }
    if ports:
        main["ports"] = ports
    return {
        "metadata": {"labels": settings.component_labels("serving")},
        "spec": {
            "securityContext": pod_security(RAY_UID, RAY_GID),
            "containers": [main],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": settings.data_claim}},
                # Ray's object store lives in /dev/shm, which a container limits to 64 MiB otherwise.
                {"name": "shared-mem", "emptyDir": {"medium": "Memory"}},
            ],
        },
    }
