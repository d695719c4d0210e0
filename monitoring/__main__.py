"""`python -m monitoring export`: the monitoring assets' results on a Prometheus /metrics endpoint."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from settings import load_settings_or_exit

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def main() -> None:
    """Monitoring processes (`export`); a group, so typer keeps the command's name."""


@app.command()
def export(
    metrics_path: Annotated[
        Path | None,
        typer.Option(
            help="The monitoring assets' table; default <lake>/monitoring_metrics.parquet (may be missing)."
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port of /metrics; default FRAUDPIPE_MONITORING__EXPORTER_PORT."),
    ] = None,
    host: Annotated[
        str,
        typer.Option(help="Interface to bind; loopback unless a Prometheus on another machine scrapes it."),
    ] = "127.0.0.1",
) -> None:
    """Serve the latest day of every monitoring metric as gauges until SIGTERM or Ctrl-C."""
    settings = load_settings_or_exit()
    # Here, not at the top: `--help` and a bad setting need neither pandas nor Prometheus.
    from prometheus_client import CollectorRegistry, start_http_server

    from monitoring.exporter import MonitoringCollector

    metrics_path = metrics_path or settings.lake_root / "monitoring_metrics.parquet"
    port = settings.monitoring.exporter_port if port is None else port
    registry = CollectorRegistry()
    registry.register(MonitoringCollector(metrics_path))
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server, thread = start_http_server(port, addr=host, registry=registry)
    typer.echo(f"monitoring metrics on http://{host}:{server.server_port}/metrics from {metrics_path}")
    stop.wait()
    server.shutdown()
    thread.join()


if __name__ == "__main__":
    app()
