"""The GPU path of serving, proved and timed: `bash bench/gpu_check.sh` on a machine with an NVIDIA GPU.

A model of the serving shape (15 features, the production tree settings) is
trained on synthetic data, saved as UBJ and loaded back the way replicas load
registry versions (`serving.model.on_device`). It must predict the same on
`cuda` as on `cpu` (to 1e-5), then both are timed on batches of growing size,
printed as one table with the GPU's speed-up. Synthetic data keeps the check
self-contained: a GPU machine needs no dataset, registry or network.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import xgboost as xgb

from feature_repo.windows import MODEL_FEATURES
from serving.model import LoadedModel, on_device

BATCH_SIZES = (1, 64, 1_024, 16_384, 131_072)


def _model(rows: int, trees: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    features = rng.gamma(2.0, 20.0, size=(rows, len(MODEL_FEATURES)))
    labels = (features[:, 0] + rng.normal(0, 30, rows) > 90).astype(int)
    model = xgb.XGBClassifier(n_estimators=trees, max_depth=6, tree_method="hist", random_state=seed)
    model.fit(features, labels)
    path = Path(tempfile.mkdtemp()) / "model.ubj"
    model.save_model(path)
    return path


def _loaded(path: Path, device: str) -> LoadedModel:
    booster = xgb.Booster()
    booster.load_model(path)
    return LoadedModel("gpu-check", device, on_device(booster, device))  # type: ignore[arg-type]


def _seconds_per_call(model: LoadedModel, features: np.ndarray, budget_s: float) -> float:
    model.predict(features)  # warm-up: first calls on cuda pay for transfers and kernels
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < budget_s:
        model.predict(features)
        calls += 1
    return (time.perf_counter() - started) / calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--seconds-per-size", type=float, default=2.0)
    args = parser.parse_args(argv)
    build = xgb.build_info()
    if not build.get("USE_CUDA"):
        raise SystemExit("this XGBoost was built without CUDA: install the manylinux wheel from PyPI")
    print(f"xgboost {xgb.__version__}, CUDA {build.get('CUDA_VERSION')}", flush=True)
    path = _model(rows=50_000, trees=args.trees, seed=0)
    cpu, gpu = _loaded(path, "cpu"), _loaded(path, "cuda")
    probe = np.random.default_rng(1).gamma(2.0, 20.0, size=(10_000, len(MODEL_FEATURES)))
    np.testing.assert_allclose(gpu.predict(probe), cpu.predict(probe), rtol=0, atol=1e-5)
    print("cuda predictions equal the cpu ones (10,000 rows, to 1e-5)", flush=True)

    print("| batch | cpu (1 thread) rows/s | cuda rows/s | cuda / cpu |")
    print("|---:|---:|---:|---:|")
    rng = np.random.default_rng(2)
    for size in BATCH_SIZES:
        features = rng.gamma(2.0, 20.0, size=(size, len(MODEL_FEATURES)))
        cpu_s = _seconds_per_call(cpu, features, args.seconds_per_size)
        gpu_s = _seconds_per_call(gpu, features, args.seconds_per_size)
        print(f"| {size:,} | {size / cpu_s:,.0f} | {size / gpu_s:,.0f} | {cpu_s / gpu_s:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
