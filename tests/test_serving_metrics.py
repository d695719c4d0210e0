"""Serving's metrics on a real local Ray: two replicas, one scrape of the node's metrics agent sees both.

Deployed as `serving.deploy` deploys (Serve's REST API, the config
`serve_config` renders, pinned versions), over a copy of the session's
pipeline output; the prediction log goes to the session's mock Kafka cluster.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import httpx
import pytest

from demo.scorers import HttpScorer
from modeling import registry
from serving import deploy
from serving.api import UNMATCHED
from serving.metrics import ERRORS, REQUEST_SECONDS, SCORES, SPECS, ray_metrics_url, series_samples
from tests.conftest import ServedData, score_body, serving_on_free_ports

pytestmark = pytest.mark.timeout(600)

REQUESTS = 60


def _scrape_until(url: str, done: Callable[[str], bool], timeout_s: float = 60) -> str:
    """Ray's exposition once `done` holds of it: the replicas export every second or so."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError:
            text = ""
        if done(text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"Ray's metrics never showed what was sent; last scrape:\n{text[-3000:]}")


def _scores_by_replica(text: str) -> dict[str, float]:
    counts: dict[str, float] = defaultdict(float)
    for labels, value in series_samples(text, f"{SCORES.exported}_total"):
        counts[labels["replica"]] += value
    return dict(counts)


def test_one_scrape_of_rays_metrics_agent_sees_every_replica(
    served_data: ServedData, kafka_bootstrap: str
) -> None:
    settings = serving_on_free_ports(served_data, kafka_bootstrap, replicas=2)
    metrics_url = ray_metrics_url(settings.serving.ray_metrics_port)
    models = served_data.resources["mlflow"]
    models.activate()
    rows = served_data.resources["lake"].read_table("training_set").tail(REQUESTS)
    bodies = [score_body(row) for _, row in rows.iterrows()]
    with pytest.MonkeyPatch.context() as env:
        for name, value in settings.to_env().items():  # Ray's processes, hence the replicas, inherit them
            env.setenv(name, value)
        env.setenv("RAY_metrics_report_interval_ms", "1000")  # export every second, not every 10
        from ray import serve

        deploy.start_local(settings, num_cpus=2)
        api = deploy.ServeApi(settings, timeout_s=60)  # the dashboard answers slowly on a busy machine
        scorer = HttpScorer(settings.serving.url, metrics_url=metrics_url)
        try:
            api.deploy(
                deploy.serve_config(
                    settings, registry.recorded_deployment(models.client(), models.model_name)
                )
            )
            url = settings.serving.url
            made_up = [f"/v1/{uuid.uuid4().hex}", f"/v1/score/{uuid.uuid4().hex}"]
            for path in made_up:
                assert httpx.post(f"{url}{path}", json=bodies[0], timeout=30).status_code == 404
            assert httpx.post(f"{url}/v1/score", json={"amount": "x"}, timeout=30).status_code == 422

            async def send_all() -> list[int]:
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    limit = asyncio.Semaphore(8)

                    async def one(body: dict[str, object]) -> int:
                        async with limit:
                            return (await client.post("/v1/score", json=body)).status_code

                    return await asyncio.gather(*(one(body) for body in bodies))

            assert set(asyncio.run(send_all())) == {200}

            # One scrape holds both replicas' scores, which add up to what was sent.
            text = _scrape_until(metrics_url, lambda t: sum(_scores_by_replica(t).values()) >= REQUESTS)
            by_replica = _scores_by_replica(text)
            assert len(by_replica) == 2 and all(by_replica.values()), by_replica
            assert sum(by_replica.values()) == REQUESTS
            scorer.wait_logged(REQUESTS, timeout_s=60)  # the prediction log's counter, summed the same way

            # Route labels are templates: the made-up paths went to one fixed label.
            text = _scrape_until(
                metrics_url,
                lambda t: any(
                    labels["endpoint"] == UNMATCHED
                    for labels, _ in series_samples(t, f"{REQUEST_SECONDS.exported}_count")
                ),
            )
            counts = list(series_samples(text, f"{REQUEST_SECONDS.exported}_count"))
            assert {labels["endpoint"] for labels, _ in counts} == {"/v1/score", UNMATCHED}
            assert sum(v for labels, v in counts if labels["endpoint"] == UNMATCHED) == len(made_up)
            assert not any(path.rsplit("/", 1)[1] in text for path in made_up)
            errors = {labels["kind"]: v for labels, v in series_samples(text, f"{ERRORS.exported}_total")}
            assert errors == {"validation": 1}

            # Every exported series of serving has the names and labels its description gives.
            exported = {
                name: labels for spec in SPECS for name, labels in spec.series().items() if name in text
            }
            assert len(exported) >= 10, exported
            for name, labels in exported.items():
                found = [set(tags) for tags, _ in series_samples(text, name)]
                assert all(tags == labels for tags in found), (name, found)

            # Through the proxy, the app's /metrics would show one replica: it points to Ray's instead.
            pointer = httpx.get(f"{url}/metrics", timeout=30)
            assert pointer.status_code == 404 and str(settings.serving.ray_metrics_port) in pointer.text
        finally:
            scorer.close()
            api.close()
            serve.shutdown()
            import ray

            ray.shutdown()
