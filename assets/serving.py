"""Serving as Dagster sees it: the Ray Serve application, observed, never materialised.

Serving follows the registry's `champion` alias by itself (`serving.deploy.AliasWatcher`),
so the promotion gate is the last step Dagster runs; this observation shows in the
lineage and the UI which version the live endpoint answers with, and whether it is up.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import dagster as dg

from orchestration.resources import MonitoringResource

SCORING_SERVICE = dg.AssetSpec(
    "scoring_service",
    group_name="serving",
    deps=["registered_model"],
    kinds={"ray"},
    description=(
        "The Ray Serve scoring application (POST /v1/score): readiness and the champion version it "
        "answers with. It swaps to a new champion without a redeploy."
    ),
)


@dg.multi_observable_source_asset(specs=[SCORING_SERVICE])
def scoring_service(monitoring: MonitoringResource) -> dg.ObserveResult:
    url = f"{monitoring.serve_url}/readyz"
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
