"""Benchmark: the point-in-time training set through Feast against a plain-pandas baseline.

Claim: the full default dataset's training set (about 1.75 M labelled
transactions, 15 model features of which 12 are windows) builds through Feast
in at most 60 s here, and no slower than the handbook's pandas rolling-window
implementation of the same features.

Both variants start from the same events and fraud reports (parquet files the
parent writes) and each runs in its own spawned process, so that the peak
memory read at its end (VmHWM) is its own. Their outputs are then compared
value by value: the baseline doubles as an independent check of the feature
definitions.

    python -m bench.training_set [--quick] [--customers N --terminals N --days N --seed S]
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import (
    Stages,
    dataset_parser,
    describe,
    feast_training_set,
    markdown_table,
    peak_rss_mib,
    rss_mib,
    run_in_child,
    simulator_config,
)
from bench.results import write_result
from feature_repo.windows import (
    CUSTOMER_SPENDING,
    LABEL_DELAY_DAYS,
    MODEL_FEATURES,
    WINDOWS_DAYS,
)
from simulator import simulate

TARGET_SECONDS = 60.0
LABEL = "TX_FRAUD"
KEYS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID")
COMPARED = (*MODEL_FEATURES, LABEL)
EXACT = frozenset(
    name for name in COMPARED if "_NB_TX_" in name or name in ("TX_DURING_WEEKEND", "TX_DURING_NIGHT", LABEL)
)
"""Counts, flags and labels must agree exactly; means and rates within REL_TOL."""
REL_TOL = 1e-9

MODULE = "bench.training_set"
"""This module's import name: run as `python -m`, it is `__main__`, which a spawned child cannot import."""

FEAST = "Feast (engine tables + ASOF join)"
PANDAS = "pandas rolling (handbook)"


@dataclass(frozen=True)
class VariantRun:
    """One variant's run, measured inside its own process."""

    name: str
    rows: int
    stages: dict[str, float]
    import_seconds: float
    rss_before_mib: float
    peak_rss_mib: float

    @property
    def seconds(self) -> float:
        return sum(self.stages.values())


def _load(workdir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(workdir / "events.parquet"), pd.read_parquet(workdir / "reports.parquet")


def run_feast_variant(workdir: str) -> VariantRun:
    """(a) What the Dagster graph does; run in a child process."""
    start = time.perf_counter()
    # The Feast stack's import cost (Dagster has paid it long before a run) is
    # reported, not timed with the build.
    import assets.training_set  # noqa: F401
    import feature_repo.definitions  # noqa: F401

    imported = time.perf_counter() - start
    events, reports = _load(Path(workdir))
    before = rss_mib()
    stages = Stages("feast")
    frame = feast_training_set(events, reports, Path(workdir) / "feast", stages)
    rows = len(frame)
    frame.to_parquet(Path(workdir) / "feast_result.parquet")
    return VariantRun(FEAST, rows, stages.seconds, imported, before, peak_rss_mib())


def run_pandas_variant(workdir: str) -> VariantRun:
    """(b) The handbook's rolling windows in plain pandas; run in a child process."""
    events, reports = _load(Path(workdir))
    before = rss_mib()
    stages = Stages("pandas")
    frame = pandas_training_set(events, reports, stages)
    rows = len(frame)
    frame.to_parquet(Path(workdir) / "pandas_result.parquet")
    return VariantRun(PANDAS, rows, stages.seconds, 0.0, before, peak_rss_mib())


def _grouped_rolling(frame: pd.DataFrame, key: str, column: str, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of `column` over each row's entity rows in (t - days, t], in `frame`'s row order.

    pandas evaluates the window at each row over the rows before it in frame
    order: a row tied in time with a later row of its entity does not see it.
    `frame` must have a RangeIndex, which the results are scattered back by.
    """
    rolling = (
        frame[[key, "TX_DATETIME", column]]
        .groupby(key, sort=False)
        .rolling(f"{days}D", on="TX_DATETIME", closed="right")
    )
    sums, counts = rolling.sum()[column], rolling.count()[column]
    rows = sums.index.get_level_values(-1).to_numpy()
    total, count = np.empty(len(frame)), np.empty(len(frame))
    total[rows], count[rows] = sums.to_numpy(), counts.to_numpy()
    return total, count


def pandas_training_set(events: pd.DataFrame, reports: pd.DataFrame, stages: Stages) -> pd.DataFrame:
    """The same training set the handbook's way: per-entity pandas rolling windows.

    Customer spending: count and mean amount over (t - n days, t]. Terminal
    risk, as the handbook computes its delayed windows: the (d + n)-day window
    minus the d-day window gives (t - d - n days, t - d], with fraud labels
    from the reports (all of them known by t, since no report takes longer
    than the d = 7 day delay). Settled rows follow the same rule as
    `assets.training_set.settled_transactions`.

    Returns:
        The columns of `assets.training_set.build_training_set`, in its row order.
    """
    with stages.stage("labels from reports"):
        frame = events.sort_values(["TX_DATETIME", "TRANSACTION_ID"], ignore_index=True)
        frame[LABEL] = frame["TRANSACTION_ID"].isin(reports["TRANSACTION_ID"]).astype("int8")
    features: dict[str, np.ndarray] = {}
    with stages.stage("customer rolling windows"):
        for n in WINDOWS_DAYS:
            total, count = _grouped_rolling(frame, "CUSTOMER_ID", "TX_AMOUNT", n)
            features[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = count.astype(np.int64)
            features[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = total / count
    with stages.stage("terminal rolling windows"):
        frauds_delay, count_delay = _grouped_rolling(frame, "TERMINAL_ID", LABEL, LABEL_DELAY_DAYS)
        for n in WINDOWS_DAYS:
            frauds, count = _grouped_rolling(frame, "TERMINAL_ID", LABEL, LABEL_DELAY_DAYS + n)
            frauds, count = frauds - frauds_delay, count - count_delay
            features[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = count.astype(np.int64)
            features[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = np.divide(
                frauds, count, out=np.zeros_like(frauds), where=count > 0
            )
    with stages.stage("join to settled transactions"):
        frame = frame.assign(
            TX_DURING_WEEKEND=(frame["TX_DATETIME"].dt.weekday >= 5).astype(np.int64),
            TX_DURING_NIGHT=(frame["TX_DATETIME"].dt.hour <= 6).astype(np.int64),
            **features,
        )
        if len(reports):
            horizon = reports["REPORT_DATETIME"].max() - pd.Timedelta(days=LABEL_DELAY_DAYS)
            frame = frame[frame["TX_DATETIME"] <= horizon]
        return frame[[*KEYS, *MODEL_FEATURES, LABEL]].reset_index(drop=True)


@dataclass(frozen=True)
class Agreement:
    """How the two variants' training sets compare, value by value."""

    rows: int
    rows_only_in_one: int
    values: int
    mismatched_values: int
    mismatched_rows: int
    tied_rows: int
    mismatched_rows_tied: int
    mismatched_values_after_tie_fix: int
    per_feature: dict[str, int]

    @property
    def explained_by_ties(self) -> bool:
        """Every difference is the baseline's tie handling: none is left once ties are undone."""
        return self.rows_only_in_one == 0 and self.mismatched_values_after_tie_fix == 0


def _differs(ours: pd.DataFrame, theirs: pd.DataFrame) -> pd.DataFrame:
    out = {}
    for name in COMPARED:
        a = ours[name].to_numpy(np.float64, na_value=np.nan)
        b = theirs[name].to_numpy(np.float64, na_value=np.nan)
        same = a == b if name in EXACT else np.isclose(a, b, rtol=REL_TOL, atol=0.0)
        out[name] = ~same
    return pd.DataFrame(out, index=ours.index)


def compare(ours: pd.DataFrame, theirs: pd.DataFrame) -> Agreement:
    """Compare the Feast training set with the baseline's on their common rows.

    A card's transactions in the same second are a tie. Our windows include
    every event at t; the baseline's rolling window stops at the row itself,
    so the earlier rows of a tie miss the later ones. Giving every row of a
    tie the baseline's value of the tie's last row undoes exactly that: what
    still differs after it is a real disagreement.
    """
    ours = ours.set_index("TRANSACTION_ID")
    theirs = theirs.set_index("TRANSACTION_ID")
    common = ours.index.intersection(theirs.index)
    only = len(ours.index.symmetric_difference(theirs.index))
    ours, theirs = ours.loc[common], theirs.loc[common].sort_values(["TX_DATETIME", "TRANSACTION_ID"])
    ours = ours.loc[theirs.index]
    differs = _differs(ours, theirs)
    tie = theirs.groupby(["CUSTOMER_ID", "TX_DATETIME"], sort=False)["CUSTOMER_ID"].transform("size") > 1
    fixed = theirs.copy()
    customer = CUSTOMER_SPENDING.feature_names
    fixed[customer] = theirs.groupby(["CUSTOMER_ID", "TX_DATETIME"], sort=False)[customer].transform("last")
    rows_differ = differs.any(axis=1)
    return Agreement(
        rows=len(common),
        rows_only_in_one=only,
        values=differs.size,
        mismatched_values=int(differs.to_numpy().sum()),
        mismatched_rows=int(rows_differ.sum()),
        tied_rows=int(tie.sum()),
        mismatched_rows_tied=int((rows_differ & tie).sum()),
        mismatched_values_after_tie_fix=int(_differs(ours, fixed).to_numpy().sum()),
        per_feature={str(name): int(count) for name, count in differs.sum().items() if count},
    )


@dataclass(frozen=True)
class TrainingSetBench:
    """What a run measured: each variant, their agreement, and the printed report."""

    feast: VariantRun
    baseline: VariantRun
    agreement: Agreement
    report: str

    @property
    def within_target(self) -> bool:
        return self.feast.seconds <= TARGET_SECONDS

    @property
    def no_slower_than_baseline(self) -> bool:
        return self.feast.seconds <= self.baseline.seconds


def _mib(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:,.0f}"


def _report(feast: VariantRun, baseline: VariantRun, agreement: Agreement) -> str:
    rows = [
        [
            run.name,
            f"{run.rows:,}",
            f"{run.seconds:.1f}",
            f"{run.rows / run.seconds:,.0f}",
            _mib(run.peak_rss_mib),
            _mib(run.rss_before_mib),
            f"{baseline.seconds / run.seconds:.2f}x",
        ]
        for run in (feast, baseline)
    ]
    main_table = markdown_table(
        ["variant", "rows", "seconds", "rows/s", "peak RSS MiB", "RSS at start MiB", "speedup vs baseline"],
        rows,
    )
    stage_rows = [
        [f"{run.name.split(' ')[0]}: {stage}", f"{seconds:.1f}", f"{seconds / run.seconds:.0%}"]
        for run in (feast, baseline)
        for stage, seconds in run.stages.items()
    ]
    stage_table = markdown_table(["stage", "seconds", "share of variant"], stage_rows)
    verdict = "PASS" if feast.seconds <= TARGET_SECONDS else "MISS"
    speed = "PASS" if feast.seconds <= baseline.seconds else "MISS"
    a = agreement
    lines = [
        main_table,
        "",
        stage_table,
        "",
        f"{verdict}  through Feast in {feast.seconds:.1f} s (target <= {TARGET_SECONDS:.0f} s)",
        f"{speed}  no slower than the pandas baseline: {feast.seconds:.1f} s vs {baseline.seconds:.1f} s "
        f"({baseline.seconds / feast.seconds:.2f}x)",
        f"Feast stack import (paid once per process, not timed above): {feast.import_seconds:.1f} s",
        "",
        f"agreement: {a.rows:,} rows x {len(COMPARED)} columns = {a.values:,} values compared "
        f"(counts exact, floats rel. {REL_TOL:g}); rows in one variant only: {a.rows_only_in_one}",
        f"  mismatched values: {a.mismatched_values:,} in {a.mismatched_rows:,} rows"
        + (f" ({', '.join(f'{k}: {v:,}' for k, v in a.per_feature.items())})" if a.per_feature else ""),
        f"  rows in a same-second tie of a card: {a.tied_rows:,}; mismatched rows among them: "
        f"{a.mismatched_rows_tied:,} of {a.mismatched_rows:,}",
        f"  mismatched values once tied rows take their tie's last baseline value: "
        f"{a.mismatched_values_after_tie_fix:,}",
        "  => "
        + (
            "every difference is the baseline's tie handling"
            if a.explained_by_ties
            else "UNEXPLAINED differences remain: the variants disagree beyond ties"
        ),
    ]
    return "\n".join(lines)


def _median(runs: list[VariantRun]) -> VariantRun:
    return sorted(runs, key=lambda run: run.seconds)[(len(runs) - 1) // 2]


def main(argv: list[str] | None = None) -> TrainingSetBench:
    """Run both variants on one simulated dataset and print the comparison."""
    parser = dataset_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each variant, in alternating order; the median is reported",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the variants in this process: quicker (one Feast import), but no peak memory per variant",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    config = simulator_config(args)
    print(f"[bench] training set: {describe(config)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-training-set-") as tmp:
        workdir = Path(tmp)
        stages = Stages("bench")
        with stages.stage("simulate"):
            data = simulate(config)
        with stages.stage("write events and reports"):
            data.events().to_parquet(workdir / "events.parquet")
            data.fraud_reports.to_parquet(workdir / "reports.parquet")
        print(
            f"[bench] {len(data.transactions):,} transactions, {len(data.fraud_reports):,} reports",
            flush=True,
        )
        del data
        runs: dict[str, list[VariantRun]] = {FEAST: [], PANDAS: []}
        variants = {PANDAS: run_pandas_variant, FEAST: run_feast_variant}
        for i in range(args.repeat):
            # Alternating the order spreads the machine's drifting load over both.
            for name in list(variants) if i % 2 == 0 else list(variants)[::-1]:
                where = "in this process" if args.in_process else "in its own process"
                print(f"[bench] run {i + 1}/{args.repeat}: {name}, {where}", flush=True)
                if args.in_process:
                    run = variants[name](workdir=str(workdir))
                    run = replace(run, rss_before_mib=float("nan"), peak_rss_mib=float("nan"))
                else:
                    run = run_in_child(MODULE, variants[name].__name__, workdir=str(workdir))
                runs[name].append(run)
        with stages.stage("compare"):
            agreement = compare(
                pd.read_parquet(workdir / "feast_result.parquet"),
                pd.read_parquet(workdir / "pandas_result.parquet"),
            )
    feast, baseline = _median(runs[FEAST]), _median(runs[PANDAS])
    report = _report(feast, baseline, agreement)
    if args.repeat > 1:
        report += "\n\nmedian of {} runs each; all runs (s): {}".format(
            args.repeat,
            "; ".join(
                f"{name.split(' ')[0]} " + ", ".join(f"{r.seconds:.1f}" for r in rs)
                for name, rs in runs.items()
            ),
        )
    body = f"## Training set: {describe(config)}\n\n```\n{report}\n```"
    print(f"\n{body}\n", flush=True)
    write_result("training_set", body, argv, args.quick, args.results)
    return TrainingSetBench(feast, baseline, agreement, report)


if __name__ == "__main__":
    sys.exit(0 if main().agreement.explained_by_ties else 1)
