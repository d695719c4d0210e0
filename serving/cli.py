"""`python -m serving run | config`: Ray Serve with the deployed model versions, here or on a Ray cluster.

Ray, MLflow and the model stack are imported by the commands that use them,
not by this module: `--help` and a bad setting answer in a second.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from types import FrameType
from typing import Annotated

import typer

from settings import load_settings_or_exit
from settings.logs import configure_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
logger = logging.getLogger(__name__)


@app.callback()
def main() -> None:
    """Serve fraud scores with Ray Serve."""


@app.command()
def config() -> None:
    """Print the profile's Serve config (JSON), as `run` and the `deployment` asset apply it."""
    settings = load_settings_or_exit()
    from modeling.registry import ModelRegistry, recorded_deployment
    from serving.deploy import serve_config

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
    settings = load_settings_or_exit()
    import ray

    from modeling.registry import ModelRegistry, recorded_deployment
    from serving.deploy import ServeApi, serve_config, start_local

    configure_logging()
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
