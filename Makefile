# Set-up and the project's commands. `make compare` and `make test` are the
# two commands of the README; each does every set-up step it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.l2bn-installed

.PHONY: setup data compare test lint format bench

setup: $(STAMP)

# torch first, pinned to the CPU build, so that resolving the project's
# `torch>=2.1` never pulls a CUDA build.
$(STAMP): pyproject.toml requirements-torch-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-torch-cpu.txt
	$(BIN)/pip install --quiet -e '.[experiments,dev]'
	touch $(STAMP)

data:
	bash scripts/get-fashion-mnist.sh

compare: setup data
	$(BIN)/l2bn compare

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/l2bn bench
