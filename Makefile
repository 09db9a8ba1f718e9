# The README's commands. Each one creates .venv and installs the project if needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PREFECT_API_URL ?= http://127.0.0.1:4200/api

.PHONY: setup repro test serve report experiments bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## Run the pipeline on the embedded default (params.yaml).
repro: setup
	$(BIN)/dvc repro

## Run the test suite.
test: setup
	$(BIN)/pytest -q tests

## Serve the Prefect deployment clap/full-pipeline (starts a local server if none answers at PREFECT_API_URL).
serve: setup
	$(BIN)/python -m flows.serve

## reports/report.md with the experiments table (`dvc exp show`).
report: setup
	$(BIN)/python -m clap.stages.report

## Table 3's CPU rows x SEEDS as DVC experiments (commit first: the queue runs HEAD), then
## reports/experiments/table3.md and table3.png (mean and std over seeds, by clip duration).
SEEDS ?= 3407,1,2
SWEEP_STAGES ?= eval_retrieval eval_zeroshot
SWEEP_SET ?= train.epochs=3 train.steps_per_epoch=25   # 2,400 samples per run: the 18 runs took 27 minutes on 2 cores
experiments: setup
	$(BIN)/python -m clap.experiments queue experiments/table3.yaml --seeds $(SEEDS) $(foreach s,$(SWEEP_SET),--set $(s)) --targets $(SWEEP_STAGES) --run
	$(BIN)/python -m clap.report.table3 --table experiments/table3.yaml --out reports/experiments

## Throughput measurements (not part of the tests).
bench: setup
	$(BIN)/python -m benchmarks.run_all

clean-venv:
	rm -rf $(VENV)
