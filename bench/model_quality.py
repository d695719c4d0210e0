"""Benchmark: model quality on the handbook split, beside baselines from the same run.

Claim: on the default-size dataset, the metrics of the handbook split (train
2018-07-25..31, 7-day delay, test 08-08..14) are printed beside a logistic
regression trained on the same features. The training set is built exactly
as the Dagster graph builds it (Feast, ASOF offline store); the XGBoost model
is chosen by prequential validation as the `fraud_model` asset chooses it.
Two weaker baselines frame the numbers: the handbook's depth-2 decision tree
and the simulator's first fraud rule (amount > 220) with no training at all.

The handbook's own results (its chapter 3 baseline table, same split and
metrics on its own simulation of the same generator) are printed for
reference: a yardstick, not a target, since the data are not the same rows.

    python -m bench.model_quality [--quick] [--customers N --terminals N --days N --seed S]
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import (
    Stages,
    dataset_parser,
    describe,
    feast_training_set,
    markdown_table,
    simulator_config,
)
from bench.results import write_result
from modeling.split import HANDBOOK_SPLIT, train_test_split
from modeling.train import (
    LABEL,
    evaluate,
    fit_decision_tree,
    fit_logistic_regression,
    select_params,
    train_and_evaluate,
)
from simulator import simulate

METRICS = {"roc_auc": "ROC AUC", "average_precision": "average precision", "card_precision_at_100": "CP@100"}
SELECTION_METRIC = "average_precision"
GRID: dict[str, Sequence[Any]] = {"n_estimators": [100], "max_depth": [3, 6], "learning_rate": [0.1, 0.3]}
"""The `fraud_model` asset's default grid; max_depth 6 with learning rate 0.3 is XGBoost's default."""
N_FOLDS = 3
QUICK_GRID: dict[str, Sequence[Any]] = {"n_estimators": [50], "max_depth": [3], "learning_rate": [0.3]}
QUICK_FOLDS = 2

HANDBOOK_REFERENCE = {
    "logistic regression": (0.871, 0.606, 0.291),
    "decision tree, depth 2": (0.763, 0.496, 0.241),
    "XGBoost, default parameters": (0.862, 0.639, 0.273),
}
"""Test-set (ROC AUC, AP, CP@100) of the handbook's chapter 3 baseline table:
Fraud-Detection-Handbook/fraud-detection-handbook, Chapter_3_GettingStarted/BaselineModeling.ipynb
(commit 62ad580), "performances on test set"; features scaled, no model selection."""

AMOUNT_THRESHOLD = 220.0


class AmountRule:
    """Scenario 1 as a detector: a transaction over 220 is fraud. Nothing to learn."""

    def fit(self, X: pd.DataFrame, y: pd.Series) -> AmountRule:  # noqa: N803
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        flagged = (X["TX_AMOUNT"].to_numpy() > AMOUNT_THRESHOLD).astype(np.float64)
        return np.column_stack([1.0 - flagged, flagged])


@dataclass(frozen=True)
class ModelResult:
    name: str
    how: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class ModelQualityBench:
    """What a run measured: each model's test metrics and the printed report."""

    results: list[ModelResult]
    selection: list[dict[str, Any]]
    report: str


def _split_summary(train: pd.DataFrame, test: pd.DataFrame) -> str:
    return (
        f"train {len(train):,} transactions ({int(train[LABEL].sum()):,} frauds), "
        f"test {len(test):,} ({int(test[LABEL].sum()):,} frauds, "
        f"{test['CUSTOMER_ID'].nunique():,} cards) after removing known-compromised cards"
    )


def _report(results: list[ModelResult], selection: list[dict[str, Any]], split: str) -> str:
    rows = [[r.name, r.how, "this run", *(f"{r.metrics[m]:.3f}" for m in METRICS)] for r in results]
    rows += [
        [name, "handbook ch. 3", "the book's data", *(f"{v:.3f}" for v in values)]
        for name, values in HANDBOOK_REFERENCE.items()
    ]
    table = markdown_table(["model", "chosen by", "data", *METRICS.values()], rows, text_columns=3)
    chosen = [
        [
            ", ".join(f"{k}={v}" for k, v in s["params"].items()),
            f"{s['mean']:.3f}",
            f"{s['std']:.3f}",
        ]
        for s in sorted(selection, key=lambda s: -float(s["mean"]))
    ]
    grid = markdown_table(["XGBoost parameters", f"mean {SELECTION_METRIC}", "std"], chosen)
    return "\n".join(
        [
            f"split: {HANDBOOK_SPLIT.train_start:%Y-%m-%d} + {HANDBOOK_SPLIT.train_days} days train, "
            f"{HANDBOOK_SPLIT.delay_days} days delay, {HANDBOOK_SPLIT.test_days} days test; {split}",
            "",
            table,
            "",
            "prequential selection (folds end one week before the test week), best first:",
            "",
            grid,
        ]
    )


def main(argv: list[str] | None = None) -> ModelQualityBench:
    """Build the training set through Feast, fit every model on the handbook split, print the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = dataset_parser(__doc__.splitlines()[0] if __doc__ else "").parse_args(argv)
    config = simulator_config(args)
    grid, n_folds = (QUICK_GRID, QUICK_FOLDS) if args.quick else (GRID, N_FOLDS)
    print(f"[bench] model quality: {describe(config)}", flush=True)
    stages = Stages("bench")
    with stages.stage("simulate"):
        data = simulate(config)
    with tempfile.TemporaryDirectory(prefix="bench-model-quality-") as tmp:
        frame = feast_training_set(data.events(), data.fraud_reports, Path(tmp), stages)
    del data
    train, test = train_test_split(frame, HANDBOOK_SPLIT)
    results = []
    with stages.stage(
        f"XGBoost prequential selection ({len(grid['max_depth']) * len(grid['learning_rate'])} "
        f"grid points x {n_folds} folds)"
    ):
        selection = select_params(frame, HANDBOOK_SPLIT, grid, n_folds, SELECTION_METRIC, args.seed)
    with stages.stage("XGBoost fit and test"):
        _, metrics, _ = train_and_evaluate(frame, HANDBOOK_SPLIT, selection.best_params, args.seed)
    params = ", ".join(f"{k}={v}" for k, v in selection.best_params.items())
    results.append(ModelResult(f"XGBoost ({params})", f"prequential {SELECTION_METRIC}", metrics))
    with stages.stage("logistic regression fit and test"):
        metrics = evaluate(fit_logistic_regression(train, args.seed), test)
    results.append(ModelResult("logistic regression", "baseline", metrics))
    with stages.stage("decision tree fit and test"):
        metrics = evaluate(fit_decision_tree(train, args.seed), test)
    results.append(ModelResult("decision tree, depth 2", "baseline", metrics))
    metrics = evaluate(AmountRule(), test)
    results.append(ModelResult(f"rule: amount > {AMOUNT_THRESHOLD:.0f}", "no training", metrics))
    report = _report(results, selection.scores, _split_summary(train, test))
    body = f"## Model quality: {describe(config)}\n\n```\n{report}\n```"
    print(f"\n{body}\n", flush=True)
    write_result("model_quality", body, argv, args.quick, args.results)
    return ModelQualityBench(results, selection.scores, report)


if __name__ == "__main__":
    main()
