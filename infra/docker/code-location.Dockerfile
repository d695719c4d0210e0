# syntax=docker/dockerfile:1
# The Dagster code location (orchestration.definitions), its run pods and the prod-init Job.
# Build from the repository root:
#   docker build -f infra/docker/code-location.Dockerfile -t <registry>/fraudpipe-code-location:<version> .
# The environment is uv.lock's, without the dev group; the source stays at /app (an
# editable install) because the code finds feature_repo/ and the configs next to it.

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11.13-slim-bookworm AS builder
COPY --from=uv /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
COPY README.md workspace.yaml ./
COPY orchestration orchestration
COPY assets assets
COPY feature_repo feature_repo
COPY serving serving
COPY expectations expectations
COPY streaming streaming
COPY simulator simulator
COPY modeling modeling
COPY monitoring monitoring
COPY infra infra
COPY settings settings
COPY demo demo
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev

FROM python:3.11.13-slim-bookworm
RUN groupadd --gid 1000 fraudpipe && useradd --uid 1000 --gid 1000 --create-home fraudpipe
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FRAUDPIPE_PROFILE=cluster \
    FRAUDPIPE_DATA_DIR=/data
WORKDIR /app
USER 1000:1000
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "orchestration.definitions", "-a", "defs"]
