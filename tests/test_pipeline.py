"""The code location loads, and the whole graph materialises on a small dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from typer.testing import CliRunner

from bench.ports import free_port
from feature_repo.windows import MODEL_FEATURES
from modeling import registry
from orchestration.cli import app
from orchestration.definitions import build_definitions
from orchestration.jobs import RANGE_END, RANGE_START
from orchestration.profiles import build_resources
from orchestration.runner import source_days
from settings import ServingSettings
from simulator import SimulatedData, write_dataset
from tests.conftest import FAST_MODEL, PipelineRun, local_settings

ROOT = Path(__file__).resolve().parent.parent


def no_serve() -> ServingSettings:
    """Serving settings whose Ray dashboard port nothing listens on: no Serve runs for `deployment`
    to reconfigure (not even another test's), so it only records the versions."""
    return ServingSettings(ray_dashboard_port=free_port())


def test_definitions_validate(tmp_path: Path) -> None:
    """What `dagster dev` loads: `dagster definitions validate` on workspace.yaml."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "FRAUDPIPE_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful" in out.stdout + out.stderr


def test_graph_groups_and_blocking_checks(tmp_path: Path) -> None:
    defs = build_definitions(build_resources(local_settings(tmp_path)))
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups["raw_transactions"] == groups["fraud_reports"] == "ingestion"
    assert groups["customer_spending"] == groups["terminal_risk"] == "features"
    assert groups["training_set"] == groups["fraud_model"] == groups["registered_model"] == "training"
    assert groups["champion"] == "training" and groups["deployment"] == "serving"
    assert "online_features" not in groups
    specs = {
        spec.name: spec.blocking
        for definition in [*(defs.assets or []), *(defs.asset_checks or [])]
        for spec in definition.check_specs  # type: ignore[union-attr]
    }
    assert specs == {
        "check_raw_transactions": True,
        "check_fraud_reports": True,
        "check_training_set": True,
        "check_promotion_gate": True,
    }


def test_materialize_whole_graph(small_data: SimulatedData, tmp_path: Path) -> None:
    """`materialize()` of every asset at once, partitioned ingestion and all, on fresh storage.

    Monitoring is left out: its assets are one run per day of served traffic (a range run is
    what the ingestion and training assets take), and they are tested day by day in
    `test_monitoring_scenarios.py`."""
    write_dataset(small_data, tmp_path / "source")
    resources = build_resources(local_settings(tmp_path, serving=no_serve()))
    defs = build_definitions(resources)
    first, last = source_days(resources)
    assets = [
        a
        for a in defs.assets or []
        if not isinstance(a, dg.AssetsDefinition) or "monitoring" not in a.group_names_by_key.values()
    ]
    checks = list(defs.asset_checks or [])
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*assets, *checks],
            resources=resources,
            instance=instance,
            tags={RANGE_START: first, RANGE_END: last},
            run_config=FAST_MODEL,
        )
        assert result.success
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert {
            "raw_transactions",
            "fraud_reports",
            "customer_spending",
            "terminal_risk",
            "feature_registry",
            "training_set",
            "fraud_model",
            "registered_model",
            "champion",
            "deployment",
        } <= materialized
        assert "online_features" not in materialized
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {
            "check_raw_transactions": True,
            "check_fraud_reports": True,
            "check_training_set": True,
            "check_promotion_gate": True,
        }
        (deployed,) = result.asset_materializations_for_node("deployment")
        assert deployed.metadata["champion_version"].value == "1"
        assert str(deployed.metadata["applied"].value).startswith("recorded")
    models = resources["mlflow"]
    models.activate()
    client = models.client()
    assert registry.alias_version(client, models.model_name, registry.CHAMPION) == "1"
    assert registry.recorded_deployment(client, models.model_name) == registry.Deployment("1", "1")


def test_pipeline_outputs(pipeline_run: PipelineRun) -> None:
    training = pipeline_run.resources["lake"].read_table("training_set")
    assert list(training.columns[4:-1]) == list(MODEL_FEATURES)
    assert training["TX_FRAUD"].isin([0, 1]).all()
    meta = {
        e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in pipeline_run.results["training_job"].get_asset_materialization_events()
    }
    model = meta["fraud_model"]
    for metric in ("roc_auc", "average_precision", "card_precision_at_100"):
        assert 0 <= model[metric] <= 1
    assert model["roc_auc"] > 0.7, "the model should beat chance clearly even on the small dataset"
    registered = meta["registered_model"]
    assert registered["feature_service"] == "fraud_model_v1"
    assert len(registered["data_snapshot_id"]) == 16
    assert meta["champion"]["version"] == registered["version"] == "1"
    assert meta["deployment"]["champion_version"] == "1"


def test_registered_model_is_ubj_with_signature(pipeline_run: PipelineRun) -> None:
    store = pipeline_run.resources["mlflow"]
    store.activate()
    client = store.client()
    champion = registry.alias_version(client, store.model_name, registry.CHAMPION)
    assert champion == registry.alias_version(client, store.model_name, registry.CHALLENGER) == "1"
    version = client.get_model_version(store.model_name, champion)
    for tag in ("feature_service", "data_snapshot_id", "git_sha", "run_id"):
        assert version.tags.get(tag), tag
    run = client.get_run(version.run_id)
    assert {"roc_auc", "average_precision", "card_precision_at_100"} <= set(run.data.metrics)
    files = {a.path for a in mlflow.artifacts.list_artifacts(f"models:/{store.model_name}/{champion}")}
    assert "model.ubj" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)
    info = mlflow.models.get_model_info(f"models:/{store.model_name}/{champion}")
    assert info.signature is not None
    assert [c.name for c in info.signature.inputs.inputs] == list(MODEL_FEATURES)


def test_promotion_gate_and_rollback(
    pipeline_run: PipelineRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only a challenger that beats the champion on the same week is promoted; rollback undoes one
    and re-pins serving to the restored champion."""
    serving = no_serve()
    monkeypatch.setenv("FRAUDPIPE_DATA_DIR", str(pipeline_run.data_dir))
    monkeypatch.setenv("FRAUDPIPE_SERVING__RAY_DASHBOARD_PORT", str(serving.ray_dashboard_port))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # where `rollback` runs deployment_job
    resources = build_resources(local_settings(pipeline_run.data_dir, serving=serving))
    store = resources["mlflow"]
    store.activate()
    client = store.client()
    name = store.model_name
    job = build_definitions(resources).resolve_implicit_global_asset_job_def()
    retraining = [dg.AssetKey(key) for key in ("fraud_model", "registered_model", "champion", "deployment")]

    def retrain(config: dict) -> tuple[dg.ExecuteInProcessResult, dg.AssetCheckEvaluation]:
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(
                instance=instance,
                asset_selection=retraining,
                run_config={"ops": {"fraud_model": {"config": config}}},
                raise_on_error=False,
            )
        (gate,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "check_promotion_gate"]
        return result, gate

    def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
        return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}

    def champion() -> str | None:
        return registry.alias_version(client, name, registry.CHAMPION)

    def deployed() -> registry.Deployment | None:
        return registry.recorded_deployment(client, name)

    def rollback() -> CliRunner:
        return CliRunner().invoke(app, ["rollback"])

    stump = {"n_folds": 2, "n_estimators": [1], "max_depth": [1], "learning_rate": [0.01]}
    failed, weak = retrain(stump)
    assert not failed.success, "a failed blocking gate fails the run"
    assert not weak.passed and weak.severity == dg.AssetCheckSeverity.ERROR
    assert (
        weak.metadata["challenger_average_precision"].value
        < weak.metadata["champion_average_precision"].value
    )
    assert {"fraud_model", "registered_model"} <= materialized(failed)
    assert not {"champion", "deployment"} & materialized(failed)
    assert (champion(), registry.alias_version(client, name, registry.CHALLENGER)) == ("1", "2")
    assert deployed() == registry.Deployment("1", "1"), "the pipeline's deployment, untouched"

    registry.promote(client, name, "2", "a bad promotion by hand")
    result = rollback()
    assert result.exit_code == 0, result.output
    assert "v2 -> v1" in result.output and champion() == "1"
    assert client.get_model_version(name, "2").tags["rolled_back"] == "true"
    assert "deployment: champion v1, recorded" in result.output
    assert deployed() == registry.Deployment("1", "2"), "deployment_job re-pins the restored champion"
    refused = rollback()
    assert refused.exit_code == 1 and "no earlier champion" in refused.output

    registry.promote(client, name, "2", "the stump again, to be beaten")
    succeeded, real = retrain(FAST_MODEL["ops"]["fraud_model"]["config"])
    assert succeeded.success and real.passed
    assert {"champion", "deployment"} <= materialized(succeeded)
    (moved,) = succeeded.asset_materializations_for_node("champion")
    assert (moved.metadata["version"].value, moved.metadata["previous"].value) == ("3", "2")
    assert champion() == "3"
    assert deployed() == registry.Deployment("3", "3")
    again = rollback()
    assert again.exit_code == 0, again.output
    assert champion() == "2" and deployed() == registry.Deployment("2", "3")


def test_every_launcher_names_the_code_location_alike() -> None:
    """The demo files its sensor ticks under CODE_LOCATION: `dagster dev` and `dg dev` must load it so."""
    import tomllib

    import yaml

    from orchestration import CODE_LOCATION

    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    assert entry["python_module"]["location_name"] == CODE_LOCATION
    dg_project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dg"]["project"]
    assert dg_project["code_location_name"] == CODE_LOCATION


def test_pipeline_command_runs_the_batch_pipeline_on_a_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make pipeline SOURCE=dir` on data that is not the demo's: other dates, another seed."""
    from simulator import SimulatorConfig, simulate

    source = tmp_path / "mine"
    config = SimulatorConfig(n_customers=300, n_terminals=600, n_days=60, start_date="2021-03-01", seed=7)
    write_dataset(simulate(config), source)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "orchestration/instance/local/dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("FRAUDPIPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FRAUDPIPE_SERVING__RAY_DASHBOARD_PORT", str(free_port()))
    result = CliRunner().invoke(app, ["pipeline", "--source", str(source)])
    assert result.exit_code == 0, result.output
    assert "from 2021-03-01 to 2021-05-06; training from 2021-04-09" in result.output
    assert "training_job: run" in result.output and "succeeded" in result.output
    models = registry.ModelRegistry.from_settings(local_settings(tmp_path / "data"))
    models.activate()
    assert registry.alias_version(models.client(), models.model_name, registry.CHAMPION) == "1"
