"""Fit and score fraud classifiers; choose hyperparameters by prequential validation."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from feature_repo.windows import LABEL, MODEL_FEATURES
from modeling.metrics import fraud_metrics
from modeling.split import SplitWindow, prequential_folds, train_test_split


class Classifier(Protocol):
    def fit(self, X: pd.DataFrame, y: pd.Series) -> Any: ...  # noqa: N803

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray: ...  # noqa: N803


def fit_xgboost(
    train: pd.DataFrame, params: Mapping[str, Any], seed: int = 0, n_jobs: int = 1
) -> xgb.XGBClassifier:
    """An XGBoost classifier on the model features; `params` are XGBClassifier arguments.

    `n_jobs` defaults to 1: inside a Dagster step, other threads share the
    cores, and OpenMP's spinning barriers made 2 threads on 2 cores ten times
    slower than 1 here.
    """
    model = xgb.XGBClassifier(
        **params, random_state=seed, n_jobs=n_jobs, tree_method="hist", eval_metric="aucpr"
    )
    model.fit(train[list(MODEL_FEATURES)], train[LABEL])
    return model


def fit_logistic_regression(train: pd.DataFrame, seed: int = 0) -> Pipeline:
    """The baseline: standardised features into a logistic regression."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(train[list(MODEL_FEATURES)], train[LABEL])
    return model


def fit_decision_tree(train: pd.DataFrame, seed: int = 0) -> DecisionTreeClassifier:
    """The handbook's first model: a depth-2 decision tree, the floor a first champion must beat."""
    model = DecisionTreeClassifier(max_depth=2, random_state=seed)
    model.fit(train[list(MODEL_FEATURES)], train[LABEL])
    return model


def score(model: Classifier, frame: pd.DataFrame) -> np.ndarray:
    """Fraud probability of each row."""
    return np.asarray(model.predict_proba(frame[list(MODEL_FEATURES)])[:, 1], dtype=np.float64)


def evaluate(model: Classifier, test: pd.DataFrame, top_k: int = 100) -> dict[str, float]:
    """The handbook's metrics of `model` on a test set from `train_test_split`."""
    return fraud_metrics(test[LABEL], score(model, test), test[["TX_DATETIME", "CUSTOMER_ID"]], top_k)


def parameter_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a stable order."""
    names = sorted(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


@dataclass
class Selection:
    """The outcome of prequential model selection."""

    best_params: dict[str, Any]
    metric: str
    scores: list[dict[str, Any]] = field(default_factory=list)


def select_params(
    frame: pd.DataFrame,
    window: SplitWindow,
    grid: Mapping[str, Sequence[Any]],
    n_folds: int,
    metric: str,
    seed: int = 0,
) -> Selection:
    """Pick the grid point with the best mean `metric` over prequential folds.

    As in the handbook, the most recent fold's test period is the final
    window's training period (everything moved back by delay + test days): its
    labels are all known when the final model is trained, and the final test
    period never takes part in the choice. Older folds step back one test
    period each.
    """
    folds = prequential_folds(frame, window.earlier(window.delay_days + window.test_days), n_folds)
    results: list[dict[str, Any]] = []
    for params in parameter_grid(grid):
        fold_scores = [evaluate(fit_xgboost(train, params, seed), test)[metric] for train, test in folds]
        results.append(
            {"params": params, "mean": float(np.mean(fold_scores)), "std": float(np.std(fold_scores))}
        )
    best = max(results, key=lambda r: float(r["mean"]))
    return Selection(best_params=dict(best["params"]), metric=metric, scores=results)


def train_and_evaluate(
    frame: pd.DataFrame, window: SplitWindow, params: Mapping[str, Any], seed: int = 0
) -> tuple[xgb.XGBClassifier, dict[str, float], pd.DataFrame]:
    """Fit on the window's training week, score its test week.

    Returns:
        The model, its test metrics and the test set it was scored on.
    """
    train, test = train_test_split(frame, window)
    model = fit_xgboost(train, params, seed)
    return model, evaluate(model, test), test
