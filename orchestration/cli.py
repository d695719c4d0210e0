"""Command line entry points of the code location: `python -m orchestration rollback | prod-init | mlflow`."""

from __future__ import annotations

import os
import shutil

import dagster as dg
import typer
from dagster._core.errors import DagsterHomeNotSetError

from modeling import registry
from modeling.registry import ModelRegistry
from orchestration.definitions import build_definitions
from orchestration.postgres import ensure_database
from orchestration.profiles import build_resources
from settings import Settings, SettingsError, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command()
def rollback() -> None:
    """Move `champion` back to the previous champion, then re-pin serving through the `deployment` asset."""
    settings = _settings()
    models = ModelRegistry.from_settings(settings)
    models.activate()
    try:
        demoted, restored = registry.rollback(models.client(), models.model_name)
    except ValueError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from err
    typer.echo(f"{models.model_name}: champion v{demoted} -> v{restored}")
    try:
        instance = dg.DagsterInstance.get()
    except DagsterHomeNotSetError:
        typer.secho("DAGSTER_HOME is not set: run `make rollback`", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    job = build_definitions(build_resources(settings)).resolve_job_def("deployment_job")
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    if not result.success:
        typer.secho(
            f"deployment_job failed (run {result.run_id}): see `make dev`", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(1)
    applied = result.asset_materializations_for_node("deployment")[0].metadata["applied"].value
    typer.echo(f"deployment: champion v{restored}, {applied}")


@app.command("prod-init")
def prod_init() -> None:
    """Create the prod profile's PostgreSQL databases (Dagster, MLflow, Feast) if missing."""
    settings = _settings()
    if settings.profile == "local":
        typer.secho(
            "prod-init creates the prod databases: set FRAUDPIPE_PROFILE=prod", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(2)
    for name in ("dagster_pg_url", "mlflow_pg_url", "feast_pg_url"):
        url = getattr(settings, name)
        assert url is not None  # the settings refuse the prod profile without them
        created = ensure_database(url.get_secret_value())
        typer.echo(f"FRAUDPIPE_{name.upper()}: {'created' if created else 'exists'}")


@app.command()
def mlflow() -> None:
    """MLflow's UI on 127.0.0.1 over the profile's tracking store (the one the pipeline writes)."""
    settings = _settings()
    executable = shutil.which("mlflow")
    if executable is None:
        typer.secho(
            "mlflow is not installed in this environment: run `make install`", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(2)
    # The store's URL goes by environment, never argv: it may carry a password (`ps` shows argv).
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": settings.mlflow_tracking_uri()}
    env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = settings.mlflow_artifact_root.as_uri()
    os.execve(executable, ["mlflow", "ui", "--host", "127.0.0.1", "--port", str(settings.mlflow_port)], env)


if __name__ == "__main__":
    app()
