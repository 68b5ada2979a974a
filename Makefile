# The two commands a newcomer needs: `make demo` (the local stack end to end)
# and `make test` (the whole test suite, as CI runs it).
PY := .venv/bin/python

.PHONY: setup demo test lint bench

setup:
	bash scripts/setup.sh

# Extra demo options, e.g. `make demo DEMO_ARGS="--keep-running --image my-digit.png"`.
DEMO_ARGS ?=

demo: setup
	$(PY) -m scripts.demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q

# ruff (lint rules and formatting) over the tree, mypy over shared/ (strict) and services/ (pyproject.toml).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: setup
	$(PY) -m bench
