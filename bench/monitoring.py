"""Benchmark: feature drift of a million live rows against the training reference, beside Evidently.

Claim: PSI (over the reference's precomputed quantile bins) and the exact
two-sample KS statistic of 1,000,000 current rows x the model's 15 features
against a 1,000,000-row reference take at most 10 s here per batch. The
reference profile is built once per model and timed apart.

Baseline, in the same run: Evidently's DataDriftPreset (through
`monitoring.evidently_report`) with its own test per column (`rule=None`; the
monitoring assets give it the sensor's rule instead) on a sample of both sets,
since at a million rows it takes over a minute; `monitoring.drift` is timed on
the same sample too, so that the ratio compares like with like.

The data are synthetic but shaped like the model's features
(`feature_repo.windows.MODEL_FEATURES`): lognormal amounts, Poisson counts,
0/1 calendar flags, terminal risk rates that are mostly 0. The current set
shifts three of them (`SHIFTED`), which both tools should find, and no other.

    python -m bench.monitoring [--quick] [--rows N] [--evidently-rows N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from bench.common import markdown_table, quiet_warnings
from bench.results import add_results_argument, write_result
from feature_repo.windows import MODEL_FEATURES, WINDOWS_DAYS
from monitoring.drift import ReferenceProfile, feature_drift
from monitoring.evidently_report import evidently_drift_report
from settings import MonitoringSettings

TARGET_SECONDS = 10.0
ROWS = 1_000_000
EVIDENTLY_ROWS = 100_000
QUICK_ROWS = 20_000
QUICK_EVIDENTLY_ROWS = 5_000

SHIFTED = ("TX_AMOUNT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "TERMINAL_ID_RISK_1DAY_WINDOW")
"""What the current set changes: the transaction's amount up 50% (the windows' averages lag
behind), 60% more transactions per card in the last day, and a wave of compromised
terminals in the last day's risk window (27% of transactions instead of 2%)."""

T = TypeVar("T")

THRESHOLDS = MonitoringSettings()
"""The monitoring assets' defaults: the bench judges drift as they do."""

OURS = "monitoring.drift (PSI + exact KS)"
EVIDENTLY = "Evidently DataDriftPreset"


def synthetic_features(rows: int, seed: int, shifted: bool) -> pd.DataFrame:
    """Rows shaped like the model's 15 features; `shifted` applies the `SHIFTED` changes.

    Each row is a transaction of a card with its own spending rate and
    typical amount, at a terminal with its own traffic, a few terminals
    being compromised (frauds reported on a share of their transactions).
    """
    rng = np.random.default_rng(seed)
    amount_scale = 1.5 if shifted else 1.0
    card_daily_tx = rng.gamma(2.0, 1.0, rows)  # per-card transactions a day
    card_mean_amount = rng.lognormal(3.7, 0.5, rows)
    terminal_daily_tx = rng.gamma(1.5, 0.8, rows)
    compromised = rng.random(rows) < 0.02
    # A wave of newly compromised terminals shows in the last day's window first.
    newly_compromised = compromised | (rng.random(rows) < (0.25 if shifted else 0.0))
    base_rate = rng.beta(0.05, 40.0, rows)
    compromised_rate = rng.uniform(0.2, 0.8, rows)

    columns: dict[str, np.ndarray] = {
        "TX_AMOUNT": np.round(card_mean_amount * rng.lognormal(0.0, 0.5, rows) * amount_scale, 2),
        "TX_DURING_WEEKEND": (rng.random(rows) < 2 / 7).astype(np.int64),
        "TX_DURING_NIGHT": (rng.random(rows) < 0.17).astype(np.int64),
    }
    for days in WINDOWS_DAYS:
        busier = 1.6 if shifted and days == 1 else 1.0
        count = 1 + rng.poisson(card_daily_tx * days * busier)  # the transaction itself counts
        columns[f"CUSTOMER_ID_NB_TX_{days}DAY_WINDOW"] = count
        noise = rng.lognormal(0.0, 0.5 / np.sqrt(count))
        columns[f"CUSTOMER_ID_AVG_AMOUNT_{days}DAY_WINDOW"] = np.round(card_mean_amount * noise, 2)
    for days in WINDOWS_DAYS:
        count = rng.poisson(terminal_daily_tx * days)
        fraud_rate = np.where(newly_compromised if days == 1 else compromised, compromised_rate, base_rate)
        frauds = rng.binomial(count, fraud_rate)
        columns[f"TERMINAL_ID_NB_TX_{days}DAY_WINDOW"] = count
        columns[f"TERMINAL_ID_RISK_{days}DAY_WINDOW"] = np.divide(
            frauds, count, out=np.zeros(rows), where=count > 0
        )
    return pd.DataFrame({name: columns[name] for name in MODEL_FEATURES})


@dataclass(frozen=True)
class Seconds:
    """Wall-clock and CPU seconds of a step.

    CPU seconds (this process, all threads) are the steadier number on a
    machine shared with other work: wall seconds grow with the load, CPU
    seconds hardly.
    """

    wall: float
    cpu: float

    def __add__(self, other: Seconds) -> Seconds:
        return Seconds(self.wall + other.wall, self.cpu + other.cpu)


@dataclass(frozen=True)
class Timing:
    """One timed step of one tool."""

    tool: str
    step: str
    reference_rows: int
    current_rows: int
    seconds: Seconds
    found: tuple[str, ...] | None

    @property
    def rows_per_second(self) -> float:
        return self.current_rows / self.seconds.wall


@dataclass(frozen=True)
class MonitoringBench:
    """What a run measured: the timings, the pass/fail lines and the printed report."""

    timings: list[Timing]
    checks: list[tuple[bool, str]]
    ks_max_difference: float
    evidently: dict[str, Any]
    report: str


def _timed(call: Callable[[], T]) -> tuple[T, Seconds]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, Seconds(time.perf_counter() - wall, time.process_time() - cpu)


def _ours(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[Seconds, Seconds, tuple[str, ...]]:
    """Seconds to build the reference profile and to measure the batch's drift, and what drifted."""
    profile, build = _timed(lambda: ReferenceProfile.from_frame(reference, MODEL_FEATURES))
    drift, batch = _timed(lambda: feature_drift(profile, current))
    return build, batch, tuple(drift.drifted(THRESHOLDS.psi_threshold, THRESHOLDS.ks_threshold))


def _ks_max_difference(reference: pd.DataFrame, current: pd.DataFrame) -> float:
    """Largest |our KS - scipy's ks_2samp| over the features: the exactness check, on the sample.

    scipy's "asymp" method leaves the statistic as computed; "exact" (its
    default below 10,000 rows) rounds it to a fraction, off by about 1e-17.
    """
    from scipy.stats import ks_2samp

    drift = feature_drift(ReferenceProfile.from_frame(reference, MODEL_FEATURES), current)
    return max(
        abs(
            drift.features[name].ks
            - float(ks_2samp(reference[name], current[name], method="asymp").statistic)
        )
        for name in MODEL_FEATURES
    )


def _found(features: tuple[str, ...] | None) -> str:
    if features is None:
        return ""
    verdict = "the shifted ones" if set(features) == set(SHIFTED) else "NOT the shifted ones"
    return f"{len(features)} of {len(MODEL_FEATURES)}: {verdict}"


def _report(timings: list[Timing], checks: list[tuple[bool, str]], notes: list[str]) -> str:
    evidently = timings[-1]
    rows = [
        [
            t.tool,
            t.step,
            f"{t.reference_rows:,}",
            f"{t.current_rows:,}" if t.current_rows else "",
            f"{t.seconds.wall:.2f}",
            f"{t.seconds.cpu:.2f}",
            f"{t.rows_per_second:,.0f}" if t.current_rows else "",
            f"{evidently.seconds.wall / t.seconds.wall:.1f}x"
            if t.current_rows == evidently.current_rows
            else "",
            f"{evidently.seconds.cpu / t.seconds.cpu:.1f}x"
            if t.current_rows == evidently.current_rows
            else "",
            _found(t.found),
        ]
        for t in timings
    ]
    table = markdown_table(
        [
            "tool",
            "step",
            "reference rows",
            "current rows",
            "seconds",
            "CPU seconds",
            "current rows/s",
            "vs Evidently, same rows",
            "(CPU)",
            "drifted features found",
        ],
        rows,
        text_columns=2,
    )
    found = [f"  {t.tool}, {t.step}: {', '.join(t.found)}" for t in timings if t.found is not None]
    lines = [
        table,
        "",
        *(f"{'PASS' if passed else 'MISS'}  {text}" for passed, text in checks),
        "",
        f"shifted: {', '.join(SHIFTED)}",
        f"found (ours: PSI > {THRESHOLDS.psi_threshold} or KS > {THRESHOLDS.ks_threshold}; "
        "Evidently: its own test per column):",
        *found,
        *notes,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> MonitoringBench:
    """Time drift of a shifted batch with both tools and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--rows", type=int, default=None, help=f"rows of each set (default {ROWS:,})")
    parser.add_argument(
        "--evidently-rows",
        type=int,
        default=None,
        help=f"rows of each set given to Evidently, and to ours for the like-for-like ratio "
        f"(default {EVIDENTLY_ROWS:,})",
    )
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_ROWS:,} rows, {QUICK_EVIDENTLY_ROWS:,} for Evidently: a smoke run",
    )
    parser.add_argument("--html", type=Path, default=None, help="keep Evidently's HTML report here")
    add_results_argument(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    rows = args.rows or (QUICK_ROWS if args.quick else ROWS)
    sample_rows = min(rows, args.evidently_rows or (QUICK_EVIDENTLY_ROWS if args.quick else EVIDENTLY_ROWS))
    quiet_warnings()
    load_before = os.getloadavg()[0]

    print(f"[bench] monitoring: {rows:,} rows x {len(MODEL_FEATURES)} features, seed {args.seed}", flush=True)
    reference = synthetic_features(rows, args.seed, shifted=False)
    current = synthetic_features(rows, args.seed + 1, shifted=True)
    print("[bench] ours on the full sets ...", flush=True)
    build, batch, found = _ours(reference, current)
    timings = [
        Timing(OURS, "reference profile (once per model)", rows, 0, build, None),
        Timing(OURS, "batch drift", rows, rows, batch, found),
    ]
    # Rows are independent draws, so the first ones are a random sample.
    reference_sample, current_sample = reference.iloc[:sample_rows], current.iloc[:sample_rows]
    print(f"[bench] ours and Evidently on {sample_rows:,} rows of each ...", flush=True)
    build_sample, batch_sample, found = _ours(reference_sample, current_sample)
    sample = (sample_rows, sample_rows)
    timings.append(
        Timing(OURS, "reference profile + batch drift", *sample, build_sample + batch_sample, found)
    )
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as tmp:
        html = args.html or Path(tmp) / "drift.html"
        evidently, seconds = _timed(
            lambda: evidently_drift_report(reference_sample, current_sample, MODEL_FEATURES, html, rule=None)
        )
        html_bytes = html.stat().st_size
    found = tuple(name for name, column in evidently["columns"].items() if column["drifted"])
    timings.append(Timing(EVIDENTLY, "report: run + save_html", *sample, seconds, found))
    ks_difference = _ks_max_difference(reference_sample, current_sample)

    ours_sample, evidently_total = timings[2].seconds, timings[3].seconds
    checks = [
        (
            batch.wall <= TARGET_SECONDS,
            f"batch drift of {rows:,} rows x {len(MODEL_FEATURES)} features in {batch.wall:.2f} s "
            f"(target <= {TARGET_SECONDS:.0f} s; the reference profile, built once per model: "
            f"{build.wall:.2f} s)",
        ),
        (
            ours_sample.wall < evidently_total.wall,
            f"on the same {sample_rows:,} rows, profile + drift {ours_sample.wall:.2f} s vs Evidently's "
            f"report {evidently_total.wall:.2f} s ({evidently_total.wall / ours_sample.wall:.1f}x; "
            f"CPU {evidently_total.cpu / ours_sample.cpu:.1f}x)",
        ),
        (
            all(set(t.found) == set(SHIFTED) for t in timings if t.found is not None),
            "every tool finds exactly the shifted features",
        ),
        (
            ks_difference == 0.0,
            f"KS equals scipy.stats.ks_2samp on the sample, every feature: "
            f"max |difference| {ks_difference:.1e}",
        ),
    ]
    evidently_parts = evidently["seconds"]
    notes = [
        f"Evidently's report: {evidently_parts['run']:.2f} s in report.run, "
        f"{evidently_parts['save_html']:.2f} s in save_html, the rest checks and sampling; "
        f"HTML page {html_bytes / 2**20:.1f} MiB" + (f", kept at {html}" if args.html else ""),
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after",
    ]
    report = _report(timings, checks, notes)
    body = f"## Drift: {rows:,} rows x {len(MODEL_FEATURES)} features, seed {args.seed}\n\n```\n{report}\n```"
    print(f"\n{body}\n", flush=True)
    write_result("monitoring", body, argv, args.quick, args.results)
    return MonitoringBench(timings, checks, ks_difference, evidently, report)


if __name__ == "__main__":
    main()
