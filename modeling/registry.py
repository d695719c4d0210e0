"""The model registry: registration, champion / challenger aliases, promotion, rollback.

Models are stored as XGBoost UBJ (data, not pickled code). Which version is
champion is an MLflow alias; every promotion is also appended to a registered
model tag, so a rollback knows what the previous champion was even after
several promotions.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.xgboost
import pandas as pd
import xgboost as xgb
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from feature_repo.windows import MODEL_FEATURES
from settings import Settings

CHALLENGER = "challenger"
CHAMPION = "champion"
HISTORY_TAG = "champion_history"
DEPLOYMENT_TAG = "deployment"
"""Registered-model tag holding the versions serving must run: the deployment's desired state."""


@dataclass(frozen=True)
class ModelRegistry:
    """The profile's MLflow tracking store and model registry (SQLite locally, PostgreSQL in prod)."""

    tracking_uri: str
    artifact_root: Path
    model_name: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        return cls(settings.mlflow_tracking_uri(), settings.mlflow_artifact_root, settings.model_name)

    @property
    def experiment_name(self) -> str:
        return self.model_name

    def activate(self) -> str:
        """Point the mlflow client at this store and return the experiment id."""
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        experiment = mlflow.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return str(experiment.experiment_id)
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        return str(
            mlflow.create_experiment(
                self.experiment_name, artifact_location=self.artifact_root.resolve().as_uri()
            )
        )

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def register_model(
    model: xgb.XGBClassifier,
    example: pd.DataFrame,
    model_name: str,
    experiment_id: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    artifact_dirs: Mapping[str, Path] | None = None,
    run_name: str | None = None,
    run_tags: Mapping[str, str] | None = None,
) -> str:
    """Log a run with the model as UBJ, register it, and make it the challenger.

    `artifact_dirs` are local directories logged beside the model under the
    given names (the monitoring reference, say), so what judges a model
    travels with it. `run_name` names the MLflow run (MLflow makes one up
    without it); `run_tags` are set on the run only, not on the model version:
    what made the run (the orchestrator's run id, asset, job and trigger), as
    plain strings, so this layer knows nothing of the orchestrator.

    Returns:
        The new model version.
    """
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(run_tags or {})) as run:
        mlflow.log_params(dict(params))
        mlflow.log_metrics(dict(metrics))
        mlflow.set_tags(dict(tags))
        for name, directory in (artifact_dirs or {}).items():
            mlflow.log_artifacts(str(directory), artifact_path=name)
        info = mlflow.xgboost.log_model(
            model,
            name="model",
            model_format="ubj",
            signature=infer_signature(example, model.predict_proba(example)[:, 1]),
            input_example=example.head(5),
            registered_model_name=model_name,
            # Pinned here: MLflow's inference exports the whole uv lock, slowly.
            pip_requirements=[f"xgboost=={xgb.__version__}", f"mlflow=={mlflow.__version__}"],
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in {**tags, "run_id": run.info.run_id}.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    return version


def alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias is not set."""
    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


class ModelArtifactError(ValueError):
    """A registered version that is not a model this project serves: refused before anything loads it."""


MODEL_CLASS = "xgboost.sklearn.XGBClassifier"
MODEL_FORMATS = ("ubj", "json")


def load_model(model_name: str, version: str) -> xgb.XGBClassifier:
    """A version's classifier, read as XGBoost data after its MLmodel file is checked.

    Not `mlflow.xgboost.load_model`: it imports and instantiates whatever class the
    MLmodel file names before any check could run, so a tampered file would run
    code of its choosing; here the class and format must be the ones this project
    writes, and XGBoost then parses the file as data (UBJ or JSON, never a pickle).

    Raises:
        ModelArtifactError: another class or format, a missing, corrupt or wrong-shaped model.
    """
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version}", dst_path=tmp))
        where = f"{model_name} v{version}"
        try:
            flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["xgboost"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise ModelArtifactError(
                f"{where}: no readable xgboost flavor in its MLmodel file ({exc!r})"
            ) from None
        model_class, model_format = flavor.get("model_class"), flavor.get("model_format", "xgb")
        if model_class != MODEL_CLASS:
            raise ModelArtifactError(
                f"{where}: its MLmodel file names class {model_class!r}, not {MODEL_CLASS}"
            )
        if model_format not in MODEL_FORMATS:
            raise ModelArtifactError(f"{where}: format {model_format!r}, not one of {MODEL_FORMATS}")
        data = local / str(flavor.get("data", ""))
        if data.parent != local or data.suffix != f".{model_format}" or not data.is_file():
            raise ModelArtifactError(f"{where}: no {model_format} model file at {flavor.get('data')!r}")
        model = xgb.XGBClassifier()
        try:
            model.load_model(data)
        except xgb.core.XGBoostError as exc:
            raise ModelArtifactError(f"{where}: XGBoost cannot read {data.name}: {str(exc)[:300]}") from None
    features = model.get_booster().num_features()
    if features != len(MODEL_FEATURES) or getattr(model, "n_classes_", 2) != 2:
        raise ModelArtifactError(
            f"{where}: takes {features} features for {getattr(model, 'n_classes_', '?')} classes; "
            f"serving sends {len(MODEL_FEATURES)} for 2"
        )
    return model


def download_artifacts(client: MlflowClient, model_name: str, version: str, directory: str) -> Path:
    """A local copy of an artifact directory logged with a version's run."""
    run_id = client.get_model_version(model_name, version).run_id
    if not run_id:
        raise ValueError(f"{model_name} v{version} has no run to read {directory!r} from")
    return Path(client.download_artifacts(run_id, directory))


def champion_history(client: MlflowClient, model_name: str) -> list[str]:
    tags = client.get_registered_model(model_name).tags
    return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]


def promote(client: MlflowClient, model_name: str, version: str, reason: str) -> None:
    """Make `version` champion and remember it, for rollback."""
    history = champion_history(client, model_name)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps([*history, version]))
    client.set_model_version_tag(model_name, version, "promotion_reason", reason)


def rollback(client: MlflowClient, model_name: str) -> tuple[str, str]:
    """Point champion back at the version that held it before the current one.

    Returns:
        (the demoted version, the restored version).

    Raises:
        ValueError: when there is no earlier champion to go back to.
    """
    history = champion_history(client, model_name)
    current = alias_version(client, model_name, CHAMPION)
    if current is None or len(history) < 2:
        raise ValueError(
            f"{model_name}: no earlier champion to roll back to (promotion history: {history or 'empty'})"
        )
    restored = history[-2]
    client.set_registered_model_alias(model_name, CHAMPION, restored)
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(history[:-1]))
    client.set_model_version_tag(model_name, current, "rolled_back", "true")
    return current, restored


@dataclass(frozen=True)
class Deployment:
    """The model versions serving is pinned to; `challenger` None when there is none."""

    champion: str
    challenger: str | None


def record_deployment(client: MlflowClient, model_name: str, deployment: Deployment) -> None:
    """Record the versions serving must run, where every deployer (and `make serve`) finds them."""
    value = json.dumps({"champion": deployment.champion, "challenger": deployment.challenger})
    client.set_registered_model_tag(model_name, DEPLOYMENT_TAG, value)


def recorded_deployment(client: MlflowClient, model_name: str) -> Deployment | None:
    """The versions last recorded by `record_deployment`; None before the first deployment."""
    try:
        value = client.get_registered_model(model_name).tags.get(DEPLOYMENT_TAG)
    except MlflowException:
        return None
    if not value:
        return None
    fields = json.loads(value)
    return Deployment(str(fields["champion"]), fields.get("challenger"))
