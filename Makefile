# CalmFirst — `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.calmfirst-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
HOST ?= 127.0.0.1
PORT ?= 8000
CONFIG ?= training/configs/default.yaml
OUT ?= runs/default
MODEL ?= model/default
PYTEST_ARGS ?=
SOAK_MINUTES ?= 10

.DEFAULT_GOAL := help
.PHONY: help install browser backbone run test test-slow lint format train ship evaluate bench bench-overload soak data-stats clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev,fast,ray]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install CalmFirst with its dev, fast and ray extras

browser: ## install Debian chromium + chromium-driver for the console tests
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "browser: $$(/usr/bin/chromedriver --version 2>/dev/null | head -1)"; \
	else \
		SUDO=""; if [ "$$(id -u)" != 0 ]; then SUDO="sudo -n"; fi; \
		if $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
		then echo "browser: installed $$(/usr/bin/chromedriver --version 2>/dev/null | head -1)"; \
		else echo "browser: could not install chromium + chromium-driver; the console tests will be skipped" >&2; fi; \
	fi

backbone: $(STAMP) ## convert the bundled multilingual-e5-small once and build the ONNX exports the server loads (cached)
	$(BIN)/calmfirst prepare-backbone --exports

run: backbone ## serve the HTTP API and agent console on the shipped model (HOST, PORT)
	MALLOC_ARENA_MAX=$${MALLOC_ARENA_MAX:-2} $(BIN)/calmfirst serve --host $(HOST) --port $(PORT)

test: $(STAMP) browser ## run the test suite, with the console tests when a browser can be installed (slow tests: make test-slow)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: backbone browser ## run every test, the slow ones too
	$(BIN)/python -m pytest -q --runslow $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy model training service data

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

train: backbone ## reproduce the shipped model from CONFIG into OUT (about 50 min on 2 cores)
	$(BIN)/calmfirst train $(CONFIG) --output $(OUT)

ship: ## copy OUT/model-best into model/default (the model `make run` loads)
	rm -rf $(MODEL).tmp && cp -r $(OUT)/model-best $(MODEL).tmp && rm -rf $(MODEL) && mv $(MODEL).tmp $(MODEL)

evaluate: backbone ## evaluate MODEL on the project's test split; report in OUT/eval
	$(BIN)/calmfirst evaluate --model $(MODEL) annotations --split test --report-dir $(OUT)/eval

bench: backbone ## speed, latency, memory and quality benchmark -> bench/results.json
	$(BIN)/python -m bench.run --output bench/results.json

bench-overload: backbone ## open loop at 1.5x capacity per CALMFIRST_MAX_INFLIGHT; live beside batches per MAX_BULK_TEXTS -> bench/overload.json
	$(BIN)/python -m bench.overload

soak: backbone ## SOAK_MINUTES (10) of 16 clients against the real server: no 5xx, RSS, PII -> bench/soak.json
	SOAK_MINUTES=$(SOAK_MINUTES) $(BIN)/python -m bench.soak --output bench/soak.json

data-stats: $(STAMP) ## counts of the project's annotations, checked against the minimums
	$(BIN)/calmfirst data-stats

clean: ## remove build artefacts (keeps .venv and the backbone cache)
	rm -rf build *.egg-info .pytest_cache .ruff_cache .mypy_cache
