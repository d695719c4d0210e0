"""A model's monitoring reference: what its inputs and scores looked like when it was judged.

Drift is measured against the champion's own training rows (features) and the
scores it gave its test rows (out of sample, like live scores), not against a
fixed baseline: after a swap the new champion's reference applies, so drift
that a retraining absorbed stops being reported. The rows are logged with the
model's MLflow run; the profile (bins, sorted values) is built once per version
and cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from feature_repo.windows import MODEL_FEATURES
from modeling import registry
from monitoring.drift import ReferenceProfile

if TYPE_CHECKING:
    from mlflow import MlflowClient

REFERENCE_DIR = "monitoring"
FEATURES_FILE = "reference_features.parquet"
SCORES_FILE = "reference_scores.parquet"
SCORE = "score"


@dataclass(frozen=True)
class ModelReference:
    """A version's reference rows and profiles, and the metrics it had on its test rows."""

    version: str
    rows: pd.DataFrame
    scores: np.ndarray
    features: ReferenceProfile
    test_metrics: dict[str, float]


def write_reference(train_rows: pd.DataFrame, test_scores: np.ndarray, out_dir: Path) -> Path:
    """Save the reference files of a model about to be registered; returns their directory."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train_rows[list(MODEL_FEATURES)].reset_index(drop=True).to_parquet(out_dir / FEATURES_FILE, index=False)
    pd.DataFrame({SCORE: np.asarray(test_scores, dtype=np.float64)}).to_parquet(
        out_dir / SCORES_FILE, index=False
    )
    return out_dir


def load_reference(client: MlflowClient, model_name: str, version: str) -> ModelReference:
    """The reference of a registered version (downloaded once per process and version)."""
    return _load(client.tracking_uri, model_name, version)


@functools.lru_cache(maxsize=8)
def _load(tracking_uri: str, model_name: str, version: str) -> ModelReference:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    directory = registry.download_artifacts(client, model_name, version, REFERENCE_DIR)
    rows = pd.read_parquet(directory / FEATURES_FILE)
    scores = pd.read_parquet(directory / SCORES_FILE)
    run_id = client.get_model_version(model_name, version).run_id
    metrics = client.get_run(run_id).data.metrics if run_id else {}
    return ModelReference(
        version=version,
        rows=rows,
        scores=scores[SCORE].to_numpy(),
        features=ReferenceProfile.from_frame(rows, list(MODEL_FEATURES)),
        test_metrics={k: float(v) for k, v in metrics.items()},
    )
