# Set-up and the project's commands. `make compare` and `make test` are the
# two commands of the README; each does every set-up step it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.l2bn-installed

.PHONY: setup data compare test lint format bench

setup: $(STAMP)

# torch first, pinned to the CPU build, so that resolving the project's
# `torch>=2.1` never pulls a CUDA build. The project is then installed without build
# isolation, so that setup.py compiles the fused CPU kernels (l2bn._C) against that torch;
# an isolated build would fetch another torch into the build environment. The test-only
# extras (timm, torchvision's pure-Python parts) come last, with --no-deps for the same
# reason (requirements-test-extras.txt).
CSRC := $(wildcard src/l2bn/csrc/*)

$(STAMP): pyproject.toml setup.py requirements-torch-cpu.txt requirements-build.txt \
		requirements-test-extras.txt $(CSRC)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-torch-cpu.txt -r requirements-build.txt
	L2BN_REQUIRE_EXTENSION=1 $(BIN)/pip install --quiet --no-build-isolation -e '.[experiments,dev]'
	$(BIN)/pip install --quiet --no-deps -r requirements-test-extras.txt
	$(BIN)/python -c "import l2bn; print(l2bn.backends.status())"
	touch $(STAMP)

data:
	bash scripts/get-fashion-mnist.sh

compare: setup data
	$(BIN)/l2bn compare

# lint-imports: the layering contracts of pyproject.toml ([tool.importlinter]).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# L2BN_REQUIRE_FUSED: a test fails if the fused kernels were not built (no silent fallback).
# The core parity and gradient suites run again under ATen's lower CPU capabilities, so
# that no result depends on the processor the tests happen to run on.
# Each capability gets its own inductor cache: torch's does not tell kernels compiled under
# one ATen capability from another's (an AVX-512 kernel reused under avx2 computed garbage).
# L2BN_REQUIRE_TEST_EXTRAS: the recipe tests fail, rather than skip, without timm.
CORE_SUITES := tests/test_core_parity.py tests/test_core_gradcheck.py tests/test_paths_eval_backward.py
test: setup
	for cap in default avx2; do \
	  echo "== core suites under ATEN_CPU_CAPABILITY=$$cap"; \
	  ATEN_CPU_CAPABILITY=$$cap TORCHINDUCTOR_CACHE_DIR=$${TMPDIR:-/tmp}/l2bn-inductor-$$cap \
	    L2BN_REQUIRE_FUSED=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(CORE_SUITES) || exit 1; \
	done
	L2BN_REQUIRE_FUSED=1 L2BN_REQUIRE_TEST_EXTRAS=1 $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/l2bn bench
