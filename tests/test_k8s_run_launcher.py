"""The Kubernetes Job dagster-k8s launches for a retraining run, built by dagster-k8s's own code.

The instance config and the code location's container context are what the
Dagster Helm chart makes of infra/k8s/dagster-values.yaml: its templates
`helpers/instance/_run-launcher.tpl` (run launcher) and
`dagster-user-deployments/templates/helpers/_helpers.tpl`
(`k8sContainerContext`, with `includeConfigInLaunchedRuns`), transcribed
below key for key. From there on nothing is ours: a real `K8sRunLauncher`
launches a real run of `retraining_job` on a Dagster instance, and only the
Kubernetes API client is a mock, which records the Job it is asked to create.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.launcher import LaunchRunContext
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.test_utils import create_run_for_test, instance_for_test
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import deserialize_value
from dagster_k8s import K8sRunLauncher
from kubernetes.client import ApiClient

from infra.cluster import ClusterSettings

ROOT = Path(__file__).resolve().parent.parent
VALUES = yaml.safe_load((ROOT / "infra" / "k8s" / "dagster-values.yaml").read_text())
RELEASE = "dagster"  # `helm upgrade --install dagster ...` (README): the chart's fullname
NAMESPACE = "fraudpipe"
CHART_DAGSTER_HOME = "/opt/dagster/dagster_home"  # the chart's global.dagsterHome default
# The code server reports its own interpreter: the code-location image's venv.
IMAGE_PYTHON = "/opt/venv/bin/python"


def _names(items: list[dict[str, Any]]) -> list[str]:
    return [item["name"] for item in items if "name" in item]


def chart_run_launcher_config(values: dict[str, Any]) -> dict[str, Any]:
    """`dagsterYaml.runLauncher.k8s`: the run_launcher config the chart writes into dagster.yaml."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    config: dict[str, Any] = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": RELEASE,
        "dagster_home": CHART_DAGSTER_HOME,
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    optional = {
        "env_config_maps": _names(k8s.get("envConfigMaps", [])),
        "env_secrets": _names(k8s.get("envSecrets", [])),
        "env_vars": k8s.get("envVars"),
        "volume_mounts": k8s.get("volumeMounts"),
        "volumes": k8s.get("volumes"),
        "labels": k8s.get("labels"),
        "resources": k8s.get("resources"),
        "security_context": k8s.get("securityContext"),
    }
    config.update({key: value for key, value in optional.items() if value})
    run_k8s = k8s.get("runK8sConfig", {})
    if run_k8s:
        keys = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config"}
        config["run_k8s_config"] = {keys[key]: value for key, value in run_k8s.items()}
    return config


def chart_container_context(values: dict[str, Any], deployment: dict[str, Any]) -> dict[str, Any]:
    """`dagsterUserDeployments.k8sContainerContext`: what the code server hands every run it starts."""
    k8s: dict[str, Any] = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [
            f"{RELEASE}-{deployment['name']}-user-env",
            *_names(deployment.get("envConfigMaps", [])),
        ],
        "namespace": NAMESPACE,
        "service_account_name": f"{RELEASE}-user-deployments",
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    optional = {
        "env_secrets": _names(deployment.get("envSecrets", [])),
        "volume_mounts": deployment.get("volumeMounts"),
        "volumes": deployment.get("volumes"),
        "labels": deployment.get("labels"),
        "resources": deployment.get("resources"),
        "env": deployment.get("env") if isinstance(deployment.get("env"), list) else None,
    }
    k8s.update({key: value for key, value in optional.items() if value})
    return {"k8s": k8s}


def _env(container: Any) -> dict[str, Any]:
    return {var.name: var for var in container.env}


KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
    "users": [{"name": "none", "user": {}}],
    "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
    "current-context": "none",
}


@pytest.fixture
def launched_job(tmp_path: Path) -> Any:
    """The V1Job body dagster-k8s sends to the Kubernetes API for one retraining run.

    The launcher loads a kubeconfig when it starts; this one names a server
    nothing listens on, and the mocked batch API is all that is ever called.
    """
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(KUBECONFIG))
    deployment = VALUES["dagster-user-deployments"]["deployments"][0]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    context = (
        chart_container_context(VALUES, deployment)
        if deployment.get("includeConfigInLaunchedRuns", {}).get("enabled")
        else None
    )
    batch_api = mock.MagicMock()
    with instance_for_test() as instance:
        launcher = K8sRunLauncher(
            **{k: v for k, v in chart_run_launcher_config(VALUES).items() if k != "load_incluster_config"},
            load_incluster_config=False,
            kubeconfig_file=str(kubeconfig),
            k8s_client_batch_api=batch_api,
        )
        launcher.register_instance(instance)
        module, attribute = deployment["dagsterApiGrpcArgs"][1], deployment["dagsterApiGrpcArgs"][3]
        origin = JobPythonOrigin(
            "retraining_job",
            RepositoryPythonOrigin(
                executable_path=IMAGE_PYTHON,
                code_pointer=ModuleCodePointer(module, attribute, working_directory=None),
                container_image=image,  # DAGSTER_CURRENT_IMAGE, which the chart sets on the code server
                container_context=context,
            ),
        )
        run = create_run_for_test(
            instance,
            job_name="retraining_job",
            job_code_origin=origin,
            tags={"fraudpipe/trigger": "drift", "fraudpipe/trigger_day": "2018-06-13"},
        )
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
        assert batch_api.create_namespaced_job.call_count == 1
        call = batch_api.create_namespaced_job.call_args
        return run, image, call.kwargs["namespace"], call.kwargs["body"]


def test_the_retraining_run_job_runs_the_code_location_image_with_its_run(launched_job: Any) -> None:
    run, image, namespace, job = launched_job
    dockerfile = (ROOT / "infra" / "docker" / "code-location.Dockerfile").read_text()
    assert f"PATH={Path(IMAGE_PYTHON).parent}:" in dockerfile
    assert namespace == NAMESPACE
    assert job.metadata.name == f"dagster-run-{run.run_id}"
    assert job.metadata.labels["dagster/job"] == "retraining_job"
    pod = job.spec.template.spec
    (container,) = pod.containers
    assert container.image == image
    assert container.args[:5] == [IMAGE_PYTHON, "-m", "dagster", "api", "execute_run"]
    args = deserialize_value(container.args[5], ExecuteRunArgs)
    assert args.run_id == run.run_id
    assert args.job_origin.job_name == "retraining_job"
    pointer = args.job_origin.repository_origin.code_pointer
    assert (pointer.module, pointer.fn_name) == ("orchestration.definitions", "defs")
    assert job.spec.backoff_limit == 0  # a failed retraining waits for its next trigger, not a blind retry
    assert pod.restart_policy == "Never"


def test_the_retraining_run_job_gets_the_cluster_profile_and_its_secrets(launched_job: Any) -> None:
    _, _, _, job = launched_job
    pod = job.spec.template.spec
    (container,) = pod.containers
    env = _env(container)
    assert env["DAGSTER_HOME"].value == CHART_DAGSTER_HOME
    password = env["DAGSTER_PG_PASSWORD"].value_from.secret_key_ref
    assert (password.name, password.key) == (VALUES["global"]["postgresqlSecretName"], "postgresql-password")
    assert env["FRAUDPIPE_PROFILE"].value == "cluster"
    assert env["FRAUDPIPE_DATA_DIR"].value == "/data"
    assert env["FRAUDPIPE_RAY_ADDRESS"].value == "fraudpipe-head-svc:6379"
    # retraining_job ends with the `deployment` asset, which patches the RayService it names.
    assert env["FRAUDPIPE_SERVING__RAYSERVICE"].value == "fraudpipe"
    assert env["FRAUDPIPE_SERVING__NAMESPACE"].value == NAMESPACE
    assert env["RAY_AUTH_MODE"].value == "token"
    token = env["RAY_AUTH_TOKEN"].value_from.secret_key_ref
    assert (token.name, token.key) == ("fraudpipe-ray-token", "auth_token")
    secrets = [source.secret_ref.name for source in container.env_from if source.secret_ref]
    # FRAUDPIPE_MLFLOW_PG_URL, FRAUDPIPE_ONLINE_URL, ... of .env.prod.example
    assert "fraudpipe-env" in secrets
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    assert mounts["data"] == "/data"
    assert {
        v.name: v.persistent_volume_claim.claim_name for v in pod.volumes if v.persistent_volume_claim
    } == {"data": "fraudpipe-data"}
    assert pod.security_context.run_as_non_root is True
    assert container.security_context.allow_privilege_escalation is False


def test_the_retraining_run_job_is_sized_for_training(launched_job: Any) -> None:
    """Run pods train models: they get the run launcher's resources, not the code server's smaller ones."""
    _, _, _, job = launched_job
    (container,) = job.spec.template.spec.containers
    wanted = VALUES["runLauncher"]["config"]["k8sRunLauncher"]["resources"]
    assert container.resources.requests == wanted["requests"]
    assert container.resources.limits == wanted["limits"]


def test_the_job_config_is_the_one_dagster_k8s_validates() -> None:
    """The run launcher config is accepted by K8sRunLauncher's own config schema, as the chart renders it."""
    processed = process_config(K8sRunLauncher.config_type(), chart_run_launcher_config(VALUES))
    assert processed.success, processed.errors
    broken = {**chart_run_launcher_config(VALUES), "resources": {"requests": {"cpu": 2}, "limit": {}}}
    assert not process_config(K8sRunLauncher.config_type(), broken).success


def test_the_run_pod_carries_the_labels_the_network_policies_admit(launched_job: Any) -> None:
    """infra/k8s/network-policies.yaml names run pods by labels; these are the ones dagster-k8s puts on
    the pod of a real launch, so the run reaches the Ray cluster and PostgreSQL, and Ray reaches it."""
    _, _, _, job = launched_job
    labels = job.spec.template.metadata.labels
    policies = list(yaml.safe_load_all((ROOT / "infra" / "k8s" / "network-policies.yaml").read_text()))

    def names(selector: dict[str, Any]) -> bool:
        wanted = selector.get("matchLabels", {})
        return bool(wanted) and wanted.items() <= labels.items()

    as_source = {
        policy["metadata"]["name"]
        for policy in policies
        for rule in policy["spec"].get("ingress", [])
        for peer in rule["from"]
        if "namespaceSelector" not in peer and names(peer["podSelector"])
    }
    assert {"fraudpipe-ray-from-drivers", "fraudpipe-postgresql-from-clients"} <= as_source
    as_target = {policy["metadata"]["name"] for policy in policies if names(policy["spec"]["podSelector"])}
    assert as_target == {"fraudpipe-runs-from-ray"}


def _secret_names(obj: Any) -> set[str]:
    """Every Secret a serialized pod spec names: env, envFrom, secret and projected volumes, pull secrets."""
    found: set[str] = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("secretKeyRef", "secretRef", "secret") and isinstance(value, dict):
                found.add(value.get("name") or value["secretName"])
            elif key == "imagePullSecrets" and isinstance(value, list):
                found |= {item["name"] for item in value}
            found |= _secret_names(value)
    elif isinstance(obj, list):
        for item in obj:
            found |= _secret_names(item)
    return found


def test_the_run_pod_gets_dagsters_own_role_and_never_the_postgres_admin(launched_job: Any) -> None:
    """What dagster-k8s really puts in a run's Job: Dagster's own database password, the env Secret
    and the Ray token; not the server's superuser password, not the prod-init Job's admin URL."""
    _, _, _, job = launched_job
    settings = ClusterSettings()
    names = _secret_names(ApiClient().sanitize_for_serialization(job))
    assert names == {settings.dagster_postgres_secret, settings.env_secret, settings.ray_token_secret}
    assert settings.pg_admin_secret not in names and settings.postgres_secret not in names
    user = VALUES["postgresql"]["postgresqlUsername"]
    assert user == settings.dagster_postgres_user != settings.postgres_user
