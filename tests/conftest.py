"""Shared fixtures: one small simulated dataset run through the whole graph once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from orchestration.profiles import build_resources
from orchestration.runner import run_pipeline
from simulator import SimulatedData, SimulatorConfig, simulate, write_dataset

SMALL = SimulatorConfig(
    n_customers=300,
    n_terminals=600,
    n_days=140,
    n_compromised_terminals_per_day=1,
    n_compromised_customers_per_day=1,
    seed=7,
)
"""Big enough for the handbook split (train 07-25, test to 08-14) to hold frauds."""

FAST_MODEL = {"ops": {"fraud_model": {"config": {"n_folds": 2, "max_depth": [3], "learning_rate": [0.3]}}}}


@dataclass
class PipelineRun:
    data: SimulatedData
    data_dir: Path
    resources: dict[str, Any]
    results: dict[str, dg.ExecuteInProcessResult]


@pytest.fixture(scope="session")
def small_data() -> SimulatedData:
    return simulate(SMALL)


@pytest.fixture(scope="session")
def pipeline_run(
    small_data: SimulatedData, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PipelineRun]:
    """The local profile's whole graph, materialised once for the session."""
    data_dir = tmp_path_factory.mktemp("local")
    write_dataset(small_data, data_dir / "source")
    resources = build_resources("local", data_dir)
    with dg.instance_for_test() as instance:
        results = run_pipeline(resources, instance, FAST_MODEL)
        yield PipelineRun(small_data, data_dir, resources, results)
