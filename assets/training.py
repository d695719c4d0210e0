"""Training: the fraud model, its registration in MLflow, and the promotion gate."""

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pandas as pd
import xgboost as xgb

from assets.training_set import snapshot_id
from feature_repo.windows import FEATURE_SERVICE_NAME, MODEL_FEATURES
from modeling import registry
from modeling.registry import ModelRegistry
from modeling.split import SplitWindow, train_test_split
from modeling.train import evaluate, fit_decision_tree, score, select_params, train_and_evaluate
from monitoring.reference import REFERENCE_DIR, write_reference
from orchestration.resources import LakeResource
from orchestration.retraining import REASON_TAG
from settings import PromotionSettings, Settings

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


TRIGGERS = (
    ("sensor", "dagster/sensor_name"),
    ("schedule", "dagster/schedule_name"),
    ("backfill", "dagster/backfill"),
    ("automation", "dagster/from_automation_condition"),
    ("re-execution", "dagster/parent_run_id"),
)
"""What may have launched a run, by the Dagster tag that says so, in the order they are asked."""


def run_trigger(tags: Mapping[str, str]) -> str:
    """What launched a Dagster run, read from its tags: `sensor:<name>`, `schedule:<name>`,
    `backfill:<id>`, `automation` (a declarative automation condition), `re-execution:<parent run
    id>`, or `manual` (the UI's launchpad, the CLI, the headless runner, a test)."""
    for kind, tag in TRIGGERS:
        value = tags.get(tag)
        if value:
            return kind if value == "true" else f"{kind}:{value}"
    return "manual"


def lineage_tags(context: dg.AssetExecutionContext) -> dict[str, str]:
    """The MLflow run tags naming what made it: the Dagster run, asset, job and trigger (and the
    retraining sensors' reason, when a sensor gave one)."""
    tags = context.run.tags
    lineage = {
        "dagster.run_id": context.run_id,
        "dagster.asset": context.asset_key.to_user_string(),
        "dagster.job": context.job_name,
        "dagster.trigger": run_trigger(tags),
    }
    if tags.get(REASON_TAG):
        lineage["dagster.trigger_reason"] = tags[REASON_TAG]
    return lineage


def run_name(model_name: str, window: Mapping[str, Any], dagster_run_id: str) -> str:
    """`<model> <first>..<last training day> <run id[:8]>`: the MLflow run's name, for people."""
    split = split_window(dict(window))
    last = split.train_end - pd.Timedelta(days=1)
    return f"{model_name} {split.train_start:%Y-%m-%d}..{last:%Y-%m-%d} {dagster_run_id[:8]}"


@dg.asset(group_name="training", deps=[fraud_model], kinds={"mlflow"})
def registered_model(
    context: dg.AssetExecutionContext, lake: LakeResource, mlflow: dg.ResourceParam[ModelRegistry]
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
        run_name=run_name(mlflow.model_name, summary["window"], context.run_id),
        run_tags=lineage_tags(context),
    )
    mlflow_run_id = mlflow.client().get_model_version(mlflow.model_name, version).run_id or ""
    context.log.info(
        f"registered {mlflow.model_name} v{version} as {registry.CHALLENGER} (MLflow run {mlflow_run_id})"
    )
    return dg.MaterializeResult(
        metadata={"model_name": mlflow.model_name, "version": version, "mlflow_run_id": mlflow_run_id, **tags}
    )


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


MARGINS = {
    "roc_auc": "max_roc_auc_drop",
    "average_precision": "max_average_precision_drop",
    "card_precision_at_100": "max_card_precision_drop",
}
"""Each metric's allowed drop, by the name of its field in `settings.PromotionSettings`."""


def judge(
    challenger: dict[str, float], reference: dict[str, float], metric: str, promotion: PromotionSettings
) -> list[str]:
    """Why the challenger does not beat the reference (empty if it does).

    It must be better on the selection metric and lose no more than its margin on any other.
    """
    reasons = []
    if challenger[metric] <= reference[metric]:
        reasons.append(f"{metric} {challenger[metric]:.4f} does not beat {reference[metric]:.4f}")
    for name, field in MARGINS.items():
        margin = getattr(promotion, field)
        if name != metric and challenger[name] < reference[name] - margin:
            reasons.append(f"{name} {challenger[name]:.4f} is more than {margin} below {reference[name]:.4f}")
    return reasons


GATE = "check_promotion_gate"


@dg.asset_check(asset=registered_model, blocking=True, name=GATE)
def check_promotion_gate(
    lake: LakeResource, mlflow: dg.ResourceParam[ModelRegistry], settings: dg.ResourceParam[Settings]
) -> dg.AssetCheckResult:
    """Judge the challenger against the champion on the challenger's test days, without changing anything.

    A challenger that does not beat the champion (or, for the first model, the handbook's depth-2
    decision tree trained on the same split) fails with ERROR: `champion` and `deployment` do not run.
    """
    mlflow.activate()
    client = mlflow.client()
    name = mlflow.model_name
    challenger = registry.alias_version(client, name, registry.CHALLENGER)
    if challenger is None:
        return dg.AssetCheckResult(passed=False, description="no challenger is registered")
    tags = client.get_model_version(name, challenger).tags
    metric = tags["selection_metric"]
    window = split_window(json.loads(tags["window"]))
    train, test = train_test_split(lake.read_table("training_set"), window)
    challenger_metrics = evaluate(registry.load_model(name, challenger), test)
    metadata: dict[str, dg.RawMetadataValue] = {
        "challenger_version": challenger,
        **{f"challenger_{k}": v for k, v in challenger_metrics.items()},
        "test_rows": len(test),
        "metric": metric,
    }
    promotion = settings.promotion
    champion = registry.alias_version(client, name, registry.CHAMPION)
    if champion is None:
        baseline = evaluate(fit_decision_tree(train), test)
        metadata.update({f"baseline_{k}": v for k, v in baseline.items()})
        passed = challenger_metrics[metric] > baseline[metric]
        return dg.AssetCheckResult(
            passed=passed,
            description=(
                f"v{challenger} {'clears' if passed else 'misses'} the first model's floor: {metric} "
                f"{challenger_metrics[metric]:.4f} vs the depth-2 decision tree's {baseline[metric]:.4f}"
            ),
            metadata=metadata,
        )
    metadata["champion_version"] = champion
    refusal = _incomparable(tags, client.get_model_version(name, champion).tags, window)
    if refusal:
        return dg.AssetCheckResult(
            passed=False, description=f"v{champion} stays champion: {refusal}", metadata=metadata
        )
    champion_metrics = evaluate(registry.load_model(name, champion), test)
    metadata.update({f"champion_{k}": v for k, v in champion_metrics.items()})
    reasons = judge(challenger_metrics, champion_metrics, metric, promotion)
    description = (
        f"v{challenger} beats v{champion}: {metric} {challenger_metrics[metric]:.4f} vs "
        f"{champion_metrics[metric]:.4f}"
        if not reasons
        else f"v{champion} stays champion: v{challenger} " + "; ".join(reasons)
    )
    return dg.AssetCheckResult(passed=not reasons, description=description, metadata=metadata)


@dg.asset(group_name="training", deps=[registered_model], kinds={"mlflow"})
def champion(
    context: dg.AssetExecutionContext, mlflow: dg.ResourceParam[ModelRegistry]
) -> dg.MaterializeResult:
    """The model version serving should answer with: the `champion` alias, moved to the
    challenger once the promotion gate passed for it."""
    record = context.instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(registered_model.key, GATE)
    )
    evaluation = record.event.asset_check_evaluation if record and record.event else None
    mlflow.activate()
    client = mlflow.client()
    challenger = registry.alias_version(client, mlflow.model_name, registry.CHALLENGER)
    judged = evaluation.metadata.get("challenger_version") if evaluation else None
    if evaluation is None or not evaluation.passed or judged is None or judged.value != challenger:
        raise dg.Failure(
            f"the promotion gate has not passed for the challenger v{challenger}: run {GATE} first",
            metadata={"challenger_version": str(challenger)},
        )
    assert challenger is not None  # the gate judged it
    previous = registry.alias_version(client, mlflow.model_name, registry.CHAMPION)
    registry.promote(client, mlflow.model_name, challenger, evaluation.description or GATE)
    context.log.info(f"{mlflow.model_name}: champion v{previous} -> v{challenger}")
    return dg.MaterializeResult(
        metadata={"version": challenger, "previous": str(previous), "reason": evaluation.description or ""}
    )
