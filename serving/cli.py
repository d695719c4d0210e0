"""`python -m serving run`: Ray Serve following the registry's champion, on this machine or a Ray cluster."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import ray
import typer

from orchestration.profiles import active_profile, build_resources
from serving.deploy import AliasWatcher, load_config, start_local, start_on_cluster
from serving.model import ModelStore

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
logger = logging.getLogger(__name__)


@app.callback()
def main() -> None:
    """Serve fraud scores with Ray Serve (`run`); more commands may join it, hence a group."""


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option(help="A Serve config YAML; default: serving/config/<profile>.yaml.")
    ] = None,
    watch_every_s: Annotated[
        float, typer.Option(min=0.5, help="How often the registry's aliases are checked.")
    ] = 5.0,
    num_cpus: Annotated[int | None, typer.Option(min=1, help="CPUs Ray may use; default: all.")] = None,
) -> None:
    """Start Serve, deploy, then hot-swap models whenever the champion or challenger alias moves.

    The local and prod profiles start a Ray of their own on this machine; the
    cluster profile joins the Ray cluster at FRAUDPIPE_RAY_ADDRESS instead, and
    the application keeps serving there after this command stops.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    profile = active_profile()
    serve_config = load_config(profile, config)
    resources = build_resources(profile)
    models = ModelStore(resources["mlflow"].process_config_and_initialize())
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if profile == "cluster":
        start_on_cluster(serve_config, resources["ray"].process_config_and_initialize().address)
    else:
        start_local(serve_config, num_cpus)
    try:
        watcher = AliasWatcher(serve_config, models.alias)
        watcher.sync()
        http = serve_config.get("http_options", {})
        typer.echo(
            f"serving on http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}/v1/score "
            "(OpenAPI at /docs); Ctrl-C stops"
        )
        while not stop.wait(watch_every_s):
            try:
                watcher.sync()
            except Exception as exc:  # a registry or deploy hiccup must not stop serving
                logger.warning("could not sync model versions, serving the previous ones: %s", exc)
    finally:
        # Not serve.shutdown(): it drains for up to 30 s. A local Ray is ours and goes with us;
        # on a cluster this only disconnects, and Serve goes on serving the last applied versions.
        ray.shutdown()


if __name__ == "__main__":
    app()
