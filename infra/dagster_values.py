"""Values for the Dagster Helm chart, derived from the prod instance config and the workspace.

The chart writes its own dagster.yaml from its values, so each setting of
orchestration/instance/prod/dagster.yaml is carried over to the value that
produces it: PostgreSQL storage becomes the chart's external-database settings
(its bundled PostgreSQL off; Dagster's own role, made by prod-init, with its
password from a Secret of its own: the server's superuser is not Dagster's), `telemetry` and
`run_monitoring` their values, anything the chart has no value for goes
through `additionalInstanceConfig` unchanged. workspace.yaml's code location
becomes the one user deployment, served by `dagster api grpc` with the same
module and attribute. Runs are launched as Kubernetes Jobs (K8sRunLauncher,
dagster-k8s) from the code location's image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from infra import rayservice
from infra.cluster import PROFILE, PROJECT_ROOT, ClusterSettings, container_security, pod_security
from infra.rayservice import driver_env
from infra.stores import POSTGRES_NAME, POSTGRES_PORT
from orchestration import CODE_LOCATION

INSTANCE = PROJECT_ROOT / "orchestration" / "instance" / "prod" / "dagster.yaml"
WORKSPACE = PROJECT_ROOT / "workspace.yaml"
GRPC_PORT = 3030
# The Helm release the README installs (`helm upgrade --install dagster ...`): the chart labels its
# pods `app.kubernetes.io/instance: <release>`, which network-policies.yaml selects them by.
RELEASE = "dagster"
APP_UID = 1000  # the user of infra/docker/code-location.Dockerfile

# run_monitoring keys the chart renders into its dagster.yaml (templates/configmap-instance.yaml).
RUN_MONITORING_KEYS = {
    "enabled": "enabled",
    "start_timeout_seconds": "startTimeoutSeconds",
    "cancel_timeout_seconds": "cancelTimeoutSeconds",
    "max_resume_run_attempts": "maxResumeRunAttempts",
    "poll_interval_seconds": "pollIntervalSeconds",
    "free_slots_after_run_end_seconds": "freeSlotsAfterRunEndSeconds",
}
# run_retries keys the chart renders from dagsterDaemon.runRetries.
RUN_RETRIES_KEYS = {
    "enabled": "enabled",
    "max_retries": "maxRetries",
    "retry_on_asset_or_op_failure": "retryOnAssetOrOpFailure",
}
# Sections the chart always writes itself; the same key in additionalInstanceConfig would clash.
CHART_SECTIONS = {
    "scheduler",
    "schedule_storage",
    "run_launcher",
    "run_storage",
    "event_log_storage",
    "run_coordinator",
    "compute_logs",
    "python_logs",
    "run_retries",
    "sensors",
    "schedules",
    "retention",
}


def grpc_args(workspace: Path = WORKSPACE) -> list[str]:
    """`dagster api grpc` arguments serving the workspace's one Python-module code location."""
    entries = yaml.safe_load(workspace.read_text())["load_from"]
    modules = [entry["python_module"] for entry in entries if "python_module" in entry]
    if len(entries) != 1 or len(modules) != 1:
        raise ValueError(f"{workspace}: expected one python_module code location, found {entries}")
    module = modules[0]
    if isinstance(module, str):
        return ["-m", module]
    args = ["-m", module["module_name"]]
    if module.get("attribute"):
        args += ["-a", module["attribute"]]
    return args


def render(
    settings: ClusterSettings, instance: Path = INSTANCE, workspace: Path = WORKSPACE
) -> dict[str, Any]:
    config = yaml.safe_load(instance.read_text())
    if "postgres" not in config.get("storage", {}):
        raise ValueError(
            f"{instance}: the Dagster chart needs PostgreSQL storage, found {config.get('storage')}"
        )
    run_monitoring = config.get("run_monitoring", {})
    run_retries = config.get("run_retries", {})
    for section, known, keys in (
        ("run_monitoring", RUN_MONITORING_KEYS, run_monitoring),
        ("run_retries", RUN_RETRIES_KEYS, run_retries),
    ):
        if unknown := set(keys) - set(known):
            raise ValueError(f"{instance}: {section} keys the chart cannot render: {sorted(unknown)}")
    rendered = {"storage", "telemetry", "run_monitoring", "run_retries"}
    extra = {key: value for key, value in config.items() if key not in rendered}
    clashing = set(extra) & CHART_SECTIONS
    if clashing:
        raise ValueError(f"{instance}: sections the chart writes from its own values: {sorted(clashing)}")

    profile_env = [
        {"name": "FRAUDPIPE_PROFILE", "value": PROFILE},
        {"name": "FRAUDPIPE_DATA_DIR", "value": settings.data_dir},
        # The `deployment` asset patches the RayService (KubeRay deploys it) with the same config
        # the manifests render, the pods' proxy bound to the pod IP.
        {"name": "FRAUDPIPE_SERVING__RAYSERVICE", "value": rayservice.NAME},
        {"name": "FRAUDPIPE_SERVING__NAMESPACE", "value": settings.namespace},
        {"name": "FRAUDPIPE_SERVING__HOST", "value": rayservice.PROXY_HOST},
    ]
    ray_env = driver_env(settings)
    data_volume = {"name": "data", "persistentVolumeClaim": {"claimName": settings.data_claim}}
    data_mount = {"name": "data", "mountPath": settings.data_dir}
    env_secrets = [{"name": settings.env_secret}]
    repository, tag = settings.code_location_image
    values: dict[str, Any] = {
        # Dagster's own role and its password (key postgresql-password), not the server's superuser.
        "global": {"postgresqlSecretName": settings.dagster_postgres_secret},
        "postgresql": {
            # The database is infra/k8s/postgresql.yaml's (or any PostgreSQL you run), not the chart's.
            "enabled": False,
            "postgresqlHost": POSTGRES_NAME,
            "postgresqlUsername": settings.dagster_postgres_user,
            "postgresqlDatabase": settings.dagster_database,
            "service": {"port": POSTGRES_PORT},
        },
        # The password comes from the Secret named above (key postgresql-password), created by hand.
        "generatePostgresqlPasswordSecret": False,
        "telemetry": {"enabled": bool(config.get("telemetry", {}).get("enabled", True))},
        "dagsterWebserver": {"resources": settings.dagster_webserver.resources()},
        "dagsterDaemon": {
            "resources": settings.dagster_daemon.resources(),
            "runMonitoring": {RUN_MONITORING_KEYS[key]: value for key, value in run_monitoring.items()},
            "runRetries": {RUN_RETRIES_KEYS[key]: value for key, value in run_retries.items()},
        },
        "runLauncher": {
            "type": "K8sRunLauncher",
            "config": {
                "k8sRunLauncher": {
                    "imagePullPolicy": "IfNotPresent",
                    "jobNamespace": settings.namespace,
                    "loadInclusterConfig": True,
                    "envConfigMaps": [],
                    "envSecrets": env_secrets,
                    "envVars": [
                        f"{var['name']}={var['value']}" for var in profile_env + ray_env if "value" in var
                    ],
                    "volumes": [data_volume],
                    "volumeMounts": [data_mount],
                    "resources": settings.run_pod.resources(),
                    "securityContext": {**container_security(), "runAsNonRoot": True, "runAsUser": APP_UID},
                    "runK8sConfig": {
                        # envVars takes plain values only: the Ray token comes from its Secret here.
                        "containerConfig": {"env": [var for var in ray_env if "valueFrom" in var]},
                        # fsGroup makes the data volume writable for the run's user.
                        "podSpecConfig": {"securityContext": pod_security(APP_UID, APP_UID)},
                    },
                }
            },
        },
        "dagster-user-deployments": {
            "enabled": True,
            "deployments": [
                {
                    "name": CODE_LOCATION,
                    "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
                    "dagsterApiGrpcArgs": grpc_args(workspace),
                    "port": GRPC_PORT,
                    "env": profile_env + ray_env,
                    "envSecrets": env_secrets,
                    # Not passed on to runs: the chart would hand them this server's resources too,
                    # and they would replace the run launcher's (found by
                    # tests/test_k8s_run_launcher.py). Runs get their env, secrets and volumes
                    # from the run launcher above; their image is still this deployment's.
                    "includeConfigInLaunchedRuns": {"enabled": False},
                    "resources": settings.code_location.resources(),
                    "podSecurityContext": pod_security(APP_UID, APP_UID),
                    "securityContext": container_security(),
                    "volumes": [data_volume],
                    "volumeMounts": [data_mount],
                }
            ],
        },
    }
    if extra:
        values["additionalInstanceConfig"] = extra
    return values
