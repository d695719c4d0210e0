"""`--help` answers at once: a command module imports Ray, Dagster, MLflow, Feast and the model stack
in the commands that use them, not at the top.

No timing threshold: each `--help` runs in a fresh interpreter, which then
lists the heavy packages it loaded; there must be none (a second instead of
the 10 to 40 these imports cost).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from settings import PROJECT_ROOT

HEAVY = frozenset(
    {
        "ray",
        "dagster",
        "mlflow",
        "feast",
        "xgboost",
        "sklearn",
        "pandas",
        "pyarrow",
        "confluent_kafka",
        "redis",
        "fastapi",
        "great_expectations",
        "evidently",
    }
)

PROBE = """
import json, runpy, sys
module, args = sys.argv[1], sys.argv[2:]
sys.argv = [f"python -m {module}", *args]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exit:
    code = exit.code or 0
print()
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        ("serving", ["--help"], "run"),
        ("serving", ["run", "--help"], "--num-cpus"),
        ("streaming", ["--help"], "produce"),
        ("streaming", ["produce", "--help"], "--rate"),
        ("demo", ["--help"], "--live-days"),
        ("monitoring", ["--help"], "export"),
        ("monitoring", ["export", "--help"], "--metrics-path"),
        ("settings", ["--help"], "exec -- COMMAND"),
        ("orchestration", ["--help"], "prod-init"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_help_loads_no_heavy_package(module: str, args: list[str], expected: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, module, *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    *help_text, last = result.stdout.rstrip().splitlines()
    probe = json.loads(last)
    assert probe["code"] == 0
    assert expected in "\n".join(help_text)
    assert not HEAVY.intersection(probe["modules"]), sorted(HEAVY.intersection(probe["modules"]))
