"""`python -m demo` (make demo): the whole loop on a demo dataset, through the production path.

History, features, training, registry and deployment; then Ray Serve, live
traffic through the bus, a card-testing attack, drift detected, retraining,
the promotion gate and a new deployment, day by day.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import typer

from settings import Settings, load_settings_or_exit

if TYPE_CHECKING:  # the command imports them: `--help` and a bad setting load no Dagster, Ray or pandas
    from demo.live_loop import Happening, Scorer
    from demo.scorers import HttpScorer
    from simulator import SimulatorConfig

app = typer.Typer(add_completion=False, help=__doc__)

LIVE_START_DAY = 70
"""Days of history before the live replay: feature warm-up, then the first champion's window."""
LIVE_DAYS = 26
ONSET_DAY = LIVE_START_DAY + 3


@functools.cache
def demo_dataset() -> SimulatorConfig:
    """A fifth of the handbook's population; card testing (scenario a) begins on the 4th live day."""
    from simulator import SimulatorConfig

    return SimulatorConfig(
        n_customers=1000,
        n_terminals=2000,
        n_days=LIVE_START_DAY + LIVE_DAYS,
        n_compromised_terminals_per_day=1,
        n_compromised_customers_per_day=1,
        drift="card_testing",
        drift_start_day=ONSET_DAY,
    )


def __getattr__(name: str) -> Any:
    """`DEMO_DATASET` (`demo_dataset()`), built on first use: the simulator loads pandas."""
    if name == "DEMO_DATASET":
        return demo_dataset()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
def _ray_serve(settings: Settings, started: float) -> Iterator[HttpScorer]:
    """Ray Serve on this machine with the deployed versions, as `make serve` runs it.

    Later promotions reach it the production way: the `deployment` asset of the
    retraining run applies the new pinned versions through Serve's REST API.
    """
    import ray

    from demo.scorers import HttpScorer
    from modeling.registry import ModelRegistry, recorded_deployment
    from serving.deploy import ServeApi, serve_config, start_local

    _echo_step(f"starting Ray Serve on {settings.serving.url} (about a minute)", started)
    start_local(settings)
    models = ModelRegistry.from_settings(settings)
    api = ServeApi(settings)
    scorer = HttpScorer(settings.serving.url)
    try:
        api.deploy(serve_config(settings, recorded_deployment(models.client(), models.model_name)))
        yield scorer
    finally:
        scorer.close()
        api.close()
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
    settings = load_settings_or_exit()
    import dagster as dg
    import pandas as pd
    from dagster._core.errors import DagsterHomeNotSetError

    from demo.live_loop import champion_version
    from demo.scenario import ScenarioPlan, initial_model_config, live, prepare_history
    from demo.scorers import InProcessScorer
    from simulator import simulate

    data_dir = settings.data
    dataset = demo_dataset()
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
    _echo_step(f"simulating {dataset.n_customers} cards over {dataset.n_days} days", started)
    data = simulate(dataset, progress=True)
    live_start, onset = (
        (pd.Timestamp(dataset.start_date) + pd.Timedelta(days=d)).strftime("%Y-%m-%d")
        for d in (LIVE_START_DAY, ONSET_DAY)
    )
    plan = ScenarioPlan(data, live_start, live_days, initial_model_config(live_start))
    _echo_step(
        f"history before {live_start}: ingestion, features, training, registry, deployment "
        f"({settings.profile})",
        started,
    )
    echo = _timeline_printer(started)

    def scorer(resources: dict[str, Any]) -> Scorer:
        if in_process:
            return InProcessScorer(resources["stream"], resources["mlflow"], settings.serving.runtime)
        return stack.enter_context(_ray_serve(settings, started))

    prepare_history(plan, settings, instance)
    with (
        ExitStack() as stack,
        live(plan, settings, instance, scorer, echo) as (loop, days),
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
        "               lineage, sensor ticks, the monitoring plots (docs/tour.md)\n"
        "  make mlflow  MLflow UI on http://127.0.0.1:5000 (versions, aliases, promotion reasons)\n"
        f"  Evidently    {data_dir / 'lake' / 'artifacts' / 'evidently'}/<day>/feature_drift.html"
    )


def _summary(timeline: list[Happening], onset: str) -> None:
    """What happened, from the timeline: detection delay, retrainings, swaps, outcomes before and after."""
    import pandas as pd

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


if __name__ == "__main__":
    app()
