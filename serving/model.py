"""Registered models as the replicas hold them: an XGBoost booster read from UBJ, never a pickle."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import xgboost as xgb

from modeling import registry
from modeling.registry import ModelRegistry
from settings import Device


@dataclass(frozen=True)
class LoadedModel:
    """One registry version, ready to predict; immutable so a swap is one reference assignment."""

    name: str
    version: str
    booster: xgb.Booster

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Fraud probabilities, the same as the classifier's `predict_proba(...)[:, 1]` offline."""
        if not len(features):
            return np.zeros(0)
        return np.asarray(self.booster.inplace_predict(features, validate_features=False), dtype=np.float64)


class ModelStore:
    """Resolves aliases and loads versions from the MLflow registry of the profile."""

    def __init__(self, models: ModelRegistry) -> None:
        self._models = models
        self._models.activate()

    @property
    def model_name(self) -> str:
        return self._models.model_name

    def alias(self, alias: str) -> str | None:
        return registry.alias_version(self._models.client(), self._models.model_name, alias)

    def load(self, version: str, device: Device = "cpu") -> LoadedModel:
        booster = registry.load_model(self._models.model_name, version).get_booster()
        return LoadedModel(self._models.model_name, version, on_device(booster, device))


def on_device(booster: xgb.Booster, device: Device) -> xgb.Booster:
    """The booster set to predict on `device`, one CPU thread: replicas scale out, not up."""
    booster.set_param({"device": device, "nthread": 1})
    # Without a visible GPU XGBoost only warns and predicts on the CPU: a config that
    # asks for cuda fails instead, where the deploy shows it.
    booster.inplace_predict(np.zeros((1, booster.num_features())), validate_features=False)
    actual = json.loads(booster.save_config())["learner"]["generic_param"]["device"]
    if not actual.startswith(device):
        raise RuntimeError(f"device={device!r}, but XGBoost runs on {actual!r}: no GPU is visible to it")
    return booster
