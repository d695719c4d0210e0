"""Command line: generate a dataset, or summarise an existing one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simulator.config import Drift, SimulatorConfig
from simulator.generate import simulate
from simulator.storage import read_dataset, write_dataset
from simulator.summary import format_summary, summarize

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)

_DEFAULTS = SimulatorConfig()


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Directory to write the dataset into.")] = Path("data/source"),
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = (_DEFAULTS.n_customers),
    terminals: Annotated[int, typer.Option(min=1, help="Number of terminals.")] = (_DEFAULTS.n_terminals),
    days: Annotated[int, typer.Option(min=1, help="Number of days.")] = _DEFAULTS.n_days,
    start_date: Annotated[str, typer.Option(help="First day, YYYY-MM-DD (UTC).")] = (_DEFAULTS.start_date),
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = _DEFAULTS.seed,
    report_delay_min: Annotated[
        float, typer.Option(help="Shortest delay of a fraud report, in days.")
    ] = _DEFAULTS.report_delay_min_days,
    report_delay_max: Annotated[
        float,
        typer.Option(help="Longest delay of a fraud report, in days (at most 7)."),
    ] = _DEFAULTS.report_delay_max_days,
    drift: Annotated[
        Drift, typer.Option(help="Drift scenario from --drift-start-day on (see simulator.drift).")
    ] = _DEFAULTS.drift,
    drift_start_day: Annotated[
        int, typer.Option(help="Day index (0 = start date) the drift starts, in [1, days - 1].")
    ] = _DEFAULTS.drift_start_day,
) -> None:
    """Simulate transactions, frauds and fraud reports, and write them as Parquet."""
    try:
        config = SimulatorConfig(
            n_customers=customers,
            n_terminals=terminals,
            n_days=days,
            start_date=start_date,
            seed=seed,
            report_delay_min_days=report_delay_min,
            report_delay_max_days=report_delay_max,
            drift=drift,
            drift_start_day=drift_start_day,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    data = simulate(config, progress=True)
    paths = write_dataset(data, out)
    typer.echo(format_summary(summarize(data)))
    for name, path in paths.items():
        typer.echo(f"wrote {name}: {path}")


@app.command()
def stats(
    data: Annotated[Path, typer.Option(help="Directory of an existing dataset.")] = Path("data/source"),
) -> None:
    """Print the headline statistics of an existing dataset."""
    try:
        dataset = read_dataset(data)
    except FileNotFoundError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(format_summary(summarize(dataset)))
