"""Command line entry points: `python -m orchestration demo | rollback | prod-init`."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import typer
from dagster._core.errors import DagsterHomeNotSetError

from modeling import registry
from orchestration.live_loop import Happening, Scorer, champion_version
from orchestration.postgres import ensure_database
from orchestration.profiles import ProfileName, active_profile, build_resources, prod_database_urls
from orchestration.resources import MonitoringResource
from orchestration.scenario import ScenarioPlan, initial_model_config, live, prepare_history
from serving.clients import HttpScorer, InProcessScorer
from serving.config import ServingConfig
from serving.deploy import AliasWatcher, load_config, start_local
from serving.model import ModelStore
from simulator import SimulatorConfig, simulate

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

LIVE_START_DAY = 70
"""Days of history before the live replay: feature warm-up, then the first champion's window."""
LIVE_DAYS = 26
ONSET_DAY = LIVE_START_DAY + 3
DEMO_DATASET = SimulatorConfig(
    n_customers=1000,
    n_terminals=2000,
    n_days=LIVE_START_DAY + LIVE_DAYS,
    n_compromised_terminals_per_day=1,
    n_compromised_customers_per_day=1,
    drift="card_testing",
    drift_start_day=ONSET_DAY,
)
"""A fifth of the handbook's population; card testing (scenario a) begins on the 4th live day."""


def _echo_step(message: str, started: float) -> None:
    typer.secho(f"[{time.monotonic() - started:6.1f}s] {message}", fg=typer.colors.CYAN)


def _timeline_printer(started: float) -> Callable[[Happening], None]:
    colors = {"drift": typer.colors.YELLOW, "trigger": typer.colors.MAGENTA, "swap": typer.colors.GREEN}

    def echo(h: Happening) -> None:
        numbers = ", ".join(f"{k} {v:.3f}" for k, v in h.numbers.items())
        suffix = f" ({numbers})" if numbers else ""
        typer.secho(
            f"[{time.monotonic() - started:6.1f}s] {h.day} {h.what:<8} {h.detail}{suffix}",
            fg=colors.get(h.what),
        )

    return echo


@contextmanager
def _ray_serve(profile: ProfileName, models: ModelStore, started: float) -> Iterator[HttpScorer]:
    """Ray Serve on this machine following the registry, as `make serve` runs it."""
    import ray

    serve_config = load_config(profile)
    _echo_step("starting Ray Serve on http://127.0.0.1:8000 (about a minute)", started)
    start_local(serve_config)
    stop = threading.Event()
    watcher = AliasWatcher(serve_config, models.alias)
    watcher.sync()

    def follow() -> None:
        while not stop.wait(1.0):
            watcher.sync()

    thread = threading.Thread(target=follow, name="alias-watcher", daemon=True)
    thread.start()
    scorer = HttpScorer("http://127.0.0.1:8000")
    try:
        yield scorer
    finally:
        stop.set()
        scorer.close()
        ray.shutdown()


@app.command()
def demo(
    live_days: int = typer.Option(LIVE_DAYS, min=1, max=LIVE_DAYS, help="Live days to replay."),
    in_process: bool = typer.Option(
        False, help="Score in this process instead of through Ray Serve (no Ray start-up)."
    ),
) -> None:
    """The whole loop on a demo dataset: history, features, training, registry, serving, live traffic
    through the bus, a card-testing attack, drift detected, retraining, gate, swap, recovery."""
    started = time.monotonic()
    profile = active_profile()
    resources = build_resources(profile)
    data_dir = Path(resources["lake"].root).parent
    try:
        instance = dg.DagsterInstance.get()
    except DagsterHomeNotSetError as err:
        typer.secho(
            "DAGSTER_HOME is not set: run `make demo`, or point it at a folder", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(2) from err
    _echo_step(f"resetting {data_dir} and the Dagster instance: the demo starts from nothing", started)
    for part in ("source", "lake", "stream", "online", "mlflow", "feast"):
        shutil.rmtree(data_dir / part, ignore_errors=True)
    instance.wipe()
    _echo_step(f"simulating {DEMO_DATASET.n_customers} cards over {DEMO_DATASET.n_days} days", started)
    data = simulate(DEMO_DATASET, progress=True)
    live_start, onset = (
        (pd.Timestamp(DEMO_DATASET.start_date) + pd.Timedelta(days=d)).strftime("%Y-%m-%d")
        for d in (LIVE_START_DAY, ONSET_DAY)
    )
    plan = ScenarioPlan(data, live_start, live_days, initial_model_config(live_start))
    _echo_step(f"history before {live_start}: ingestion, features, training, registry ({profile})", started)
    echo = _timeline_printer(started)

    def scorer(resources: dict[str, Any]) -> Scorer:
        if in_process:
            return InProcessScorer(resources["stream"], resources["mlflow"], ServingConfig())
        return stack.enter_context(_ray_serve(profile, ModelStore(resources["mlflow"]), started))

    prepare_history(plan, profile, data_dir, instance)
    with (
        ExitStack() as stack,
        live(plan, profile, data_dir, instance, scorer, MonitoringResource(), echo) as (loop, days),
    ):
        _echo_step(
            f"champion v{champion_version(loop.resources)} serving; replaying {live_days} live days "
            f"from {live_start}; card testing begins {onset}",
            started,
        )
        for report in days:
            drift = report.drift
            typer.echo(
                f"[{time.monotonic() - started:6.1f}s] {report.day} scored {report.scored:>5}  "
                f"max PSI {float(drift.get('max_psi', float('nan'))):.3f}  "
                f"drifted {len(drift.get('drifted_features') or [])}  "
                f"({', '.join(f'{k} {v:.1f}s' for k, v in report.seconds.items())})"
            )
    _summary(loop.timeline, onset)
    typer.echo(
        "\nWhere to look:\n"
        "  make dev     Dagster UI on http://127.0.0.1:3000: runs (why each retraining fired: its tags),\n"
        "               lineage, and the monitoring assets' plots over partitions\n"
        "  make mlflow  MLflow UI on http://127.0.0.1:5000 (versions, aliases, promotion reasons)\n"
        f"  Evidently    {data_dir / 'lake' / 'artifacts' / 'evidently'}/<day>/feature_drift.html"
    )


def _summary(timeline: list[Happening], onset: str) -> None:
    """What happened, from the timeline: detection delay, retrainings, swaps, outcomes before and after."""
    typer.echo("\nTimeline summary")
    drift = [h for h in timeline if h.what == "drift"]
    if drift:
        delay = (pd.Timestamp(drift[0].day) - pd.Timestamp(onset)).days
        typer.echo(f"  drift first detected {drift[0].day}: {delay} day(s) after the onset {onset}")
    else:
        typer.echo("  no drift detected")
    for h in timeline:
        if h.what in ("trigger", "gate", "swap", "retrain-failed"):
            typer.echo(f"  {h.day} {h.what}: {h.detail}")
    typer.echo("  outcomes of the scores served, once each day's labels are complete:")
    for h in timeline:
        if h.what == "outcome" and "served_average_precision" in h.numbers:
            typer.echo(
                f"    {h.detail}: average precision {h.numbers['served_average_precision']:.3f}, "
                f"card precision@100 {h.numbers.get('served_card_precision_at_100', float('nan')):.2f}"
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
