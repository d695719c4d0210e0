"""Feast's own CLI sees the definitions: `feast plan` lists them, and changes nothing after the pipeline.

The command is the README's (`make feast ARGS=plan`): Feast's CLI on the
profile's `feature_store.yaml`, its placeholders filled from the settings'
environment (`python -m settings exec`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from settings import PROJECT_ROOT
from tests.conftest import PipelineRun, local_settings

CREATED = (
    "Created entity customer",
    "Created entity terminal",
    "Created feature view customer_spending",
    "Created feature view terminal_risk",
    "Created on demand feature view transaction_calendar",
    "Created feature service fraud_model_v1",
)


def feast_plan(data_dir: Path) -> str:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **local_settings(data_dir).to_env()}
    result = subprocess.run(
        [
            shutil.which("feast", path=env["PATH"]) or "feast",
            "-c",
            "feature_repo",
            "-f",
            "feature_repo/profiles/local/feature_store.yaml",
            "plan",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_plan_lists_the_project_views_and_service_on_an_empty_registry(tmp_path: Path) -> None:
    printed = feast_plan(tmp_path)
    for line in CREATED:
        assert line in printed, printed
    assert "Deleted" not in printed


def test_plan_changes_nothing_on_a_registry_the_pipeline_applied(pipeline_run: PipelineRun) -> None:
    """Nothing to create, update or delete in the registry: a Feast user's `feast apply` is harmless.

    Feast's infrastructure plan may still list its (unused) SQLite online tables: the SDK's
    `apply`, which the asset calls, creates them but records them nowhere `plan` looks.
    """
    printed = feast_plan(pipeline_run.data_dir)
    assert "No changes to registry" in printed, printed
    registry_part = printed.split("No changes to registry")[0]
    assert "Deleted" not in printed and "Created" not in registry_part and "Updated" not in printed, printed
    assert all(line.startswith("Created sqlite table") for line in printed.splitlines() if "Created" in line)
