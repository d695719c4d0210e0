#!/usr/bin/env bash
# Prove and time serving's GPU path (XGBoost device="cuda") in under 5 minutes.
# Run from a clone on a machine with an NVIDIA GPU: bash bench/gpu_check.sh
# It uses .venv (created with `uv sync --frozen` when uv is there) or $PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if [[ -z "${PYTHON:-}" ]]; then
  if [[ ! -x .venv/bin/python ]] && command -v uv >/dev/null; then uv sync --frozen; fi
  PYTHON=$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)
fi
timeout 280 "$PYTHON" -m bench.gpu_check "$@"
