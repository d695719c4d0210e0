"""Passwords in URLs never reach a log line or a traceback an entry point writes."""

from __future__ import annotations

import subprocess
import sys

from settings.logs import redact

SECRET_URL = "postgresql+psycopg://fraud:s3cret-pw@10.1.2.3:5432/fraudpipe_mlflow"


def test_redact_stars_only_the_password() -> None:
    assert redact(f"cannot reach {SECRET_URL}") == (
        "cannot reach postgresql+psycopg://fraud:***@10.1.2.3:5432/fraudpipe_mlflow"
    )
    assert redact("rediss://:tok3n@redis:6380/0 and redis://redis:6379/0") == (
        "rediss://:***@redis:6380/0 and redis://redis:6379/0"
    )
    assert (
        redact("http://127.0.0.1:8000/v1/score at 12:30:01") == "http://127.0.0.1:8000/v1/score at 12:30:01"
    )


def test_an_entry_points_log_stars_passwords_in_messages_and_tracebacks() -> None:
    script = f"""
import logging
from settings.logs import configure_logging
configure_logging()
log = logging.getLogger("x")
log.error("store %s did not answer", {SECRET_URL!r})
try:
    raise ConnectionError("Error connecting to {SECRET_URL}")
except ConnectionError:
    log.exception("failed")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "s3cret-pw" not in result.stderr
    assert result.stderr.count("fraud:***@10.1.2.3") == 2
    assert "ConnectionError: Error connecting to" in result.stderr
