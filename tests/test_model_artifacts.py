"""A tampered, corrupt or wrong-shaped model version is refused before anything loads it or it is pinned."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import mlflow.xgboost
import numpy as np
import pytest
import yaml
from mlflow.exceptions import MlflowException

from assets.serving import deploy
from bench.chaos import register_small_model
from bench.ports import free_port
from feature_repo.online import open_event_buffers
from feature_repo.windows import MODEL_FEATURES
from modeling import registry
from modeling.registry import ModelArtifactError, ModelRegistry
from serving.metrics import ServingMetrics
from serving.model import ModelStore
from serving.schemas import Transaction
from serving.service import ScoringService
from settings import ServingConfig
from tests.conftest import local_settings

INSTANTIATED: list[str] = []


class Trap:
    """What a tampered MLmodel file names instead of XGBClassifier: instantiating it is running its code."""

    def __init__(self) -> None:
        INSTANTIATED.append("Trap")

    def load_model(self, _path: str) -> None:
        pass


def _mlmodel(models: ModelRegistry) -> Path:
    (path,) = models.artifact_root.rglob("MLmodel")
    return path


@pytest.fixture
def models(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry.from_settings(local_settings(tmp_path))


def test_a_registered_model_loads_as_the_same_classifier(models: ModelRegistry) -> None:
    version, model = register_small_model(models)
    loaded = registry.load_model(models.model_name, version)
    rows = np.random.default_rng(1).normal(size=(50, len(MODEL_FEATURES)))
    np.testing.assert_allclose(loaded.predict_proba(rows)[:, 1], model.predict_proba(rows)[:, 1])


def test_a_tampered_model_class_is_refused_without_being_instantiated(models: ModelRegistry) -> None:
    version, _ = register_small_model(models)
    path = _mlmodel(models)
    spec = yaml.safe_load(path.read_text())
    spec["flavors"]["xgboost"]["model_class"] = f"{__name__}.Trap"
    path.write_text(yaml.safe_dump(spec))
    INSTANTIATED.clear()
    with pytest.raises(ModelArtifactError, match=f"names class '{__name__}.Trap'"):
        registry.load_model(models.model_name, version)
    assert INSTANTIATED == []
    # What the check prevents: MLflow's own loader builds whatever class the file names.
    mlflow.xgboost.load_model(f"models:/{models.model_name}/{version}")
    assert INSTANTIATED == ["Trap"]


def test_a_corrupt_model_file_is_refused(models: ModelRegistry) -> None:
    version, _ = register_small_model(models)
    data = _mlmodel(models).parent / "model.ubj"
    data.write_bytes(b"{not ubj" + data.read_bytes()[:40])
    with pytest.raises(ModelArtifactError, match=r"XGBoost cannot read model\.ubj"):
        registry.load_model(models.model_name, version)


def test_a_model_of_another_shape_is_refused(models: ModelRegistry) -> None:
    version, _ = register_small_model(models, n_features=len(MODEL_FEATURES) + 2)
    with pytest.raises(ModelArtifactError, match=f"takes {len(MODEL_FEATURES) + 2} features"):
        registry.load_model(models.model_name, version)


def test_the_deployment_refuses_a_bad_champion_and_keeps_the_recorded_one(
    tmp_path: Path, models: ModelRegistry
) -> None:
    good, _ = register_small_model(models)
    client = models.client()
    client.set_registered_model_alias(models.model_name, registry.CHAMPION, good)
    settings = local_settings(tmp_path)
    deployed, _how = deploy(settings, models)
    assert deployed.champion == good
    bad, _ = register_small_model(models, n_features=3)
    client.set_registered_model_alias(models.model_name, registry.CHAMPION, bad)
    with pytest.raises(dg.Failure, match="not deployed, serving keeps its current versions"):
        deploy(settings, models)
    recorded = registry.recorded_deployment(client, models.model_name)
    assert recorded is not None and recorded.champion == good


def test_a_registry_that_does_not_answer_leaves_the_loaded_champion_serving(
    tmp_path: Path, models: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconfigure to a new version while the registry is down fails; the replica keeps v1, ready."""
    first, _ = register_small_model(models)
    second, _ = register_small_model(models)
    service = ScoringService(
        open_event_buffers(f"sqlite:///{tmp_path / 'online.db'}"), ModelStore(models), ServingMetrics()
    )
    service.configure(ServingConfig(champion_version=first, prediction_log=False))
    port = free_port()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = f"http://127.0.0.1:{port}"  # nothing listens: the registry is down
    mlflow.set_tracking_uri(down)
    mlflow.set_registry_uri(down)
    try:
        with pytest.raises(MlflowException):
            service.configure(ServingConfig(champion_version=second, prediction_log=False))
    finally:
        models.activate()
    assert service.ready() == (True, f"champion v{first}")
    request = Transaction.model_validate(
        {
            "transaction_id": 1,
            "customer_id": 2,
            "terminal_id": 3,
            "amount": 9.5,
            "timestamp": "2018-05-01T00:00:00Z",
        }
    )
    (scored,) = service.score_each([request])
    assert not isinstance(scored, Exception) and scored.model.version == first
    service.close()
