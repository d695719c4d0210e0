"""The stores the cluster profile talks to: namespace, shared volume, PostgreSQL, Redis, Kafka topics.

PostgreSQL and Redis are single-replica StatefulSets with a volume each: enough
for one team's pipeline, and replaceable by managed services by pointing the
FRAUDPIPE_* URLs of the env Secret elsewhere. PostgreSQL's superuser is the
prod-init Job's only (through the admin Secret); Dagster, MLflow and Feast
each log in as a role of their own that owns its database and nothing else. Kafka is a Strimzi `Kafka`
cluster run by the user's Strimzi operator; this project declares only its
topics, named as the stream consumer names them.
"""

from __future__ import annotations

from typing import Any

from infra.cluster import ClusterSettings, Size, container_security, pod_security

POSTGRES_NAME = "fraudpipe-postgresql"
POSTGRES_PORT = 5432
REDIS_NAME = "fraudpipe-redis"
REDIS_PORT = 6379
# The uid and gid the official postgres and redis images create for their server.
POSTGRES_UID = REDIS_UID = 999
REDIS_SECRET_DIR = "/etc/redis/secret"
REDIS_AUTH_DIR = "/run/redis-auth"
REDIS_AUTH_FILE = f"{REDIS_AUTH_DIR}/requirepass.conf"
REDIS_INIT = Size(cpu="50m", memory="32Mi")


def namespace(settings: ClusterSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": settings.namespace,
            "labels": {
                **settings.labels,
                # Every pod here is non-root already; `restricted` stays a warning because the
                # Dagster chart's own init containers do not set a seccomp profile.
                "pod-security.kubernetes.io/enforce": "baseline",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            },
        },
    }


def data_volume(settings: ClusterSettings) -> dict[str, Any]:
    spec: dict[str, Any] = {
        # Several pods on several nodes write and read it at once: the storage class must
        # support ReadWriteMany (NFS, CephFS, EFS, Filestore, Azure Files...).
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": settings.data_size}},
    }
    if settings.data_storage_class:
        spec["storageClassName"] = settings.data_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": settings.data_claim,
            "namespace": settings.namespace,
            "labels": settings.component_labels("data"),
        },
        "spec": spec,
    }


def postgresql(settings: ClusterSettings) -> list[dict[str, Any]]:
    labels = settings.component_labels("postgresql")
    selector = {"app.kubernetes.io/name": POSTGRES_NAME}
    container = {
        "name": "postgresql",
        "image": settings.postgres_image,
        "ports": [{"name": "postgresql", "containerPort": POSTGRES_PORT}],
        "env": [
            {"name": "POSTGRES_USER", "value": settings.postgres_user},
            {
                "name": "POSTGRES_PASSWORD",
                "valueFrom": {
                    "secretKeyRef": {"name": settings.postgres_secret, "key": "postgresql-password"}
                },
            },
            # A subdirectory: the volume's root may hold lost+found, which initdb refuses.
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
        ],
        "readinessProbe": {
            "exec": {"command": ["pg_isready", "-U", settings.postgres_user, "-h", "127.0.0.1"]},
            "periodSeconds": 10,
        },
        "resources": settings.postgres.resources(),
        "securityContext": container_security(read_only_root=True),
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
            {"name": "run", "mountPath": "/var/run/postgresql"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return [
        _service(settings, POSTGRES_NAME, labels, selector, "postgresql", POSTGRES_PORT),
        _stateful_set(
            settings,
            POSTGRES_NAME,
            labels,
            selector,
            container,
            POSTGRES_UID,
            settings.postgres_storage,
            [{"name": "run", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        ),
    ]


def redis(settings: ClusterSettings) -> list[dict[str, Any]]:
    """Redis with its password kept off every command line (`ps`, /proc/<pid>/cmdline, the pod spec).

    An init container turns the Secret's `password` file into a `requirepass` line in a
    memory-backed volume, and redis-server `--include`s it; the readiness probe's redis-cli
    takes the password from REDISCLI_AUTH. No argv holds it, no variable is expanded into one.
    """
    labels = settings.component_labels("redis")
    selector = {"app.kubernetes.io/name": REDIS_NAME}
    # Quoted for Redis's config parser (a password may hold spaces), `\` and `"` escaped.
    write_auth = (
        r"""umask 077; sed -e 's/[\\"]/\\&/g' -e 's/^/requirepass "/' -e 's/$/"/' """
        f"{REDIS_SECRET_DIR}/password > {REDIS_AUTH_FILE}"
    )
    init = {
        "name": "redis-auth",
        "image": settings.redis_image,
        "command": ["sh", "-c", write_auth],
        "resources": REDIS_INIT.resources(),
        "securityContext": container_security(read_only_root=True),
        "volumeMounts": [
            {"name": "secret", "mountPath": REDIS_SECRET_DIR, "readOnly": True},
            {"name": "auth", "mountPath": REDIS_AUTH_DIR},
        ],
    }
    container = {
        "name": "redis",
        "image": settings.redis_image,
        # Append-only file: the online event buffers and the Redis Streams bus survive a restart.
        # maxmemory at half the limit leaves room for the fork of an AOF rewrite; noeviction
        # because an evicted buffer would read as a card with no history (docs/scaling.md).
        "args": [
            "--include",
            REDIS_AUTH_FILE,
            "--appendonly",
            "yes",
            "--maxmemory",
            settings.redis_maxmemory(),
            "--maxmemory-policy",
            "noeviction",
        ],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "env": [
            {
                "name": "REDISCLI_AUTH",
                "valueFrom": {"secretKeyRef": {"name": settings.redis_secret, "key": "password"}},
            }
        ],
        "readinessProbe": {
            # redis-cli exits 0 on an error reply too (NOAUTH): only PONG is ready.
            "exec": {"command": ["sh", "-c", 'test "$(redis-cli ping)" = PONG']},
            "periodSeconds": 10,
        },
        "resources": settings.redis.resources(),
        "securityContext": container_security(read_only_root=True),
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "auth", "mountPath": REDIS_AUTH_DIR, "readOnly": True},
        ],
    }
    volumes = [
        # 0440: readable by the redis user through fsGroup, by nobody else.
        {
            "name": "secret",
            "secret": {
                "secretName": settings.redis_secret,
                "items": [{"key": "password", "path": "password"}],
                "defaultMode": 0o440,
            },
        },
        {"name": "auth", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    ]
    return [
        _service(settings, REDIS_NAME, labels, selector, "redis", REDIS_PORT),
        _stateful_set(
            settings,
            REDIS_NAME,
            labels,
            selector,
            container,
            REDIS_UID,
            settings.redis_storage,
            volumes,
            init_containers=[init],
        ),
    ]


def kafka_topics(settings: ClusterSettings, topics: tuple[str, ...]) -> list[dict[str, Any]]:
    """One Strimzi KafkaTopic per bus topic, for the `Kafka` named `settings.kafka_cluster`."""
    manifests = []
    for topic in topics:
        # Kubernetes names allow no underscore: such a topic keeps its name in spec.topicName.
        name = topic.replace("_", "-")
        spec: dict[str, Any] = {
            "partitions": settings.topic_partitions,
            "replicas": settings.topic_replicas,
            "config": {"min.insync.replicas": settings.topic_min_insync},
        }
        if name != topic:
            spec["topicName"] = topic
        manifests.append(
            {
                "apiVersion": "kafka.strimzi.io/v1beta2",
                "kind": "KafkaTopic",
                "metadata": {
                    "name": name,
                    "namespace": settings.kafka_namespace,
                    "labels": {
                        **settings.component_labels("bus"),
                        "strimzi.io/cluster": settings.kafka_cluster,
                    },
                },
                "spec": spec,
            }
        )
    return manifests


def prod_init_job(settings: ClusterSettings) -> dict[str, Any]:
    """`make prod-init` as a Job: each of the Dagster, MLflow and Feast URLs of the env Secret gets
    its role (login and nothing more) and its database, owned by that role, closed to PUBLIC.

    It alone gets FRAUDPIPE_PG_ADMIN_URL, one variable from the admin Secret's `url` key (not
    `envFrom`, which would take whatever else that Secret holds); the settings never pass it on
    to a child process. Every other pod reaches PostgreSQL as its service's role.
    """
    repository, tag = settings.code_location_image
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "fraudpipe-prod-init",
            "namespace": settings.namespace,
            "labels": settings.component_labels("setup"),
        },
        "spec": {
            "backoffLimit": 6,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": settings.component_labels("setup")},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "securityContext": pod_security(1000, 1000),
                    "containers": [
                        {
                            "name": "prod-init",
                            "image": f"{repository}:{tag}",
                            "command": ["python", "-m", "orchestration", "prod-init"],
                            "envFrom": [{"secretRef": {"name": settings.env_secret}}],
                            "env": [
                                {
                                    "name": "FRAUDPIPE_PG_ADMIN_URL",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": settings.pg_admin_secret, "key": "url"}
                                    },
                                }
                            ],
                            "resources": settings.code_location.resources(),
                            "securityContext": container_security(),
                        }
                    ],
                },
            },
        },
    }


def _service(
    settings: ClusterSettings,
    name: str,
    labels: dict[str, str],
    selector: dict[str, str],
    port_name: str,
    port: int,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": port_name, "port": port, "targetPort": port_name}],
        },
    }


def _stateful_set(
    settings: ClusterSettings,
    name: str,
    labels: dict[str, str],
    selector: dict[str, str],
    container: dict[str, Any],
    uid: int,
    storage: str,
    volumes: list[dict[str, Any]],
    init_containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"securityContext": pod_security(uid, uid)}
    if init_containers:
        pod_spec["initContainers"] = init_containers
    pod_spec["containers"] = [container]
    if volumes:
        pod_spec["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": {**labels, **selector}}, "spec": pod_spec},
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": storage}},
                    },
                }
            ],
        },
    }
