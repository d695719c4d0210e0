# fraudpipe: `make help` lists the targets.
SHELL := /bin/bash
# Prod settings (see .env.prod.example) come from .env when present.
-include .env
export
PROFILE ?= $(or $(FRAUDPIPE_PROFILE),local)
export FRAUDPIPE_PROFILE := $(PROFILE)
export DAGSTER_HOME := $(CURDIR)/.dagster_home/$(PROFILE)
# The cluster profile keeps its Dagster instance in PostgreSQL, as prod does.
INSTANCE := $(if $(filter cluster,$(PROFILE)),prod,$(PROFILE))
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
# Ray would rebuild this uv environment for its workers (a venv per session, most of a start-up's
# minute) when a driver runs under `uv run`; the workers use .venv's Python, which has everything.
export RAY_ENABLE_UV_RUN_RUNTIME_ENV := 0
UV ?= uv
RUN := $(UV) run --frozen

.DEFAULT_GOAL := help
.PHONY: help install demo dev mlflow feast test test-fast test-integration lint typecheck format rollback \
	simulate bench bench-training-set bench-model-quality bench-serve bench-monitoring bench-capacity bench-autoscale prod-init clean consume produce replay push \
	broker serve monitor-export k8s-manifests pipeline chaos

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

install: ## create .venv from uv.lock (installs uv with pip if missing)
	@command -v $(UV) >/dev/null || python3 -m pip install --quiet uv
	$(UV) sync --frozen

$(DAGSTER_HOME)/dagster.yaml: orchestration/instance/$(INSTANCE)/dagster.yaml
	@mkdir -p $(DAGSTER_HOME) && cp $< $@

demo: install $(DAGSTER_HOME)/dagster.yaml ## the whole loop: train, deploy, serve, live traffic, drift, retrain, gate, redeploy (~10 min)
	$(RUN) python -m demo

dev: install $(DAGSTER_HOME)/dagster.yaml ## Dagster UI on http://127.0.0.1:3000 (FRAUDPIPE_DAGSTER_PORT)
	$(RUN) python -m settings exec -- sh -c 'exec dg dev -h 127.0.0.1 -p $$FRAUDPIPE_DAGSTER_PORT'

mlflow: install ## MLflow UI on http://127.0.0.1:5000 over the profile's tracking store (the pipeline's)
	$(RUN) python -m orchestration mlflow

rollback: install $(DAGSTER_HOME)/dagster.yaml ## move `champion` back to the previous champion and redeploy it (deployment asset)
	$(RUN) python -m orchestration rollback

ARGS ?= plan
feast: install ## Feast's CLI on the profile's feature_store.yaml, e.g. make feast ARGS=plan (or apply, ui)
	$(RUN) python -m settings exec -- feast -c feature_repo -f $(CURDIR)/feature_repo/profiles/$(PROFILE)/feature_store.yaml $(ARGS)

SOURCE ?=
pipeline: install $(DAGSTER_HOME)/dagster.yaml ## the batch pipeline on your own data: make pipeline SOURCE=dir (docs/own_data.md)
	@test -n "$(SOURCE)" || { echo "usage: make pipeline SOURCE=/path/to/parquet/files (docs/own_data.md)"; exit 2; }
	$(RUN) python -m orchestration pipeline --source "$(SOURCE)"

simulate: install ## generate the full default dataset (5,000 cards, 183 days) into data/source
	$(RUN) python -m simulator generate --out data/source

consume: install ## stream consumer: land events, keep online features fresh (local: hosts the Kafka broker)
	$(RUN) python -m streaming consume

broker: install ## local profile: host the in-process Kafka broker on its own (consume/produce/replay/push find it)
	$(RUN) python -m streaming broker

RATE ?= 0
produce: install ## send the simulated data to the bus in event-time order (FROM=, TO= days, RATE= events/s)
	$(RUN) python -m streaming produce $(if $(FROM),--from $(FROM)) $(if $(TO),--to $(TO)) --rate $(RATE)

replay: install ## re-land FROM..TO from the bus and rebuild the online features (idempotent)
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "usage: make replay FROM=2018-05-01 TO=2018-05-07"; exit 2; }
	$(RUN) python -m streaming replay --from $(FROM) --to $(TO)

push: install ## HTTP push endpoint on http://127.0.0.1:8090 appending to the bus
	$(RUN) python -m streaming push

monitor-export: install ## Prometheus exporter of the monitoring results on http://127.0.0.1:9465/metrics
	$(RUN) python -m monitoring export

serve: install ## Ray Serve on http://127.0.0.1:8000 (POST /v1/score, /docs) with the deployed versions (PROFILE=cluster: to the Ray cluster at FRAUDPIPE_RAY_ADDRESS)
	$(RUN) python -m serving run

k8s-manifests: install ## render the Kubernetes manifests of infra/k8s from the Serve and Dagster configs
	$(RUN) python -m infra.k8s_manifests --out infra/k8s

prod-init: install ## create the prod databases (PROFILE=prod, variables of .env.prod.example)
	$(RUN) python -m orchestration prod-init

lint: install ## ruff lint and format check, and the layer contracts (import-linter)
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) lint-imports

typecheck: install ## mypy on the library code
	$(RUN) mypy

format: install ## apply ruff's formatting and fixes
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

# The daemon test mostly waits on the daemon's 5 s loop: it runs beside the others, its output after theirs.
test: lint typecheck ## lint, type-check, then every test (needs PostgreSQL and Redis for the prod test)
	@mkdir -p test-artifacts
	@$(RUN) pytest -m daemon -p no:cacheprovider --basetemp=test-artifacts/daemon-tmp \
		> test-artifacts/pytest-daemon.log 2>&1 & daemon=$$!; \
	$(RUN) pytest -m "not daemon"; others=$$?; \
	wait $$daemon; status=$$?; cat test-artifacts/pytest-daemon.log; \
	exit $$(( others || status ))

# `slow`: Ray Serve, the Dagster graph and UI, the bench smoke, the scenarios, crash tests (tests/conftest.py).
test-fast: install ## the unit tests in a few minutes: no Ray Serve, Dagster runs or UI, bench, scenarios, servers
	$(RUN) pytest -m "not slow and not integration"

test-integration: install ## only the tests against real PostgreSQL / Redis
	$(RUN) pytest -m integration

bench: bench-training-set bench-model-quality bench-monitoring bench-capacity bench-serve bench-autoscale ## every benchmark on the default dataset; each writes bench/results/ and the docs include it (~30 min, needs Redis)

bench-training-set: install ## point-in-time training set of 1.78 M rows: Feast path vs a pandas baseline
	$(RUN) python -m bench.training_set
	$(RUN) python -m bench.results

bench-model-quality: install ## handbook split: XGBoost as the asset chooses it vs logistic regression, tree, rule
	$(RUN) python -m bench.model_quality
	$(RUN) python -m bench.results

bench-monitoring: install ## drift of 1 M rows x 15 features: our PSI + KS vs Evidently's DataDriftPreset
	$(RUN) python -m bench.monitoring
	$(RUN) python -m bench.results

bench-capacity: install ## capacity numbers for docs/scaling.md: consumer events/s per partition, Redis bytes per entity
	$(RUN) python -m bench.capacity
	$(RUN) python -m bench.results

bench-serve: install ## serving benchmark: our Ray Serve app vs naive Ray Serve + Feast and uvicorn (~13 min)
	$(RUN) python -m bench.serve
	$(RUN) python -m bench.results

bench-autoscale: install ## autoscaling shown: idle -> 2x one replica's saturation -> idle, min 1 / max 2 replicas (~4 min)
	$(RUN) python -m bench.autoscale
	$(RUN) python -m bench.results

chaos: install ## fault suite under load: bus, Kafka brokers, online store, lake disk, re-sent ids, model registry, PostgreSQL; counts (~5 min, root for the disk case; docs/reliability.md)
	$(RUN) python -m bench.chaos
	$(RUN) python -m bench.results

clean: ## remove local data, Dagster home and caches
	rm -rf data .dagster_home .pytest_cache .mypy_cache .ruff_cache
