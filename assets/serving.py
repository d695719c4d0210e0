"""Serving as Dagster sees it: the deployment that pins model versions, and the live service, observed.

`deployment` is the last asset of the training graph: it records which
versions serving must run and applies the Serve config that pins them (a
running local Serve through its REST API; on Kubernetes, a patch of the
`RayService`). Replicas never follow a registry alias by themselves, so what
`deployment` pinned is what every replica serves, one added later included.
"""

import json
import urllib.error
import urllib.request

import dagster as dg
import httpx

from modeling import registry
from modeling.registry import Deployment, ModelRegistry
from serving.deploy import ServeApi, patch_rayservice, serve_config
from settings import Settings


def deploy(settings: Settings, models: ModelRegistry) -> tuple[Deployment, str]:
    """Pin the champion and challenger aliases' versions into serving; returns them and what was done.

    The versions are recorded in the registry first (`make serve` starts with them); then the
    running application, if any, is reconfigured in place: on Kubernetes by patching the
    `RayService` (KubeRay applies it), elsewhere through Serve's REST API.
    """
    models.activate()
    client = models.client()
    champion = registry.alias_version(client, models.model_name, registry.CHAMPION)
    if champion is None:
        raise dg.Failure(
            f"{models.model_name} has no champion to deploy: the promotion gate has not passed yet"
        )
    deployment = Deployment(champion, registry.alias_version(client, models.model_name, registry.CHALLENGER))
    for version in filter(None, (deployment.champion, deployment.challenger)):
        try:
            # Read here first: a version no replica could load is never pinned, so serving keeps
            # its current versions instead of replicas failing one by one.
            registry.load_model(models.model_name, version)
        except registry.ModelArtifactError as exc:
            raise dg.Failure(f"not deployed, serving keeps its current versions: {exc}") from None
    registry.record_deployment(client, models.model_name, deployment)
    if settings.serving.rayservice is not None:
        patch_rayservice(settings, serve_config(settings, deployment))
        return deployment, f"patched RayService {settings.serving.namespace}/{settings.serving.rayservice}"
    api = ServeApi(settings)
    try:
        if api.status() is None:
            return deployment, "recorded; Serve runs no scoring application here yet (make serve starts it)"
        api.deploy(serve_config(settings, deployment))
        return deployment, f"applied to the running Serve application at {settings.ray_dashboard_url}"
    except httpx.TransportError:
        return deployment, f"recorded; no Ray dashboard answers at {settings.ray_dashboard_url} (make serve)"
    finally:
        api.close()


@dg.asset(group_name="serving", deps=["champion"], kinds={"ray"})
def deployment(
    context: dg.AssetExecutionContext,
    mlflow: dg.ResourceParam[ModelRegistry],
    settings: dg.ResourceParam[Settings],
) -> dg.MaterializeResult:
    """The model versions the Ray Serve application answers with: the champion (and the challenger,
    for A/B, canary or shadow rollouts), pinned into every replica's config."""
    pinned, how = deploy(settings, mlflow)
    context.log.info(f"champion v{pinned.champion}, challenger v{pinned.challenger}: {how}")
    return dg.MaterializeResult(
        metadata={
            "champion_version": pinned.champion,
            "challenger_version": str(pinned.challenger),
            "applied": how,
        }
    )


SCORING_SERVICE = dg.AssetSpec(
    "scoring_service",
    group_name="serving",
    deps=[deployment],
    kinds={"ray"},
    description=(
        "The Ray Serve scoring application (POST /v1/score): readiness and the champion version it "
        "answers with."
    ),
)


@dg.multi_observable_source_asset(specs=[SCORING_SERVICE])
def scoring_service(settings: dg.ResourceParam[Settings]) -> dg.ObserveResult:
    url = f"{settings.serving.url}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as err:
        body = {"ready": False, "detail": err.read().decode(errors="replace")[:200]}
    except (urllib.error.URLError, OSError) as err:
        return dg.ObserveResult(
            data_version=dg.DataVersion("down"),
            metadata={"ready": False, "detail": f"{url} did not answer ({err})"},
        )
    detail = str(body.get("detail", ""))
    return dg.ObserveResult(
        data_version=dg.DataVersion(detail if body.get("ready") else "not-ready"),
        metadata={"ready": bool(body.get("ready")), "detail": detail, "endpoint": dg.MetadataValue.url(url)},
    )
