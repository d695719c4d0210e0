"""The one place to size and name the Kubernetes deployment, and the shared pieces of its manifests.

Everything that is a choice about the cluster (namespace, registry, image
tags, replica bounds, resource sizes, topic partitions) is a field of
`ClusterSettings`; what the pipeline itself decides (the Serve config, the
Dagster instance, the topics) is read from the project's own files by the
renderers. Image tags carry the project version, and the Ray image's tag also
carries the Ray version the lock pins, so `rayVersion` and the image cannot
drift apart.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from settings import ProfileName

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = PROJECT_ROOT / "infra" / "docker"
RAY_DOCKERFILE = DOCKER_DIR / "ray.Dockerfile"

# The profile the containers run: the prod stores, reached over the cluster's network.
PROFILE: ProfileName = "cluster"


@dataclass(frozen=True)
class Size:
    """A container's CPU and memory; requests equal limits unless `limit_*` say otherwise."""

    cpu: str
    memory: str
    limit_cpu: str | None = None
    limit_memory: str | None = None
    gpus: int = 0

    def resources(self) -> dict[str, Any]:
        requests: dict[str, Any] = {"cpu": self.cpu, "memory": self.memory}
        limits: dict[str, Any] = {
            "cpu": self.limit_cpu or self.cpu,
            "memory": self.limit_memory or self.memory,
        }
        if self.gpus:
            # Extended resources cannot be overcommitted: Kubernetes wants them equal in both.
            requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = self.gpus
        return {"requests": requests, "limits": limits}


@dataclass(frozen=True)
class WorkerGroup:
    """A KubeRay worker group: the Ray autoscaler moves its size between the bounds."""

    name: str
    size: Size
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True)
class ClusterSettings:
    """Names, images and sizes of the deployment; change them here and run `make k8s-manifests`.

    Attributes:
        namespace: where every object goes (KafkaTopics: `kafka_namespace`).
        registry: image registry the two images of infra/docker are pushed to.
        env_secret: Secret with the FRAUDPIPE_* connection URLs of .env.prod.example
            (`kubectl create secret generic ... --from-env-file`); every pipeline container gets it.
            Its three PostgreSQL URLs name each service's own role, never the superuser, and it
            holds no FRAUDPIPE_PG_ADMIN_URL.
        postgres_secret: Secret whose `postgresql-password` key is the password of the server's
            superuser `postgres_user`; only the PostgreSQL server reads it.
        pg_admin_secret: Secret whose `url` key is FRAUDPIPE_PG_ADMIN_URL (the superuser's URL of
            the server's `postgres` database): the prod-init Job's alone, which makes each service's
            role and gives it its database. No other pod mounts it; delete it once the Job is done.
        dagster_postgres_secret: Secret whose `postgresql-password` key is the password of
            `dagster_postgres_user` (the one in FRAUDPIPE_DAGSTER_PG_URL): the Dagster chart
            reads it (`global.postgresqlSecretName`) for its pods: webserver, daemon, code location, runs.
        redis_secret: Secret whose `password` key Redis requires.
        ray_token_secret: Secret whose `auth_token` key is the Ray cluster's token: KubeRay gives it
            to the Ray pods, the Dagster pods present it when they join the cluster as drivers.
        data_claim, data_size, data_storage_class: the ReadWriteMany volume mounted at
            `data_dir` by Ray pods, the code location and Dagster's run pods: the lake and
            MLflow's artifact directory, written by runs and read by the Serve replicas.
        postgres_user: the server's superuser (`POSTGRES_USER`): prod-init's admin, no service's.
        dagster_database, dagster_postgres_user: the database and role FRAUDPIPE_DAGSTER_PG_URL
            names (.env.prod.example): the Dagster chart logs in as that role, which prod-init
            made owner of that database and of nothing else.
        kafka_cluster, kafka_namespace: the Strimzi `Kafka` the topics belong to.
        kafka_port: the port of the listener the bus URL names (its plain listener, 9092).
        topic_partitions, topic_replicas, topic_min_insync: per topic; 3 replicas with 2 in
            sync survive one broker down without losing an acknowledged event.
        ingress_namespace: where the ingress controller (or whatever routes outside traffic in)
            runs: the only namespace whose pods reach the Serve proxies (network-policies.yaml).
        monitoring_namespace: where Prometheus runs; its pods may scrape Ray's metrics port.
        kuberay_namespace: where the KubeRay operator runs; it deploys serveConfigV2 through the
            head's dashboard and checks the head's proxy, so it alone, outside the Ray cluster's own
            drivers, reaches the dashboard.
    """

    namespace: str = "fraudpipe"
    registry: str = "registry.example.com/fraudpipe"
    env_secret: str = "fraudpipe-env"
    postgres_secret: str = "fraudpipe-postgresql"
    pg_admin_secret: str = "fraudpipe-pg-admin"
    dagster_postgres_secret: str = "fraudpipe-dagster-postgresql"
    redis_secret: str = "fraudpipe-redis"
    ray_token_secret: str = "fraudpipe-ray-token"
    data_claim: str = "fraudpipe-data"
    data_size: str = "100Gi"
    data_storage_class: str | None = None
    data_dir: str = "/data"

    ray_head: Size = Size(cpu="2", memory="8Gi")
    ray_autoscaler: Size = Size(cpu="500m", memory="512Mi")
    ray_workers: tuple[WorkerGroup, ...] = (
        WorkerGroup("cpu-workers", Size(cpu="4", memory="16Gi"), min_replicas=1, max_replicas=8),
        WorkerGroup("gpu-workers", Size(cpu="8", memory="32Gi", gpus=1), min_replicas=0, max_replicas=2),
    )
    # Seconds a worker stays idle before the autoscaler removes it: Serve gives a replica
    # back only after downscale_delay_s (300 s in the Serve config), so a shorter idle
    # time would not free nodes sooner.
    ray_idle_timeout_s: int = 300

    code_location: Size = Size(cpu="500m", memory="2Gi", limit_cpu="1", limit_memory="4Gi")
    run_pod: Size = Size(cpu="2", memory="8Gi", limit_cpu="4", limit_memory="16Gi")
    dagster_webserver: Size = Size(cpu="250m", memory="1Gi", limit_cpu="1", limit_memory="2Gi")
    dagster_daemon: Size = Size(cpu="250m", memory="1Gi", limit_cpu="1", limit_memory="2Gi")
    dagster_database: str = "fraudpipe_dagster"
    dagster_postgres_user: str = "fraudpipe_dagster"
    postgres_user: str = "postgres"

    redis_image: str = "redis:7.4.2-bookworm"
    redis: Size = Size(cpu="500m", memory="2Gi", limit_cpu="1", limit_memory="2Gi")
    redis_storage: str = "20Gi"
    postgres_image: str = "postgres:16.8-bookworm"
    postgres: Size = Size(cpu="500m", memory="2Gi", limit_cpu="2", limit_memory="4Gi")
    postgres_storage: str = "50Gi"

    kafka_cluster: str = "fraudpipe-kafka"
    kafka_namespace: str = "fraudpipe"
    kafka_port: int = 9092
    topic_partitions: int = 6
    topic_replicas: int = 3
    topic_min_insync: int = 2

    ingress_namespace: str = "ingress-nginx"
    monitoring_namespace: str = "monitoring"
    # KubeRay's Helm chart installs into the release's namespace, `default` in its quick start.
    kuberay_namespace: str = "default"

    labels: dict[str, str] = field(default_factory=lambda: {"app.kubernetes.io/part-of": "fraudpipe"})

    def __post_init__(self) -> None:
        # Least privilege: the superuser is prod-init's, each service logs in as its own role.
        if self.dagster_postgres_user == self.postgres_user:
            raise ValueError(
                f"dagster_postgres_user is the server's superuser {self.postgres_user!r}: "
                "give Dagster a role of its own (prod-init makes it)"
            )
        secrets = [self.env_secret, self.postgres_secret, self.pg_admin_secret, self.dagster_postgres_secret]
        if len(set(secrets)) != len(secrets):
            raise ValueError(f"the env, PostgreSQL, admin and Dagster Secrets must differ: {secrets}")

    @property
    def project_version(self) -> str:
        return str(tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"])

    @property
    def ray_version(self) -> str:
        """The Ray the lock installs: the RayService's `rayVersion` and the Ray image's base."""
        return metadata.version("ray")

    @property
    def code_location_image(self) -> tuple[str, str]:
        return f"{self.registry}/fraudpipe-code-location", self.project_version

    @property
    def ray_image(self) -> str:
        return f"{self.registry}/fraudpipe-ray:{self.project_version}-ray{self.ray_version}"

    def redis_maxmemory(self) -> str:
        """Half of Redis's memory limit, in MiB: the other half is for the fork of an AOF rewrite."""
        limit = self.redis.limit_memory or self.redis.memory
        if not limit.endswith("Gi"):
            raise ValueError(f"Redis memory limit {limit!r}: give it in Gi")
        return f"{int(float(limit.removesuffix('Gi')) * 1024) // 2}mb"

    def component_labels(self, component: str) -> dict[str, str]:
        return {**self.labels, "app.kubernetes.io/component": component}


def dockerfile_ray_version(dockerfile: Path = RAY_DOCKERFILE) -> str:
    """The Ray version of the `rayproject/ray` image the Ray Dockerfile builds on."""
    match = re.search(r"^FROM\s+rayproject/ray:(\d+\.\d+\.\d+)\S*", dockerfile.read_text(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{dockerfile} has no `FROM rayproject/ray:<version>...` line")
    return match.group(1)


def pod_security(user: int, group: int) -> dict[str, Any]:
    """The pod-level half of a non-root pod: the volume is group-writable for `group`."""
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": group,
        "fsGroup": group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security(read_only_root: bool = False) -> dict[str, Any]:
    """The container-level half: no privilege escalation, no Linux capabilities."""
    context: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    if read_only_root:
        context["readOnlyRootFilesystem"] = True
    return context
