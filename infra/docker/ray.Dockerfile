# syntax=docker/dockerfile:1
# The Ray image of the RayService (head, CPU and GPU workers): rayproject/ray plus the
# project. Build from the repository root:
#   docker build -f infra/docker/ray.Dockerfile -t <registry>/fraudpipe-ray:<version>-ray<ray version> .
# The base's Ray version must be the one uv.lock pins (the RayService's rayVersion;
# `make k8s-manifests` refuses to render otherwise). Ray images run Python from
# /home/ray/anaconda3, where `ray start` and every Ray worker process find their
# packages, so the lock goes there: exported with `uv export --frozen`, installed
# without dependency resolution. ray==2.60.0 in the lock is the base's own, so
# nothing of Ray itself changes. The same image serves the GPU group: XGBoost's
# manylinux wheel carries its CUDA runtime, the node's driver comes through the
# NVIDIA device plugin.

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11.13-slim-bookworm AS requirements
COPY --from=uv /uv /bin/uv
WORKDIR /src
COPY pyproject.toml uv.lock ./
RUN uv export --frozen --no-dev --no-hashes --no-emit-project --format requirements-txt -o /requirements.txt

FROM rayproject/ray:2.60.0-py311
COPY --from=uv /uv /usr/local/bin/uv
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN uv pip install --python /home/ray/anaconda3/bin/python --no-deps --no-cache -r /tmp/requirements.txt \
    && mkdir /home/ray/fraudpipe
WORKDIR /home/ray/fraudpipe
COPY --chown=1000:100 pyproject.toml uv.lock README.md workspace.yaml ./
COPY --chown=1000:100 orchestration orchestration
COPY --chown=1000:100 assets assets
COPY --chown=1000:100 feature_repo feature_repo
COPY --chown=1000:100 serving serving
COPY --chown=1000:100 expectations expectations
COPY --chown=1000:100 streaming streaming
COPY --chown=1000:100 simulator simulator
COPY --chown=1000:100 modeling modeling
COPY --chown=1000:100 monitoring monitoring
COPY --chown=1000:100 infra infra
COPY --chown=1000:100 settings settings
COPY --chown=1000:100 demo demo
RUN uv pip install --python /home/ray/anaconda3/bin/python --no-deps --no-cache -e .
USER 1000
