"""`/docs` and `/redoc` work offline: every file they load is served by the scoring app itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from feature_repo.online import open_event_buffers
from modeling.registry import ModelRegistry
from serving.api import build_api
from serving.metrics import ServingMetrics
from serving.model import ModelStore
from serving.service import ScoringService

PAGES = {
    "/docs": {"swagger-ui-bundle.js": "SwaggerUIBundle", "swagger-ui.css": ".swagger-ui"},
    "/redoc": {"redoc.standalone.js": "Redoc"},
}
"""Each page, and the scripts and stylesheets it must load, with a word each file must contain."""

REFERENCE = re.compile(r"""(?:\b(?:src|href|spec-url)\s*=\s*|\burl:\s*)["']([^"']+)["']""")
"""What a page loads: `src=`, `href=`, ReDoc's `spec-url=` and Swagger UI's `url:` (the schema)."""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """The scoring app with no model pinned: the docs need none."""
    root = tmp_path_factory.mktemp("docs")
    registry = ModelRegistry(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", "fraud_model")
    service = ScoringService(
        open_event_buffers(f"sqlite:///{root / 'online.db'}"), ModelStore(registry), ServingMetrics()
    )
    yield build_api(service)
    service.close()


def references(html: str) -> list[str]:
    found = REFERENCE.findall(html)
    assert found, f"no src/href in the page:\n{html}"
    return found


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_loads_only_local_files(app: FastAPI, page: str) -> None:
    client = TestClient(app)
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    urls = references(html)
    remote = [u for u in urls if urlsplit(u).scheme or urlsplit(u).netloc]
    assert not remote, f"{page} loads from other hosts: {remote}"
    assert not re.search(r"https?://", html), f"{page} names another host:\n{html}"
    for name, word in PAGES[page].items():
        (url,) = [u for u in urls if u.endswith(f"/{name}")]
        asset = client.get(url)
        assert asset.status_code == 200, url
        kind = "javascript" if name.endswith(".js") else "css"
        assert kind in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert len(asset.content) > 10_000 and word in asset.text, url
    favicon = client.get(next(u for u in urls if u.endswith("favicon.png")))
    assert favicon.status_code == 200 and favicon.headers["content-type"] == "image/png"
    schema = next(u for u in urls if u.endswith("/openapi.json"))
    assert "/v1/score" in client.get(schema).json()["paths"]


def test_docs_under_a_prefix(app: FastAPI) -> None:
    """Mounted under a prefix (Ray Serve's `route_prefix`, a proxy's path), the page names its files
    under the prefix, and they are there."""
    client = TestClient(app, root_path="/fraud")
    urls = references(client.get("/docs").text)
    assert urls and all(u.startswith("/fraud/") for u in urls), urls
    for url in urls:
        assert client.get(url).status_code == 200, url


def test_docs_pages_are_not_in_the_schema(app: FastAPI) -> None:
    paths = TestClient(app).get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]
