"""Command line entry points: `python -m orchestration demo | rollback | prod-init`."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import typer
from dagster._core.errors import DagsterHomeNotSetError

from modeling import registry
from orchestration.postgres import ensure_database
from orchestration.profiles import active_profile, build_resources, prod_database_urls
from orchestration.runner import run_pipeline
from simulator import SimulatorConfig, simulate, write_dataset

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

DEMO_DATASET = SimulatorConfig(
    n_customers=1000,
    n_terminals=2000,
    n_days=150,
    n_compromised_terminals_per_day=1,
    n_compromised_customers_per_day=1,
)
"""A fifth of the handbook's population over 150 days: the handbook's split
(train from 2018-07-25, test to 2018-08-14) fits, with settled labels."""


def _echo_step(message: str, started: float) -> None:
    typer.secho(f"[{time.monotonic() - started:6.1f}s] {message}", fg=typer.colors.CYAN)


@app.command()
def demo(
    regenerate: bool = typer.Option(False, help="Simulate the source data again even if present."),
) -> None:
    """Simulate a demo dataset, run ingestion and training headless, print the model beside the champion."""
    started = time.monotonic()
    profile = active_profile()
    resources = build_resources(profile)
    source = Path(resources["source"].path)
    if regenerate or not (source / "transactions.parquet").exists():
        _echo_step(f"simulating {DEMO_DATASET.n_customers} cards over {DEMO_DATASET.n_days} days", started)
        data = simulate(DEMO_DATASET, progress=True)
        write_dataset(data, source)
        _echo_step(f"{len(data.transactions):,} transactions written to {source}", started)
    else:
        _echo_step(f"reusing the source data in {source} (--regenerate to simulate again)", started)
    _echo_step(f"running ingestion_job and training_job (profile {profile})", started)
    try:
        instance = dg.DagsterInstance.get()
    except DagsterHomeNotSetError as err:
        typer.secho(
            "DAGSTER_HOME is not set: run `make demo`, or point it at a folder", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(2) from err
    results = run_pipeline(resources, instance, log_level="INFO")
    training = results["training_job"]
    _echo_step("pipeline finished", started)

    gate = next(e for e in training.get_asset_check_evaluations() if e.check_name == "check_promotion_gate")
    meta = {k: v.value for k, v in gate.metadata.items()}
    rows = ["roc_auc", "average_precision", "card_precision_at_100"]
    typer.echo("")
    typer.echo(
        f"{'metric (same test week)':<28}{'challenger v' + str(meta['challenger_version']):>18}"
        f"{'champion v' + str(meta.get('champion_version', '-')):>18}"
    )
    for name in rows:
        champion = meta.get(f"champion_{name}")
        typer.echo(
            f"{name:<28}{meta[f'challenger_{name}']:>18.4f}"
            f"{(f'{champion:.4f}' if champion is not None else 'none yet'):>18}"
        )
    typer.echo(f"\ngate: {gate.description}")
    typer.echo(
        "\nWhere to look:\n"
        "  make dev     Dagster UI on http://127.0.0.1:3000 (runs, lineage, checks)\n"
        "  make mlflow  MLflow UI on http://127.0.0.1:5000 (runs, registered model, aliases)\n"
        "  make rollback  move the champion alias back to the previous champion"
    )


@app.command()
def rollback() -> None:
    """Move the `champion` alias back to the previous champion."""
    resources = build_resources(active_profile())
    mlflow = resources["mlflow"].process_config_and_initialize()  # resolves dg.EnvVar fields (prod)
    mlflow.activate()
    try:
        demoted, restored = registry.rollback(mlflow.client(), mlflow.model_name)
    except ValueError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from err
    typer.echo(f"{mlflow.model_name}: champion v{demoted} -> v{restored}")


@app.command("prod-init")
def prod_init() -> None:
    """Create the prod profile's PostgreSQL databases (Dagster, MLflow, Feast) if missing."""
    try:
        urls = prod_database_urls()
    except ValueError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from err
    for var, url in urls.items():
        created = ensure_database(url)
        typer.echo(f"{var}: {'created' if created else 'exists'}")


if __name__ == "__main__":
    app()
