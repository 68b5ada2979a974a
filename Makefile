# The two commands a newcomer needs: `make demo` (the local stack end to end)
# and `make test` (the whole test suite, as CI runs it).
PY := .venv/bin/python

.PHONY: setup demo test test-containers lint bench images compose-up compose-down

setup:
	bash scripts/setup.sh

# Extra demo options, e.g. `make demo DEMO_ARGS="--keep-running --image my-digit.png"`.
DEMO_ARGS ?=

demo: setup
	$(PY) -m scripts.demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q

# ruff (lint rules and formatting) over the tree, mypy over shared/ (strict), services/ and training/ (pyproject.toml).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: setup
	$(PY) -m bench

# ---- containers (scripts/containers.sh; README "Deployment")
# `make compose-up [HOSTNET=1]` builds missing images (offline on a local Debian base when no registry
# answers), starts redis, bank and generator and waits for /readyz; `make compose-down [ARGS=-v]`.
HOSTNET ?=
ARGS ?=
NAMES ?=
export HOSTNET

images: setup
	bash scripts/containers.sh images $(NAMES)

compose-up: setup
	bash scripts/containers.sh up $(ARGS)

compose-down:
	bash scripts/containers.sh down $(ARGS)

# The images and the compose stack for real (needs root to start dockerd); CI runs it after `make test`.
test-containers: setup
	$(PY) -m pytest -q tests/deploy/test_containers.py
