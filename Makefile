# `make demo` and `make test` each build .venv first (only when pyproject.toml changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the local CPU build; an unpinned torch pulls several GB of CUDA wheels.
TORCH := torch==2.13.0
# The Ray version CI tests against (the [ray] extra accepts any recent one).
RAY := ray[data]==2.60.0

.PHONY: demo test venv clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

$(VENV)/.base-installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,clip,ray]" "$(TORCH)" "$(RAY)"
	touch $(VENV)/.base-installed $@

venv: $(VENV)/.dev-installed

demo: $(VENV)/.base-installed
	$(BIN)/python pipelines/image_profiling_pipeline.py --cache ./cache_demo

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf cache_demo cache_demo_yaml .pytest_cache
