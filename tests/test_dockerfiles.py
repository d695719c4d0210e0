"""The two Dockerfiles of infra/docker, read without Docker: pinned, multi-stage, non-root, from the lock."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import ray

from infra.cluster import DOCKER_DIR, PROJECT_ROOT, dockerfile_ray_version

DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
EXACT_TAG = re.compile(r"^[^:@\s]+:(?=[^:]*\d+\.\d+\.\d+)[\w.-]+$")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each stage, each list starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(dockerfile):
        if instruction[0] == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def test_both_images_have_a_dockerfile() -> None:
    assert {path.name for path in DOCKERFILES} == {"code-location.Dockerfile", "ray.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_multi_stage_with_every_base_pinned(dockerfile: Path) -> None:
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "build tools stay in a builder stage"
    names: set[str] = set()
    for stage in all_stages:
        image, *alias = stage[0][1].split()
        if image in names:
            continue
        assert EXACT_TAG.match(image), f"{image}: pin an exact version tag"
        assert not image.endswith(":latest")
        if alias:
            names.add(alias[-1])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_final_stage_runs_as_a_non_root_user(dockerfile: Path) -> None:
    users = [args for instruction, args in stages(dockerfile)[-1] if instruction == "USER"]
    assert users, "the final stage must name its user"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dependencies_come_from_the_lock(dockerfile: Path) -> None:
    runs = [args for instruction, args in instructions(dockerfile) if instruction == "RUN"]
    uv_lock_commands = [run for run in runs if re.search(r"\buv (sync|export)\b", run)]
    assert uv_lock_commands, "dependencies are installed from uv.lock"
    for command in uv_lock_commands:
        assert "--frozen" in command, f"{command}: --frozen, or uv may re-resolve instead of using the lock"
        assert "--no-dev" in command
    copies = [args for instruction, args in instructions(dockerfile) if instruction == "COPY"]
    assert any("uv.lock" in copy.split() for copy in copies)


def test_code_location_image_installs_with_uv_sync_frozen() -> None:
    runs = [
        args
        for instruction, args in instructions(DOCKER_DIR / "code-location.Dockerfile")
        if instruction == "RUN"
    ]
    assert any("uv sync --frozen" in run for run in runs)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_every_project_package_is_copied(dockerfile: Path) -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    copied = {args.split()[-2] for instruction, args in instructions(dockerfile) if instruction == "COPY"}
    assert set(packages) <= copied, f"not copied into the image: {set(packages) - copied}"


def test_ray_base_image_is_the_locked_ray() -> None:
    bases = [stage[0][1].split()[0] for stage in stages(DOCKER_DIR / "ray.Dockerfile")]
    ray_bases = [base for base in bases if base.startswith("rayproject/ray:")]
    assert ray_bases, "the Ray image builds on rayproject/ray"
    for base in ray_bases:
        assert base.split(":")[1].split("-")[0] == ray.__version__
        assert "py311" in base, "the lock's Python is 3.11"
    assert dockerfile_ray_version() == ray.__version__


def test_python_base_is_the_locks_python() -> None:
    requires = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ">=3.11,<3.12" in requires
    for dockerfile in DOCKERFILES:
        for stage in stages(dockerfile):
            image = stage[0][1].split()[0]
            if image.startswith("python:"):
                assert image.split(":")[1].startswith("3.11."), image


def test_build_context_leaves_out_data_environments_and_secrets() -> None:
    ignored = set((PROJECT_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "data/", ".dagster_home/", "test-artifacts/"} <= ignored
