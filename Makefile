# Two commands matter: `make run` (serve the embedded default) and `make test`
# (ruff, mypy and the whole test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck pytest bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/filesvc serve

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check filesvc tests
	$(BIN)/ruff format --check filesvc tests

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

pytest: $(VENV)/.dev-installed
	$(BIN)/pytest -n 4 --dist loadfile

test: lint typecheck pytest

bench: $(VENV)/.dev-installed
	$(BIN)/python -m tests.perf

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
