"""What the benchmarks share: dataset options, stage timing, peak memory, child runs, tables.

This module imports no Feast or Dagster at its top: the pandas baseline's child
process imports it too, and its peak memory must not include theirs.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import resource
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench.results import add_results_argument
from simulator import SimulatorConfig

DEFAULT_SIZE = {"customers": 5_000, "terminals": 10_000, "days": 183}
"""The handbook's published dataset: about 1.75 M transactions."""

QUICK_SIZE = {"customers": 300, "terminals": 600, "days": 140}
"""The test suite's small dataset: still long enough for the handbook split and its folds."""


def dataset_parser(
    description: str,
    sizes: dict[str, int] = DEFAULT_SIZE,
    quick_help: str = "a small dataset (one compromised terminal and card a day) for a smoke run",
) -> argparse.ArgumentParser:
    """Options every benchmark takes: the simulated dataset's size (`sizes` by default) and seed."""
    parser = argparse.ArgumentParser(description=description)
    for name, default in sizes.items():
        parser.add_argument(
            f"--{name}",
            type=int,
            default=None,
            help=f"default {default:,}; {QUICK_SIZE[name]:,} with --quick",
        )
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    add_results_argument(parser)
    return parser


def simulator_config(args: argparse.Namespace) -> SimulatorConfig:
    """The dataset the options ask for; unset sizes take the default or the quick size."""
    size = QUICK_SIZE if args.quick else DEFAULT_SIZE
    chosen = {name: getattr(args, name) if getattr(args, name) is not None else size[name] for name in size}
    config = SimulatorConfig(
        n_customers=chosen["customers"],
        n_terminals=chosen["terminals"],
        n_days=chosen["days"],
        seed=args.seed,
    )
    if args.quick:
        # As the test suite's dataset: fewer frauds a day for a tenth of the cards.
        config = replace(config, n_compromised_terminals_per_day=1, n_compromised_customers_per_day=1)
    return config


def describe(config: SimulatorConfig) -> str:
    return (
        f"{config.n_customers:,} customers, {config.n_terminals:,} terminals, "
        f"{config.n_days} days, seed {config.seed}"
    )


def quiet_warnings() -> None:
    """Silence library chatter (Feast's experimental-feature notes) so the progress lines stay readable."""
    for category in (DeprecationWarning, FutureWarning, UserWarning, RuntimeWarning):
        warnings.filterwarnings("ignore", category=category)


@dataclass
class Stages:
    """Wall-clock seconds of named stages, each announced on one progress line."""

    prefix: str
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"[{self.prefix}] {name} ...", flush=True)
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        print(f"[{self.prefix}] {name}: {elapsed:.1f} s", flush=True)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def _proc_status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux VmHWM; ru_maxrss elsewhere)."""
    peak = _proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's resident memory now (0 where /proc is missing)."""
    return _proc_status_mib("VmRSS") or 0.0


def _call(module: str, function: str, kwargs: dict[str, Any]) -> Any:
    return getattr(importlib.import_module(module), function)(**kwargs)


def run_in_child(module: str, function: str, **kwargs: Any) -> Any:
    """Call `module.function(**kwargs)` in a fresh spawned interpreter and return its result.

    A fresh process per variant keeps each one's peak memory its own: nothing
    it imports or allocates is shared with the parent or the other variant.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_call, module, function, kwargs).result()


def feast_training_set(
    events: pd.DataFrame, reports: pd.DataFrame, data_dir: Path, stages: Stages, project: str = "bench"
) -> pd.DataFrame:
    """The training set exactly as the Dagster graph builds it, stage by stage.

    The feature tables of `feature_repo.engine` written to parquet, the Feast
    registry applied from `feast_objects`, then `build_training_set` (Feast's
    get_historical_features through the ASOF offline store) on every settled
    transaction.
    """
    # Imported here rather than at the top: see the module docstring.
    from assets.training_set import build_training_set, settled_transactions
    from feature_repo.definitions import feast_objects
    from feature_repo.engine import feature_table
    from feature_repo.store import FeastStore
    from feature_repo.windows import FEATURE_GROUPS
    from orchestration.resources import LakeResource

    quiet_warnings()  # after the imports: Feast's modules install warning filters of their own
    lake = LakeResource(root=str(data_dir / "lake"))
    for group in FEATURE_GROUPS:
        with stages.stage(f"{group.name} feature table"):
            table = feature_table(group, events, reports if group.uses_labels else None)
        with stages.stage(f"{group.name} parquet write"):
            lake.write_table(group.name, table)
        del table
    feast = FeastStore(profile="local", data_dir=data_dir, project=project, registry_url="", ray_address="")
    with stages.stage("feast apply"):
        objects, _ = feast_objects({group.name: lake.table_path(group.name) for group in FEATURE_GROUPS})
        feast.store().apply(objects)
    with stages.stage("settled transactions"):
        labelled = settled_transactions(events, reports)
    with stages.stage("get_historical_features (ASOF join)"):
        return build_training_set(feast, labelled)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """A table that reads the same in a terminal and in a README.

    The first `text_columns` columns are left-aligned, the numbers after them right-aligned.
    """
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(w) if i < text_columns else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 2) if i < text_columns else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    )
    return "\n".join([line(headers), rule + "|", *(line(row) for row in rows)])
