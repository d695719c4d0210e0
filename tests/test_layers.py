"""The layers point one way: the machinery loads no Dagster, and import-linter's contracts hold (and bite).

`lint-imports` (make lint) checks the contracts of `pyproject.toml` on every
build; these tests show what they protect (a Serve replica and a stream
consumer import nothing of the code location) and that a forbidden import
does fail them.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from settings import PROJECT_ROOT

LAYERED = (
    "settings",
    "feature_repo",
    "serving",
    "streaming",
    "monitoring",
    "modeling",
    "expectations",
    "simulator",
    "orchestration",
    "assets",
    "demo",
    "infra",
    "bench",
)


def _loaded_after(statement: str) -> set[str]:
    """Top-level packages a fresh interpreter holds after running `statement`."""
    probe = f"{statement}\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}}))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return set(ast.literal_eval(out.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "entry",
    [
        "import serving.app",  # what a Ray Serve replica imports (serving.app:app)
        "import streaming.cli, streaming.consumer",  # python -m streaming consume
    ],
)
def test_the_serve_app_and_the_stream_consumer_load_no_dagster(entry: str) -> None:
    loaded = _loaded_after(entry)
    assert not loaded & {"dagster", "dagster_k8s", "dagster_postgres", "orchestration", "assets", "demo"}, (
        loaded
    )
    assert "settings" in loaded  # they do read the settings, the layer below them


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_layer_contracts_hold() -> None:
    result = _lint_imports(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("serving/model.py", "import dagster", "import no Dagster"),
        ("streaming/consumer.py", "import orchestration.jobs", "Layers point one way"),
        ("settings/base.py", "import pandas", "imports no framework"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    """The contracts bite: a copy of the packages with one import against the arrows fails lint-imports."""
    for package in LAYERED:
        shutil.copytree(
            PROJECT_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(f"{line}  # noqa\n" + target.read_text())

    result = _lint_imports(tmp_path)

    assert result.returncode != 0, result.stdout[-3000:]
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and module.removesuffix(".py").replace("/", ".") in broken, result.stdout[
        -3000:
    ]
