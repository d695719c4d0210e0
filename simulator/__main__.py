"""Entry point of ``python -m simulator``."""

from simulator.cli import app

app()
