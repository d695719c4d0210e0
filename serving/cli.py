"""`python -m serving run | config`: Ray Serve with the deployed model versions, here or on a Ray cluster."""

from __future__ import annotations

import json
import logging
import signal
import threading
from types import FrameType
from typing import Annotated

import ray
import typer

from modeling.registry import ModelRegistry, recorded_deployment
from serving.deploy import ServeApi, serve_config, start_local
from settings import Settings, SettingsError, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
logger = logging.getLogger(__name__)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.callback()
def main() -> None:
    """Serve fraud scores with Ray Serve."""


@app.command()
def config() -> None:
    """Print the profile's Serve config (JSON), as `run` and the `deployment` asset apply it."""
    settings = _settings()
    registry = ModelRegistry.from_settings(settings)
    registry.activate()
    typer.echo(
        json.dumps(
            serve_config(settings, recorded_deployment(registry.client(), registry.model_name)), indent=2
        )
    )


@app.command()
def run(
    num_cpus: Annotated[
        int | None, typer.Option(min=1, help="CPUs a local Ray may use; default: all.")
    ] = None,
) -> None:
    """Start Serve with the model versions the last deployment pinned, until Ctrl-C.

    The local and prod profiles start a Ray of their own on this machine; the
    cluster profile deploys to the Ray cluster at FRAUDPIPE_RAY_ADDRESS, which
    keeps serving after this command returns. A later promotion reaches
    serving through the `deployment` asset, never through this process.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()
    registry = ModelRegistry.from_settings(settings)
    registry.activate()
    deployment = recorded_deployment(registry.client(), registry.model_name)
    if deployment is None:
        typer.secho(
            "no model deployed yet: replicas answer 503 until the `deployment` asset runs "
            "(make demo, or the training job in make dev)",
            fg=typer.colors.YELLOW,
        )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    local = settings.profile != "cluster"
    if local:
        start_local(settings, num_cpus)
    api = ServeApi(settings)
    try:
        api.deploy(serve_config(settings, deployment))
        versions = f"champion v{deployment.champion}" if deployment else "no model"
        typer.echo(f"serving {versions} on {settings.serving.url}/v1/score (OpenAPI at /docs)")
        if local:
            typer.echo("Ctrl-C stops")
            stop.wait()
    finally:
        api.close()
        if local:
            # Not serve.shutdown(): it drains for up to 30 s. The local Ray is ours and goes with us.
            ray.shutdown()


if __name__ == "__main__":
    app()
