"""Training: the fraud model, its registration in MLflow, and the promotion gate."""

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pandas as pd
import xgboost as xgb

from assets.training_set import snapshot_id
from feature_repo.windows import FEATURE_SERVICE_NAME, MODEL_FEATURES
from modeling import registry
from modeling.split import SplitWindow, train_test_split
from modeling.train import evaluate, score, select_params, train_and_evaluate
from monitoring.reference import REFERENCE_DIR, write_reference
from orchestration.resources import LakeResource, MLflowResource

MODEL_DIR = "fraud_model"


class ModelConfig(dg.Config):
    """Hyperparameters and the evaluation protocol (the handbook's split by default)."""

    train_start: str = "2018-07-25"
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7
    n_folds: int = 3
    selection_metric: Literal["roc_auc", "average_precision", "card_precision_at_100"] = "average_precision"
    n_estimators: list[int] = [100]
    max_depth: list[int] = [3, 6]
    learning_rate: list[float] = [0.1, 0.3]
    seed: int = 0

    def window_spec(self) -> dict[str, Any]:
        """The evaluation window as plain data, stored beside the model for the gate."""
        return {
            "train_start": self.train_start,
            "train_days": self.train_days,
            "delay_days": self.delay_days,
            "test_days": self.test_days,
        }


def split_window(spec: dict[str, Any]) -> SplitWindow:
    return SplitWindow(
        pd.Timestamp(spec["train_start"], tz="UTC"), spec["train_days"], spec["delay_days"], spec["test_days"]
    )


def _git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dg.asset(group_name="training", deps=["training_set"], kinds={"xgboost"})
def fraud_model(
    context: dg.AssetExecutionContext, config: ModelConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """An XGBoost fraud classifier: hyperparameters chosen by prequential validation,
    trained on one week and scored on a later week (ROC AUC, average precision,
    card precision@100)."""
    frame = lake.read_table("training_set")
    window = split_window(config.window_spec())
    grid: dict[str, Sequence[Any]] = {
        "n_estimators": config.n_estimators,
        "max_depth": config.max_depth,
        "learning_rate": config.learning_rate,
    }
    selection = select_params(frame, window, grid, config.n_folds, config.selection_metric, config.seed)
    context.log.info(f"prequential selection: {selection.scores}")
    model, metrics, test = train_and_evaluate(frame, window, selection.best_params, config.seed)
    out = lake.artifact_dir(MODEL_DIR)
    model.save_model(out / "model.ubj")
    summary = {
        "params": selection.best_params,
        "metrics": metrics,
        "window": config.window_spec(),
        "selection_metric": config.selection_metric,
        "selection": selection.scores,
        "test_rows": len(test),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return dg.MaterializeResult(
        metadata={
            **{k: dg.MetadataValue.float(v) for k, v in metrics.items()},
            "params": dg.MetadataValue.json(selection.best_params),
            "test_rows": len(test),
        }
    )


def _read_model(lake: LakeResource) -> tuple[xgb.XGBClassifier, dict]:
    out = lake.artifact_dir(MODEL_DIR)
    model = xgb.XGBClassifier()
    model.load_model(out / "model.ubj")
    return model, json.loads((out / "summary.json").read_text())


@dg.asset(group_name="training", deps=[fraud_model], kinds={"mlflow"})
def registered_model(
    context: dg.AssetExecutionContext, lake: LakeResource, mlflow: MLflowResource
) -> dg.MaterializeResult:
    """The trained model in the MLflow registry as the `challenger`, with its params,
    metrics, signature, feature service, training-data snapshot and code version, and
    the reference monitoring measures drift against (its training rows, its test scores)."""
    model, summary = _read_model(lake)
    frame = lake.read_table("training_set")
    train, test = train_test_split(frame, split_window(summary["window"]))
    reference = write_reference(train, score(model, test), lake.artifact_dir(MODEL_DIR) / REFERENCE_DIR)
    experiment_id = mlflow.activate()
    tags = {
        "feature_service": FEATURE_SERVICE_NAME,
        "data_snapshot_id": snapshot_id(frame),
        "git_sha": _git_sha(),
        "window": json.dumps(summary["window"]),
        "selection_metric": summary["selection_metric"],
    }
    version = registry.register_model(
        model,
        frame[list(MODEL_FEATURES)].head(100),
        mlflow.model_name,
        experiment_id,
        summary["params"],
        summary["metrics"],
        tags,
        artifact_dirs={REFERENCE_DIR: reference},
    )
    context.log.info(f"registered {mlflow.model_name} v{version} as {registry.CHALLENGER}")
    return dg.MaterializeResult(metadata={"model_name": mlflow.model_name, "version": version, **tags})


def _incomparable(challenger: dict[str, str], champion: dict[str, str], window: SplitWindow) -> str:
    """Why the two versions cannot be judged on the challenger's test week ('' if they can)."""
    if challenger.get("rolled_back") == "true":
        return "the challenger was rolled back before"
    if challenger["feature_service"] != champion.get("feature_service"):
        return (
            f"feature services differ ({challenger['feature_service']} vs {champion.get('feature_service')})"
        )
    champion_window = split_window(json.loads(champion["window"]))
    if champion_window.train_end > window.test_start and champion_window.train_start < window.test_end:
        return "the champion was trained on days of the challenger's test week"
    return ""


@dg.asset_check(asset=registered_model, blocking=True, name="check_promotion_gate")
def check_promotion_gate(lake: LakeResource, mlflow: MLflowResource) -> dg.AssetCheckResult:
    """Promote the challenger to champion only if it beats the champion on the same test week."""
    mlflow.activate()
    client = mlflow.client()
    name = mlflow.model_name
    challenger = registry.alias_version(client, name, registry.CHALLENGER)
    if challenger is None:
        return dg.AssetCheckResult(passed=False, description="no challenger is registered")
    tags = client.get_model_version(name, challenger).tags
    metric = tags["selection_metric"]
    window = split_window(json.loads(tags["window"]))
    _, test = train_test_split(lake.read_table("training_set"), window)
    challenger_metrics = evaluate(registry.load_model(name, challenger), test)
    champion = registry.alias_version(client, name, registry.CHAMPION)
    metadata: dict[str, dg.RawMetadataValue] = {
        "challenger_version": challenger,
        **{f"challenger_{k}": v for k, v in challenger_metrics.items()},
        "test_rows": len(test),
        "metric": metric,
    }
    if champion is None:
        registry.promote(client, name, challenger, "first model: no champion to beat")
        return dg.AssetCheckResult(
            passed=True,
            description=f"v{challenger} is the first champion",
            metadata={**metadata, "promoted": True},
        )
    refusal = _incomparable(tags, client.get_model_version(name, champion).tags, window)
    if refusal:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"v{champion} stays champion: {refusal}",
            metadata={**metadata, "champion_version": champion, "promoted": False},
        )
    champion_metrics = evaluate(registry.load_model(name, champion), test)
    metadata.update(
        {"champion_version": champion, **{f"champion_{k}": v for k, v in champion_metrics.items()}}
    )
    better = challenger_metrics[metric] > champion_metrics[metric]
    if better:
        registry.promote(
            client,
            name,
            challenger,
            f"{metric} {challenger_metrics[metric]:.4f} > {champion_metrics[metric]:.4f} of v{champion}",
        )
    return dg.AssetCheckResult(
        passed=better,
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"v{challenger} promoted over v{champion}" if better else f"v{champion} stays champion")
        + f": {metric} {challenger_metrics[metric]:.4f} vs {champion_metrics[metric]:.4f}",
        metadata={**metadata, "promoted": better},
    )
