"""NetworkPolicies: every pod of the namespace refuses connections except those listed here.

The Serve proxies, the Ray dashboard and the Dagster code server bind all of
their pod's addresses (they must: Services and other pods reach them there), so
the pod network, not the bind address, is what keeps them private. A default
deny of ingress covers the namespace; each `Allow` then opens one destination to
its sources on the ports it needs. Pods are named by the labels that are
actually on them:

* Ray pods: the labels of our own pod templates (`rayservice.py`), the head
  also KubeRay's `ray.io/node-type: head`. Not KubeRay's `ray.io/cluster`: a
  RayService names each of its RayClusters anew at every upgrade.
* Dagster webserver, daemon and code location: the chart's selector labels
  (`app.kubernetes.io/name`, `app.kubernetes.io/instance: <release>`) and its
  `component` (`helm/dagster/templates/deployment-*.yaml`,
  `charts/dagster-user-deployments/templates/deployment-user.yaml`).
* Run pods: what dagster-k8s puts on the Job's pods (`get_common_labels` and
  `component="run_worker"`), checked on a real launch by
  tests/test_k8s_run_launcher.py.
* PostgreSQL, Redis, the prod-init Job: their own manifests' labels. The stream
  consumer is not rendered here: its pods must carry `STREAM_CONSUMER`'s labels.
* Kafka brokers: Strimzi's (`strimzi.io/cluster`, `strimzi.io/kind`,
  `strimzi.io/broker-role`, node pools: Strimzi >= 0.46 runs no other way).
* Outside the namespace: every pod of the ingress namespace, Prometheus's pods
  (`app.kubernetes.io/name: prometheus`, as the Prometheus operator and the
  community chart label them) in the monitoring namespace, the KubeRay operator
  (`app.kubernetes.io/component: kuberay-operator`, which its Helm chart and its
  kustomization both set) in its namespace; namespaces are matched by
  `kubernetes.io/metadata.name`, which Kubernetes sets and nobody can forge.

Egress is not restricted: the pods need DNS, the Kubernetes API (the
`deployment` asset patches the RayService, the Ray autoscaler and Dagster's run
launcher create pods) and object stores or registries whose addresses are the
cluster's own, not this project's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infra import dagster_values, rayservice
from infra.cluster import ClusterSettings
from infra.stores import POSTGRES_NAME, POSTGRES_PORT, REDIS_NAME, REDIS_PORT
from orchestration import CODE_LOCATION

NAMESPACE_NAME = "kubernetes.io/metadata.name"
# What dagster-k8s labels a run's pod with (dagster_k8s.utils.get_common_labels, K8sRunLauncher).
RUN_POD_LABELS = {"app.kubernetes.io/name": "dagster", "app.kubernetes.io/component": "run_worker"}
STREAM_CONSUMER_COMPONENT = "stream"


@dataclass(frozen=True)
class Pods:
    """Pods a policy names: those of `namespace` carrying all of `labels` (no labels: all of them)."""

    what: str
    namespace: str
    labels: Mapping[str, str]

    def peer(self, policy_namespace: str) -> dict[str, Any]:
        """A NetworkPolicy peer; a namespace other than the policy's is named by its immutable label."""
        peer: dict[str, Any] = {}
        if self.namespace != policy_namespace:
            peer["namespaceSelector"] = {"matchLabels": {NAMESPACE_NAME: self.namespace}}
        if self.labels or not peer:
            peer["podSelector"] = {"matchLabels": dict(self.labels)}
        return peer


@dataclass(frozen=True)
class Allow:
    """`sources` may connect to `to` on `ports` (None: every port); `why` is said in the manifest."""

    name: str
    to: Pods
    sources: tuple[Pods, ...]
    ports: tuple[int, ...] | None
    why: str


@dataclass(frozen=True)
class PodGroups:
    """Every group of pods the policies name, with the labels they select them by."""

    ray: Pods
    ray_head: Pods
    webserver: Pods
    daemon: Pods
    code_location: Pods
    runs: Pods
    prod_init: Pods
    postgresql: Pods
    redis: Pods
    stream_consumer: Pods
    kafka: Pods
    ingress: Pods
    prometheus: Pods
    kuberay_operator: Pods


def pod_groups(settings: ClusterSettings) -> PodGroups:
    ns = settings.namespace
    ray = settings.component_labels("serving")
    chart = {"app.kubernetes.io/instance": dagster_values.RELEASE}
    return PodGroups(
        ray=Pods("Ray pods, head and workers", ns, ray),
        ray_head=Pods("the Ray head", ns, {**ray, "ray.io/node-type": "head"}),
        webserver=Pods(
            "Dagster webserver",
            ns,
            {"app.kubernetes.io/name": "dagster", **chart, "component": "dagster-webserver"},
        ),
        daemon=Pods(
            "Dagster daemon",
            ns,
            {"app.kubernetes.io/name": "dagster", **chart, "component": "dagster-daemon"},
        ),
        code_location=Pods(
            "Dagster code location (gRPC server)",
            ns,
            {
                "app.kubernetes.io/name": "dagster-user-deployments",
                **chart,
                "component": "user-deployments",
                "deployment": CODE_LOCATION,
            },
        ),
        runs=Pods("Dagster run pods", ns, RUN_POD_LABELS),
        prod_init=Pods("the prod-init Job", ns, settings.component_labels("setup")),
        postgresql=Pods("PostgreSQL", ns, {"app.kubernetes.io/name": POSTGRES_NAME}),
        redis=Pods("Redis", ns, {"app.kubernetes.io/name": REDIS_NAME}),
        stream_consumer=Pods(
            "the stream consumer",
            ns,
            settings.component_labels(STREAM_CONSUMER_COMPONENT),
        ),
        kafka=Pods(
            "Kafka brokers",
            settings.kafka_namespace,
            {
                "strimzi.io/cluster": settings.kafka_cluster,
                "strimzi.io/kind": "Kafka",
                "strimzi.io/broker-role": "true",
            },
        ),
        ingress=Pods("the ingress controller", settings.ingress_namespace, {}),
        prometheus=Pods(
            "Prometheus",
            settings.monitoring_namespace,
            {"app.kubernetes.io/name": "prometheus"},
        ),
        kuberay_operator=Pods(
            "the KubeRay operator",
            settings.kuberay_namespace,
            {"app.kubernetes.io/component": "kuberay-operator"},
        ),
    )


def allows(settings: ClusterSettings) -> list[Allow]:
    """Who may connect to whom, and on which ports: everything else is refused."""
    pods = pod_groups(settings)
    serve = rayservice.serve_port(settings)
    drivers = (pods.runs, pods.code_location)
    return [
        Allow(
            "serve-from-ingress",
            pods.ray,
            (pods.ingress,),
            (serve,),
            "outside traffic reaches the scoring API on any node's proxy",
        ),
        Allow(
            "ray-head-from-kuberay",
            pods.ray_head,
            (pods.kuberay_operator,),
            (rayservice.DASHBOARD_PORT, serve),
            "KubeRay applies serveConfigV2 through the dashboard and checks the head's proxy",
        ),
        Allow(
            "ray-from-ray",
            pods.ray,
            (pods.ray,),
            None,
            "GCS, raylets, object managers and workers: Ray picks the ports",
        ),
        Allow(
            "ray-from-drivers",
            pods.ray,
            drivers,
            None,
            "run pods and the code location are Ray drivers (FRAUDPIPE_RAY_ADDRESS): GCS, raylets, workers",
        ),
        Allow("runs-from-ray", pods.runs, (pods.ray,), None, "Ray workers call back into their driver"),
        Allow(
            "code-location-from-ray",
            pods.code_location,
            (pods.ray,),
            None,
            "Ray workers call back into their driver",
        ),
        Allow(
            "code-location-from-dagster",
            pods.code_location,
            (pods.webserver, pods.daemon),
            (dagster_values.GRPC_PORT,),
            "the webserver and the daemon load the definitions from the code server",
        ),
        Allow(
            "postgresql-from-clients",
            pods.postgresql,
            (pods.webserver, pods.daemon, pods.code_location, pods.runs, pods.prod_init, pods.ray),
            (POSTGRES_PORT,),
            "Dagster's instance, MLflow's registry (runs, Serve replicas), Feast's; prod-init creates them",
        ),
        Allow(
            "redis-from-clients",
            pods.redis,
            (pods.ray, pods.stream_consumer),
            (REDIS_PORT,),
            "the online event buffers (and a Redis Streams bus): the consumer writes, Serve replicas read",
        ),
        Allow(
            "kafka-from-clients",
            pods.kafka,
            (pods.ray, pods.stream_consumer),
            (settings.kafka_port,),
            "the bus: the consumer reads the topics, Serve replicas write the predictions",
        ),
        Allow(
            "ray-metrics-from-prometheus",
            pods.ray,
            (pods.prometheus,),
            (rayservice.metrics_port(settings),),
            "Ray's per-node metrics endpoint (every replica's metrics)",
        ),
    ]


def render(settings: ClusterSettings) -> list[dict[str, Any]]:
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(settings, "fraudpipe-default-deny-ingress", settings.namespace),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    return [deny, *(_policy(settings, allow) for allow in allows(settings))]


def matrix(settings: ClusterSettings) -> list[str]:
    """One line per allowed path, for the manifest's header."""

    def named(pods: Pods) -> str:
        return pods.what if pods.namespace == settings.namespace else f"{pods.what} (ns {pods.namespace})"

    lines = []
    for allow in allows(settings):
        ports = ", ".join(map(str, allow.ports)) if allow.ports else "every port"
        sources = ", ".join(named(source) for source in allow.sources)
        lines.append(f"{named(allow.to)} <- {sources}: {ports}. {allow.why}.")
    return lines


def _policy(settings: ClusterSettings, allow: Allow) -> dict[str, Any]:
    namespace = allow.to.namespace
    rule: dict[str, Any] = {"from": [source.peer(namespace) for source in allow.sources]}
    if allow.ports is not None:
        rule["ports"] = [{"protocol": "TCP", "port": port} for port in allow.ports]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(settings, f"fraudpipe-{allow.name}", namespace),
        "spec": {
            "podSelector": {"matchLabels": dict(allow.to.labels)},
            "policyTypes": ["Ingress"],
            "ingress": [rule],
        },
    }


def _metadata(settings: ClusterSettings, name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": settings.component_labels("network")}
