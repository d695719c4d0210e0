"""Command line entry points of the code location.

`python -m orchestration rollback | prod-init | mlflow | pipeline`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from settings import load_settings_or_exit

# Dagster, MLflow and the pipeline are imported inside the commands: `--help` answers at once.

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def rollback() -> None:
    """Move `champion` back to the previous champion, then re-pin serving through the `deployment` asset."""
    import dagster as dg
    from dagster._core.errors import DagsterHomeNotSetError

    from modeling import registry
    from modeling.registry import ModelRegistry
    from orchestration.definitions import build_definitions
    from orchestration.profiles import build_resources

    settings = load_settings_or_exit()
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
    """Create the prod profile's PostgreSQL databases (Dagster, MLflow, Feast) if missing.

    With FRAUDPIPE_PG_ADMIN_URL, each service's role is made too, owning its database alone.
    """
    from orchestration.postgres import ensure_database

    settings = load_settings_or_exit()
    if settings.profile == "local":
        typer.secho(
            "prod-init creates the prod databases: set FRAUDPIPE_PROFILE=prod", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(2)
    admin = settings.pg_admin_url.get_secret_value() if settings.pg_admin_url else None
    for name in ("dagster_pg_url", "mlflow_pg_url", "feast_pg_url"):
        url = getattr(settings, name)
        assert url is not None  # the settings refuse the prod profile without them
        created = ensure_database(url.get_secret_value(), admin)
        owner = "; its role owns it alone" if admin else ""
        typer.echo(f"FRAUDPIPE_{name.upper()}: {'created' if created else 'exists'}{owner}")


@app.command()
def mlflow() -> None:
    """MLflow's UI on 127.0.0.1 over the profile's tracking store (the one the pipeline writes)."""
    settings = load_settings_or_exit()
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


@app.command()
def pipeline(
    source: Annotated[
        Path,
        typer.Option(
            "--source",
            exists=True,
            file_okay=False,
            help="directory of the customers, terminals, transactions and fraud_reports parquet files "
            "(docs/own_data.md)",
        ),
    ],
) -> None:
    """Land every day of a source directory, build the features, train, gate and register a model.

    The model trains on the last settled weeks of the data (`latest_window`);
    the runs go to the profile's Dagster instance, so `make dev` shows them.
    """
    import dagster as dg
    from dagster._core.errors import DagsterHomeNotSetError

    from orchestration.profiles import build_resources
    from orchestration.resources import EventSourceResource
    from orchestration.runner import latest_window, run_pipeline, source_days

    settings = load_settings_or_exit()
    resources = build_resources(settings)
    grace = settings.stream.complete_after_minutes
    resources["source"] = EventSourceResource(
        path=str(source.resolve()), stream_path="", stream_grace_minutes=grace
    )
    try:
        instance = dg.DagsterInstance.get()
    except DagsterHomeNotSetError:
        typer.secho("DAGSTER_HOME is not set: run `make pipeline SOURCE=...`", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    try:
        first, last = source_days(resources)
        window = latest_window(first, last)
    except (FileNotFoundError, ValueError) as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{source}: events from {first} to {last}; training from {window['train_start']}")
    run_config = {"ops": {"fraud_model": {"config": window}}}
    results = run_pipeline(resources, instance, run_config, log_level="INFO")
    for job, result in results.items():
        typer.echo(f"{job}: run {result.run_id} {'succeeded' if result.success else 'failed'}")


if __name__ == "__main__":
    app()
